"""Map: a UMAP (or t-SNE, PCA) map as a WebGL scatter, coloured by any column; select to see
the images."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import streamlit as st

from pages import _common as ui
from pages import _loaders as loaders
from pages import _widgets as widgets
from shoal.app.scatter import Colouring, build_scatter, hover_for, metadata_colourings
from shoal.app.selection import MAX_TOKEN_CHARS, Selection, SelectionError, selection_from_event
from shoal.app.tables import rows_table
from shoal.app.text import (
    chart_safe_colouring,
    chart_safe_table,
    escape_markdown,
)
from shoal.store import Dataset
from shoal.store.collections import Collections

ui.ensure_entrypoint()

st.title("Map")
loaded = ui.page_data(analysis="map")
ds, embedding, dataset_key, stamp, version, samples = loaded
n_samples = len(samples)
collection = ui.collection_filter(loaded)


@st.cache_data(show_spinner=False, max_entries=8)
def colour_names(_ds: Dataset, dataset_key: str, stamp: str, embedding: str) -> list[str]:
    table = loaders.aligned_samples(_ds, dataset_key, stamp, embedding)
    names = list(metadata_colourings(table))
    extra = ["outlier score", "projection trust"]
    if "object_id" not in table and default_comparison(table) is not None:
        extra += ["novelty", "cluster"]
    return ["none", *names, *extra]


def default_comparison(table) -> tuple[str, str | None] | None:
    """Reference 'split=train' (or the largest split) against the rest, when there are splits."""
    if "split" not in table or table["split"].nunique() < 2:
        return None
    splits = table["split"].dropna().astype(str)
    reference = "train" if "train" in set(splits) else splits.value_counts().index[0]
    return f"split={reference}", None


LEVEL = "object" if "object_id" in samples else "sample"
ID_COLUMN = "object_id" if LEVEL == "object" else "sample_id"
shelf = Collections(ds)
COLLECTION_PREFIX = "collection: "


def colouring_for(name: str) -> Colouring | None:
    if name == "none":
        return None
    if name.startswith(COLLECTION_PREFIX):
        chosen = shelf.get(name[len(COLLECTION_PREFIX) :])
        inside = loaders.collection_mask(
            ds, dataset_key, stamp, embedding, chosen.name, chosen.updated_at
        )
        return Colouring.categorical(
            name, np.where(inside, "in the collection", "other").astype(object)
        )
    metadata = metadata_colourings(samples)
    if name in metadata:
        return metadata[name]
    if name == "outlier score":
        result = loaders.outliers(ds, dataset_key, embedding, version)
        return Colouring.continuous(
            name, result.scores, description=f"{result.method}, higher = more unusual"
        )
    if name == "projection trust":
        layout = st.session_state.get("view_layout", "umap")
        preservation = loaders.projection(ds, dataset_key, embedding, version, layout)[
            "preservation"
        ]
        return Colouring.continuous(
            name, preservation, description="share of true neighbours kept on the map"
        )
    if name in ("novelty", "cluster"):
        reference, current = default_comparison(samples)  # type: ignore[misc]
        params = {"reference": reference, "current": current, "embedding": embedding}
        if n_samples > ui.INLINE_MAX_SAMPLES and not ui.request_job(
            ds,
            "compare",
            params,
            what="comparison",
            why=f"Colouring {n_samples:,} samples by {name} needs the comparison of {reference} "
            "with the rest, computed once in the background.",
        ):
            return None
        result = loaders.comparison(ds, dataset_key, embedding, version, reference, current, "auto")
        rows = {sample_id: i for i, sample_id in enumerate(samples["sample_id"])}
        current_rows = np.array([rows[i] for i in result.current_ids])
        reference_rows = np.array([rows[i] for i in result.reference_ids])
        if name == "novelty":
            values = np.full(n_samples, np.nan, dtype=np.float32)
            values[current_rows] = result.novelty
            return Colouring.continuous(
                "novelty", values, description=f"current vs {reference}: higher = less covered"
            )
        clusters = np.full(n_samples, None, dtype=object)
        clusters[current_rows] = [f"cluster {c}" for c in result.current_clusters]
        clusters[reference_rows] = [f"cluster {c}" for c in result.reference_clusters]
        return Colouring.categorical("cluster", clusters)
    return None


@st.cache_data(show_spinner=False, max_entries=4)
def hover(_ds: Dataset, dataset_key: str, stamp: str, embedding: str) -> tuple[np.ndarray, str]:
    """Hover text per row, its labels and metadata escaped (plotly reads them as HTML)."""
    return hover_for(chart_safe_table(loaders.aligned_samples(_ds, dataset_key, stamp, embedding)))


options = colour_names(ds, dataset_key, stamp, embedding) + [
    COLLECTION_PREFIX + c.name for c in shelf.list() if c.level == LEVEL
]
default_colour = next((c for c in ("category", "label") if c in options), "none")
if ui.url_state("color", "view_color", default_colour) not in options:
    st.session_state["view_color"] = default_colour
token = ui.url_state("sel", "view_sel", None)

LAYOUTS = {"umap": "UMAP", "tsne": "t-SNE", "pca": "PCA"}
if ui.url_state("layout", "view_layout", "umap") not in LAYOUTS:
    st.session_state["view_layout"] = "umap"

controls = st.columns([2, 1, 3])
colour = controls[0].selectbox("Colour by", options, key="view_color", persist_state="session")
layout = controls[1].selectbox(
    "Layout",
    list(LAYOUTS),
    format_func=LAYOUTS.get,
    key="view_layout",
    on_change=lambda: st.session_state.update(view_sel=None),  # a selection is drawn on one map
    help="UMAP: local and global structure (default). t-SNE: tighter clusters, distances between "
    "them mean little. PCA: linear and exact, clusters overlap. All from the same neighbour graph.",
)
if (
    layout != "umap"
    and n_samples > ui.INLINE_MAX_SAMPLES
    and not ui.request_job(
        ds,
        "analyse",
        {"embedding": embedding, "steps": ["project"], "projection": layout},
        what=f"{LAYOUTS[layout]} map",
        why=f"The {LAYOUTS[layout]} map of {n_samples:,} samples is computed once in the "
        "background, then opens instantly for everyone.",
    )
):
    ui.stop()
try:
    projection = loaders.projection(ds, dataset_key, embedding, version, layout)
except ValueError as error:  # e.g. t-SNE beyond its size limit: say so, keep the page
    st.warning(escape_markdown(error))
    ui.stop()
coords = projection["coords"]
drawn = LAYOUTS.get(projection["method"], projection["method"].upper())
what = "objects" if "object_id" in samples else "samples"
# With a collection chosen only its members are drawn (and selectable); the map is the whole
# dataset's, so they sit where they do among the rest.
visible = np.arange(n_samples) if collection is None else collection.rows
if collection is not None:
    st.caption(collection.describe() + ", placed on the whole dataset's map.")
    if not len(visible):
        st.info("None of this dataset's rows at this level is in the collection.")
        ui.stop()
controls[2].caption(
    f"{len(visible):,} {what} · {drawn} of "
    f"**{escape_markdown(embedding)}** · trustworthiness {projection['trustworthiness']:.2f} "
    "(1 = every map neighbour is a true neighbour). Drag a box (or pick lasso in the chart's "
    "toolbar) to select; click a point to pick one."
)

selection = None
selected_rows = np.empty(0, dtype=np.int64)
if token:
    try:
        selection = Selection.from_token(token)
        selected_rows = selection.resolve(coords, n_rows=n_samples)
        if collection is not None:
            selected_rows = selected_rows[collection.mask[selected_rows]]
    except SelectionError as error:
        st.warning(escape_markdown(error))
        st.session_state["view_sel"] = None
        token = None

colouring = colouring_for(colour)
hover_text, hover_prefix = hover(ds, dataset_key, stamp, embedding)
payload = build_scatter(
    coords[visible],
    chart_safe_colouring(colouring if colouring is None else colouring.take(visible)),
    hover_text=hover_text[visible],
    hover_prefix=hover_prefix,
    selected_rows=np.searchsorted(visible, selected_rows) if len(selected_rows) else None,
)
trace_rows = [visible[rows] for rows in payload.trace_rows]
if payload.thinned:
    st.warning(
        f"Drawing {payload.drawn:,} of {payload.n_points:,} points (a fixed random subset, plus the selection). "
        "Box and lasso selections are resolved against all points."
    )
chart_identity = hashlib.sha1(
    json.dumps([ds.name, version, colour, token or "", collection and collection.name]).encode()
).hexdigest()
event = st.plotly_chart(
    payload.figure,
    key="view_chart",
    on_select="rerun",
    selection_mode=("box", "lasso", "points"),
    config={"displaylogo": False, "scrollZoom": True, "modeBarButtonsToRemove": ["toImage"]},
)
selection_now = event.get("selection", {}) if event else {}
signature = json.dumps(
    [selection_now.get("box"), selection_now.get("lasso"), selection_now.get("point_indices")],
    default=str,
)
previous = st.session_state.get("_view_last_event")
st.session_state["_view_last_event"] = (chart_identity, signature)
if previous is not None and previous[0] == chart_identity and previous[1] != signature:
    # The user drew or cleared a selection on this very chart (a redrawn chart starts afresh).
    picked = selection_from_event(event, trace_rows)
    picked_token = picked.to_token() if picked is not None else None
    if picked_token != token:
        st.session_state["view_sel"] = picked_token
        st.rerun()

if colouring is not None and colouring.description:
    st.caption(
        f"Colour: {escape_markdown(colouring.name)} — {escape_markdown(colouring.description)}"
    )

st.divider()
if selection is None or not len(selected_rows):
    st.caption("No selection. Drag on the map to select samples; their images appear here.")
    ui.stop()


st.subheader(f"{len(selected_rows):,} selected")
extra = {"map_x": coords[selected_rows, 0], "map_y": coords[selected_rows, 1]}
if colouring is not None and colouring.kind == "continuous":
    extra[colouring.name.replace(" ", "_")] = colouring.values[selected_rows]  # type: ignore[index]
table = rows_table(samples, selected_rows, **extra)
with st.container(horizontal=True):
    if st.button("Find similar", icon=":material/image_search:", key="view_similar"):
        st.session_state["similar_mode"] = "selection"
        st.session_state["similar_sel"] = token
        st.switch_page("pages/similar.py")
    widgets.download_csv(
        "Export selection (CSV)", table, file_name=f"{ds.name}-selection.csv", key="view_export"
    )
    widgets.save_as_collection(
        ds,
        samples[ID_COLUMN].astype(str).to_numpy()[selected_rows].tolist(),
        level=LEVEL,
        provenance={"page": "map", "selection": token, "colour": colour, "layout": layout},
        key="view",
        created_by=ui.signed_in_user(),
    )
    if st.button("Clear selection", icon=":material/close:", key="view_clear"):
        st.session_state["view_sel"] = None
        st.rerun()
if len(token or "") > MAX_TOKEN_CHARS:
    st.caption("This selection is too large to fit in a link; the link shares the map without it.")
    st.session_state["_url_bound"].pop("sel", None)

captions = None
if colouring is not None and colouring.kind == "continuous":
    captions = [f"{colouring.name}: {v:.3g}" for v in colouring.values[selected_rows]]  # type: ignore[index]
widgets.gallery(ds, samples, selected_rows, key="view_gallery", captions=captions)
