"""Shoal web app: the entrypoint owns navigation, the shared sidebar, access and the URL.

Pages live in ``pages/`` but are declared here with ``st.navigation`` (so Streamlit does not
auto-discover the folder); each page reads widgets, calls cached wrappers and renders.
Start it with ``shoal serve`` (or ``shoal demo``), which sets SHOAL_WORKSPACE.
"""

from __future__ import annotations

import streamlit as st

from pages import _common as ui
from pages import _loaders as loaders
from pages import _widgets as widgets
from shoal import jobs
from shoal.app.text import escape_markdown
from shoal.store.collections import Collections

st.set_page_config(
    page_title="Shoal", page_icon="🐟", layout="wide", initial_sidebar_state="expanded"
)
ui.init_session()

PAGES = {
    "Data": [
        st.Page("pages/datasets.py", title="Datasets", icon=":material/folder:", default=True),
        st.Page("pages/jobs.py", title="Jobs", icon=":material/schedule:"),
    ],
    "Explore": [
        st.Page("pages/map.py", title="Map", icon=":material/scatter_plot:"),
        st.Page("pages/outliers.py", title="Outliers", icon=":material/crisis_alert:"),
        st.Page("pages/similar.py", title="Similar", icon=":material/image_search:"),
        st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    ],
}

# Navigation is declared in every run, hidden until the gate is passed: a run without
# st.navigation would show Streamlit's auto-discovered list of the pages/ files instead. It
# comes before the gate's widgets, which would otherwise change identity once it is declared.
page = st.navigation(PAGES, position="sidebar" if ui.access_allowed() else "hidden")
if not ui.access_gate():
    st.stop()
st.set_page_config(page_title=f"{page.title} · Shoal")
if st.session_state.setdefault("_url_initial_page", page.url_path) != page.url_path:
    st.session_state[
        "_url_initial"
    ] = {}  # the link's page-specific values were meant for its own page


def _pick_dataset() -> None:
    st.session_state["dataset"] = st.session_state["_dataset_picker"]
    st.session_state["embedding"] = None
    st.session_state["collection"] = None  # collections belong to one dataset


def _pick_level() -> None:
    st.session_state["level"] = st.session_state["_level_picker"]  # "sample" or "object"
    st.session_state["embedding"] = None
    for key in ("view_sel", "similar_sel", "similar_q"):  # row selections of the other level
        st.session_state.pop(key, None)


def _pick_embedding() -> None:
    st.session_state["embedding"] = st.session_state["_embedding_picker"]


def _pick_collection() -> None:
    st.session_state["collection"] = st.session_state["_collection_picker"] or None


unknown_collection = None


with st.sidebar:
    names = ui.dataset_names()
    if st.session_state["dataset"] not in names:
        if st.session_state["dataset"]:
            st.warning(
                f"Dataset {escape_markdown(repr(st.session_state['dataset']))} is not in this "
                "workspace."
            )
        st.session_state["dataset"] = names[0] if names else None
    if names:
        st.session_state["_dataset_picker"] = st.session_state["dataset"]
        st.selectbox("Dataset", names, key="_dataset_picker", on_change=_pick_dataset)
        dataset = loaders.workspace().open(st.session_state["dataset"])
        if ui.has_object_level(dataset):
            st.session_state["_level_picker"] = ui.current_level(dataset)
            st.segmented_control(
                "Level",
                ["sample", "object"],
                format_func={"sample": "Images", "object": "Objects"}.get,
                key="_level_picker",
                on_change=_pick_level,
                required=True,
                help="Explore whole images, or every box (labels and predictions) of the dataset.",
            )
        else:
            st.session_state["level"] = None
        embeddings = ui.level_embedding_names(dataset, ui.current_level(dataset))
        if len(embeddings) > 1:
            st.session_state["_embedding_picker"] = ui.embedding_choice(dataset)
            st.selectbox(
                "Embedding set", embeddings, key="_embedding_picker", on_change=_pick_embedding
            )
        collections = {c.name: c for c in Collections(dataset).list()}
        if st.session_state["collection"] not in (None, *collections):
            unknown_collection = st.session_state["collection"]
            st.session_state["collection"] = None
        if collections:
            # "" stands for none: a selectbox shows None as "Choose an option".
            st.session_state["_collection_picker"] = st.session_state["collection"] or ""
            st.selectbox(
                "Collection",
                ["", *collections],
                format_func=lambda name: (
                    f"{name} ({collections[name].size:,} {collections[name].level}s)"
                    if name
                    else "none: all samples"
                ),
                key="_collection_picker",
                on_change=_pick_collection,
                help="Show only this collection's samples on every page (and in the share link).",
            )
    else:
        st.caption("No datasets yet.")
    job_id = st.session_state.get("job_id")
    if job_id and page.url_path not in ("", "jobs"):
        try:
            if jobs.get(loaders.workspace(), job_id).active:
                widgets.job_panel(job_id, key="sidebar")
        except Exception:  # noqa: BLE001 - a stale job id in a link is not an error
            st.session_state["job_id"] = None
    share_slot = st.empty()

if unknown_collection is not None:
    st.warning(
        "Ignored the link's "
        + escape_markdown(f"collection={unknown_collection}")
        + f": no such collection in {escape_markdown(st.session_state['dataset'])}."
    )

try:
    with ui.entrypoint_run():
        page.run()
except ui.PageDone:
    pass
finally:
    ui.write_url()
    with share_slot.container(), st.expander("Share this view", icon=":material/link:"):
        st.caption(
            "Anyone with access who opens this link sees the same dataset, page, collection, colouring, selection and query."
        )
        st.code(ui.share_link(page.url_path), language=None, wrap_lines=True)
