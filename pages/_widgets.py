"""Widgets the pages share: a job's live panel, the gallery of samples, one sample's tile, CSV export.

What they show comes from :mod:`shoal.app` (captions, thumbnails, CSV) and :mod:`pages._loaders`
(cached thumbnails); the job panel polls the runner from a fragment, never from another thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from pages import _loaders as loaders
from shoal import jobs
from shoal.app.tables import describe_rows, tile_caption, to_csv_bytes
from shoal.app.text import code_span, escape_markdown, visitor_error
from shoal.app.thumbnails import object_box
from shoal.store import Dataset, StoreError
from shoal.store.collections import Collections

GALLERY_PAGE_SIZE = 24
JOB_POLL_SECONDS = 1.0
#: Larger CSV downloads are written when clicked, not on every rerun.
EAGER_CSV_ROWS = 10_000


# --------------------------------------------------------------------------- jobs


def job_panel(job_id: str, *, key: str = "main", on_done: str = "rerun") -> None:
    """A job's progress (polled while it runs), its error if it failed, and a cancel button."""
    try:
        record = jobs.get(loaders.workspace(), job_id)
    except StoreError:
        st.caption(f"Job {escape_markdown(job_id)} is not in this workspace.")
        return
    if record.active:
        _job_live(job_id, key, on_done)
    else:
        _job_summary(record)


def _job_summary(record: jobs.JobRecord) -> None:
    label = escape_markdown(f"{record.kind} · {record.dataset or ''}")
    if record.state == "done":
        result = record.result or {}
        detail = escape_markdown(
            ", ".join(
                f"{k} {v}" for k, v in result.items() if k in ("embedding", "count", "dim", "steps")
            )
        )
        st.success(f"Job {label} finished" + (f": {detail}" if detail else "") + ".")
    elif record.state == "failed":
        st.error(f"Job {label} failed: {visitor_error(record.error or 'no reason recorded')}")
    elif record.state == "cancelled":
        st.warning(
            f"Job {label} was cancelled; finished work is kept (embedding resumes where it stopped)."
        )


def _job_live(job_id: str, key: str, on_done: str) -> None:
    @st.fragment(run_every=JOB_POLL_SECONDS)
    def live() -> None:
        record = jobs.get(loaders.workspace(), job_id)
        if not record.active:
            if on_done == "rerun":
                st.rerun()
            _job_summary(record)
            return
        progress = record.progress
        label = escape_markdown(f"{record.kind} · {record.dataset or ''} · {record.state}")
        st.progress(
            progress.fraction,
            text=label
            + " — "
            + progress.caption()
            + (f" · {visitor_error(progress.message)}" if progress.message else ""),
        )
        if st.button("Cancel", key=f"{key}_cancel_{job_id}"):
            with st.spinner("Stopping the job at its next checkpoint…"):
                jobs.cancel(loaders.workspace(), job_id, grace_seconds=10.0)
            st.rerun()

    live()


# --------------------------------------------------------------------------- gallery


def gallery(
    ds: Dataset,
    samples: pd.DataFrame,
    rows: Sequence[int] | np.ndarray,
    *,
    key: str,
    captions: Sequence[str] | None = None,
    per_page: int = GALLERY_PAGE_SIZE,
    min_width: int = 150,
    actions: Callable[[int], None] | None = None,
) -> None:
    """Thumbnails (or metadata cards for sets without images) of ``rows``, a page at a time."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        st.caption("Nothing to show.")
        return
    pages = max(1, -(-len(rows) // per_page))
    page = 1
    if pages > 1:
        page = st.pagination(pages, key=f"{key}_page", max_visible_pages=9)
    start = (int(page) - 1) * per_page
    shown = rows[start : start + per_page]
    if pages > 1:
        st.caption(f"{start + 1}–{start + len(shown)} of {len(rows):,}")
    grid = st.grid(min_column_width=min_width, border=True, gap="xsmall")
    for i, row in enumerate(shown):
        with grid.cell():
            sample_tile(
                ds, samples, int(row), caption=captions[start + i] if captions is not None else None
            )
            if actions is not None:
                actions(int(row))


def sample_tile(
    ds: Dataset, samples: pd.DataFrame, row: int, *, caption: str | None = None, lines: int = 3
) -> None:
    """One sample: its thumbnail and a few metadata lines, or a metadata card without images.

    ``caption`` is plain text (escaped here, like the sample's own labels and metadata).
    """
    record = samples.iloc[int(row)]
    path = record.get("path") if "path" in samples else None
    if ds.has_images and isinstance(path, str) and path:
        root = str(loaders.workspace().root)
        box = object_box(samples, int(row))
        if box is not None:
            image = loaders.box_thumbnail(root, str(ds.image_file(path)), box)
        else:
            image = loaders.thumbnail(root, str(ds.image_file(path)))
        st.image(image, width="stretch")
        shown = ([caption] if caption else []) + tile_caption(samples, int(row))[:lines]
        st.caption("  \n".join(escape_markdown(line) for line in shown))
    else:
        details = describe_rows(samples, int(row), limit=8)
        st.markdown(
            "  \n".join(
                ([f"**{escape_markdown(caption)}**"] if caption else [])
                + [code_span(line) for line in details]
            )
        )


def download_csv(
    label: str,
    table: pd.DataFrame | Callable[[], pd.DataFrame],
    *,
    file_name: str,
    key: str,
    lazy: bool = False,
) -> None:
    """A CSV download of ``table``, or of the table ``table()`` builds. The CSV is written
    only when clicked if ``lazy``, if ``table`` is a callable, or if it has more than
    :data:`EAGER_CSV_ROWS` rows (a million-row ranking would otherwise cost seconds of every
    rerun); small ones are written up front so the click needs no round trip."""
    if callable(table):
        data: bytes | Callable[[], bytes] = lambda: to_csv_bytes(table())  # noqa: E731
    elif lazy or len(table) > EAGER_CSV_ROWS:
        data = lambda: to_csv_bytes(table)  # noqa: E731
    else:
        data = to_csv_bytes(table)
    st.download_button(
        label, data=data, file_name=file_name, mime="text/csv", key=key, icon=":material/download:"
    )


# --------------------------------------------------------------------------- collections


def save_as_collection(
    ds: Dataset,
    ids: Sequence[str],
    *,
    level: str,
    provenance: dict,
    key: str,
    created_by: str | None = None,
    label: str = "Save as collection",
) -> None:
    """A popover that keeps ``ids`` as a new collection, or adds them to an existing one."""
    with st.popover(label, icon=":material/bookmark_add:", disabled=not len(ids)):
        shelf = Collections(ds)
        existing = [c.name for c in shelf.list() if c.level == level]
        target = st.selectbox(
            "Collection", ["a new collection", *existing], key=f"{key}_collection"
        )
        new = target == "a new collection"
        name = (
            st.text_input("Name", key=f"{key}_collection_name", placeholder="e.g. blurry-night")
            if new
            else target
        )
        note = st.text_input("Note", key=f"{key}_collection_note") if new else ""
        if not st.button(f"Save {len(ids):,}", type="primary", key=f"{key}_collection_save"):
            return
        try:
            if new:
                shelf.create(
                    (name or "").strip(),
                    [str(i) for i in ids],
                    level=level,
                    note=note,
                    provenance=provenance,
                    created_by=created_by,
                )
            else:
                shelf.add(name, [str(i) for i in ids])
        except StoreError as error:
            st.error(visitor_error(error))
            return
        st.success(f"{len(ids):,} saved in collection {code_span(name)}.")
