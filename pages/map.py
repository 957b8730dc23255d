"""Map: a UMAP (or t-SNE, PCA) map of every sample, drawn with WebGL in the browser
(pages/_map_component.py), coloured by any column; select to see the images."""

from __future__ import annotations

import numpy as np
import streamlit as st

from pages import _common as ui
from pages import _loaders as loaders
from pages import _widgets as widgets
from pages._map_component import scatter_map
from shoal.app.details import card_query, card_urls
from shoal.app.scatter import (
    Colouring,
    MapFrame,
    map_payload_parts,
    metadata_colourings,
    with_header,
)
from shoal.app.selection import (
    MAX_TOKEN_CHARS,
    Selection,
    SelectionError,
    decode_map_rows,
    polygons_of,
    selection_from_map,
)
from shoal.app.tables import rows_table
from shoal.app.text import escape_markdown
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
    names = list(metadata_colours(_ds, dataset_key, stamp, embedding))
    extra = ["outlier score", "projection trust"]
    if "object_id" not in table and default_comparison(table) is not None:
        extra += ["novelty", "cluster"]
    return ["none", *names, *extra]


@st.cache_resource(show_spinner=False, max_entries=4)
def metadata_colours(
    _ds: Dataset, dataset_key: str, stamp: str, embedding: str
) -> dict[str, Colouring]:
    """The colourings of the metadata columns (at 1M rows they take a second to build)."""
    return metadata_colourings(loaders.aligned_samples(_ds, dataset_key, stamp, embedding))


def default_comparison(table) -> tuple[str, str | None] | None:
    """Reference 'split=train' (or the largest split) against the rest, when there are splits."""
    if "split" not in table:
        return None
    counts = table["split"].dropna().astype(str).value_counts()  # one pass over 1M rows
    if len(counts) < 2:
        return None
    reference = "train" if "train" in counts.index else counts.index[0]
    return f"split={reference}", None


#: A selection of rows from a link (not a drawn shape) is highlighted up to this many rows.
MAX_SHOWN_ROWS = 20_000
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
    metadata = metadata_colours(ds, dataset_key, stamp, embedding)
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


@st.cache_resource(show_spinner="Preparing the map…", max_entries=4)
def map_payload(
    _coords: np.ndarray, _colouring: Colouring | None, _visible: np.ndarray, identity: str
) -> tuple[dict, bytes, MapFrame]:
    """(header, body, frame) of the map's binary message; ``identity`` names what is drawn.
    The frame is fitted on all points, so a collection's members sit where they do among the rest."""
    frame = MapFrame.fit(_coords)
    colouring = None if _colouring is None else _colouring.take(_visible)
    header, body = map_payload_parts(_coords[_visible], colouring, frame=frame)
    return header, body, frame


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
trust = projection["trustworthiness"]
controls[2].caption(
    f"{len(visible):,} {what} · {drawn} of **{escape_markdown(embedding)}**"
    + (
        f" · trustworthiness {trust:.2f} (1 = every map neighbour is a true neighbour). "
        if np.isfinite(trust)
        else ". "
    )
    + "Pick **Box select** or **Lasso** above the map and drag to select; click a point to pick "
    "one; scroll to zoom."
)
st.markdown(f"**{len(visible):,} points** on the map: all {what} drawn, none left out.")

selection = None
selected_rows = np.empty(0, dtype=np.int64)
# The rows the browser selected for a shape it drew, kept for the points it was drawn on.
drawn_rows = st.session_state.setdefault("_view_drawn_rows", {})
drawn_on = repr((dataset_key, stamp, version, layout, collection and collection.name))
if token:
    try:
        selection = Selection.from_token(token)
        if token in drawn_rows and drawn_rows[token][0] == drawn_on:
            selected_rows = drawn_rows[token][1]
        else:
            selected_rows = selection.resolve(coords, n_rows=n_samples)
        if collection is not None:
            selected_rows = selected_rows[collection.mask[selected_rows]]
    except SelectionError as error:
        st.warning(escape_markdown(error))
        st.session_state["view_sel"] = None
        token = None

colouring = colouring_for(colour)
identity = repr(
    (dataset_key, stamp, version, layout, colour, collection and collection.name, len(visible))
)
if colour.startswith(COLLECTION_PREFIX):
    identity += repr(shelf.get(colour[len(COLLECTION_PREFIX) :]).updated_at)
header, body, frame = map_payload(coords, colouring, visible, identity)
# The browser already shows a selection it drew on these very points: send the same message
# again (Streamlit then sends a reference, not 9 bytes a point). A selection from a link, or
# one drawn before the colours changed, is drawn again from its shapes.
shown_on = st.session_state.get("_view_drawn_on", {}).get(token or "")
extra: dict = {"epoch": st.session_state.get("_view_epoch", 0)}
if selection is not None and shown_on != header["points_id"]:
    if selection.kind != "rows":
        shapes = polygons_of(selection)
        extra["select"] = [frame.from_data(shape).round(6).tolist() for shape in shapes]
    elif len(selected_rows) <= MAX_SHOWN_ROWS:
        extra["select_rows"] = np.searchsorted(visible, selected_rows).tolist()
# Hover cards: the browser asks the server for the point under the pointer (shoal.app.details).
extra["card"] = card_urls(
    str(st.get_option("server.baseUrlPath") or ""),
    card_query(ds.name, embedding, collection=collection and collection.name),
)
event = scatter_map(with_header(body, {**header, **extra}), key="view_map")
if event is not None:
    picked_token, picked_rows = None, np.empty(0, dtype=np.int64)
    try:
        picked_rows = visible[decode_map_rows(event.get("rows") or "", n_points=len(visible))]
    except ValueError as error:
        st.warning(f"Ignored a selection the map sent: {escape_markdown(error)}")
    else:
        shape = selection_from_map(event.get("polygon"), str(event.get("kind")), frame.to_data)
        if shape is not None:
            picked_token = shape.to_token()
        elif len(picked_rows):
            picked_token = Selection.from_rows(picked_rows, n_rows=n_samples).to_token()
    if picked_token != token:
        # No rerun: the rest of this run shows the new selection (the share link is written
        # after the page has run).
        drawn_rows.clear()  # one selection kept: 100k rows are 800 kB
        st.session_state.setdefault("_view_drawn_on", {}).clear()
        if picked_token is not None:
            drawn_rows[picked_token] = (drawn_on, picked_rows)
            st.session_state["_view_drawn_on"][picked_token] = header["points_id"]
        st.session_state["view_sel"] = token = picked_token
        selection = None if token is None else Selection.from_token(token)
        selected_rows = picked_rows

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
        "Export selection (CSV)",
        table,
        file_name=f"{ds.name}-selection.csv",
        key="view_export",
        lazy=True,
    )
    widgets.save_as_collection(
        ds,
        samples[ID_COLUMN].to_numpy()[selected_rows].astype(str).tolist(),
        level=LEVEL,
        provenance={"page": "map", "selection": token, "colour": colour, "layout": layout},
        key="view",
        created_by=ui.signed_in_user(),
    )
    if st.button("Clear selection", icon=":material/close:", key="view_clear"):
        st.session_state["view_sel"] = None
        st.session_state["_view_epoch"] = st.session_state.get("_view_epoch", 0) + 1
        st.rerun()
if len(token or "") > MAX_TOKEN_CHARS:
    st.caption("This selection is too large to fit in a link; the link shares the map without it.")
    st.session_state["_url_bound"].pop("sel", None)

captions = None
if colouring is not None and colouring.kind == "continuous":
    captions = [f"{colouring.name}: {v:.3g}" for v in colouring.values[selected_rows]]  # type: ignore[index]
widgets.gallery(ds, samples, selected_rows, key="view_gallery", captions=captions)
