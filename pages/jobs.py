"""Jobs: every background task of the workspace, live progress for the running ones, errors."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import streamlit as st

from pages import _common as ui
from pages import _loaders as loaders
from pages import _widgets as widgets
from shoal import jobs
from shoal.app.text import escape_markdown, redact_paths, visitor_error

ui.ensure_entrypoint()

st.title("Jobs")
st.caption(
    "Embedding and large analyses run in background workers: closing or refreshing the page does not stop them."
)

records = jobs.list_jobs(loaders.workspace())
if not records:
    st.info(
        "No jobs yet. Importing images starts one (embedding), and so does analysing a large dataset."
    )
    ui.stop()

active = [r for r in records if r.active]
watched = st.session_state.get("job_id")
for record in active:
    with st.container(border=True):
        widgets.job_panel(record.id, key="jobs")
if watched and watched not in {r.id for r in active}:
    with st.container(border=True):
        widgets.job_panel(watched, key="jobs")

table = pd.DataFrame(
    [
        {
            "job": r.id,
            "kind": r.kind,
            "dataset": r.dataset,
            "state": r.state,
            "progress": replace(r.progress, eta_seconds=None).caption()  # a snapshot: no ETA
            if r.progress.total
            else "",
            "error": redact_paths(r.error or ""),
            "created": r.created_at,
            "finished": r.finished_at or "",
        }
        for r in records
    ]
)
st.dataframe(table, hide_index=True, width="stretch")
failed = [r for r in records if r.state == "failed"]
for record in failed[:5]:
    with st.expander(
        escape_markdown(f"Failed: {record.kind} on {record.dataset} ({record.created_at})")
    ):
        st.error(visitor_error(record.error or "no reason recorded"))
        st.caption(f"The worker's log is in the workspace: jobs/{record.id}.log")
