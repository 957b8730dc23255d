"""Similar: the samples nearest to a sample, to the map's selection, or to a new image dropped in."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import streamlit as st

from pages import _common as ui
from pages import _loaders as loaders
from pages import _widgets as widgets
from shoal.app.selection import Selection, SelectionError
from shoal.app.tables import row_ids, rows_of_ids, rows_table
from shoal.app.text import escape_markdown, visitor_error
from shoal.store import StoreError, atomic_path

ui.ensure_entrypoint()

MODES = {"sample": "Sample id(s)", "selection": "The map's selection", "image": "A new image"}
QUERY_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

st.title("Similar")
loaded = ui.page_data()
ds, embedding, dataset_key, stamp, version, samples = loaded
collection = ui.collection_filter(loaded)
sample_ids = row_ids(samples)
info = ds.embedding_info(embedding)

if (
    "similar_mode" not in st.session_state
    and "mode" not in st.session_state["_url_initial"]
    and st.session_state.get("view_sel")
):
    st.session_state["similar_mode"] = "selection"  # arriving from a map selection: query by it
if ui.url_state("mode", "similar_mode", "sample") not in MODES:
    st.session_state["similar_mode"] = "sample"
query_text = ui.url_state("q", "similar_q", "")
selection_token = ui.url_state("sel", "similar_sel", None)
image_key = ui.url_state("img", "similar_img", None)
if ui.url_state("k", "similar_k", 24, cast=int) not in (12, 24, 48, 96, 200):
    st.session_state["similar_k"] = 24

mode = st.segmented_control(
    "Query by",
    list(MODES),
    format_func=MODES.get,
    key="similar_mode",
    persist_state="session",
    required=True,
)
k = st.select_slider("Results", [12, 24, 48, 96, 200], key="similar_k", persist_state="session")
if mode != "selection":
    st.session_state["_url_bound"].pop("sel", None)
if mode != "sample":
    st.session_state["_url_bound"].pop("q", None)
if mode != "image":
    st.session_state["_url_bound"].pop("img", None)


def queries_dir():
    return loaders.workspace().root / ".cache" / "queries"


def query_image_path(key: str):
    if not re.fullmatch(r"[0-9a-f]{16}", key or ""):
        return None
    return next(
        (p for p in queries_dir().glob(f"{key}.*") if p.suffix in QUERY_IMAGE_SUFFIXES), None
    )


@st.cache_data(show_spinner="Embedding the image…", max_entries=32)
def embed_query_image(path: str, model_name: str) -> bytes:
    from PIL import Image

    from shoal.embedding import embed_images

    with Image.open(path) as image:
        vector = embed_images([image.convert("RGBA")], loaders.embedding_model(model_name))[0]
    return np.asarray(vector, dtype=np.float32).tobytes()


query_rows: np.ndarray = np.empty(0, dtype=np.int64)
vector: bytes | None = None
if mode == "sample":
    if not query_text and st.session_state.get("view_sel"):
        try:
            picked = Selection.from_token(st.session_state["view_sel"])
            if picked.kind == "rows" and len(picked.rows) <= 5:
                st.session_state["similar_q"] = ",".join(sample_ids[list(picked.rows)])
        except SelectionError:
            pass
    typed = st.text_input(
        "Sample id(s), comma-separated",
        key="similar_q",
        persist_state="session",
        placeholder=f"e.g. {sample_ids[0]}",
    )
    wanted = [s.strip() for s in typed.split(",") if s.strip()]
    lookup = rows_of_ids(sample_ids, wanted)
    unknown = [s for s in wanted if s not in lookup]
    if unknown:
        st.warning(f"Unknown sample id(s): {escape_markdown(', '.join(unknown[:5]))}")
    query_rows = np.array([lookup[s] for s in wanted if s in lookup], dtype=np.int64)
elif mode == "selection":
    token = selection_token or st.session_state.get("view_sel")
    st.session_state["similar_sel"] = token
    if not token:
        st.info(
            "Nothing selected on the map yet: select samples there, then press **Find similar**."
        )
        st.page_link("pages/map.py", label="Open the map", icon=":material/scatter_plot:")
        ui.stop()
    try:
        selection = Selection.from_token(token)
        coords = (
            loaders.projection(ds, dataset_key, embedding, version)["coords"]
            if selection.kind != "rows"
            else np.zeros((len(samples), 2))
        )
        query_rows = selection.resolve(coords, n_rows=len(samples))
    except SelectionError as error:
        st.warning(escape_markdown(error))
else:
    if info.model == "user-provided":
        st.info(
            f"Embedding set **{escape_markdown(embedding)}** came from your own model, so Shoal "
            "cannot embed a new image into it."
        )
        ui.stop()
    upload = st.file_uploader(
        "Drop an image", type=[s.strip(".") for s in QUERY_IMAGE_SUFFIXES], key="similar_upload"
    )
    if upload is not None:
        data = upload.getvalue()
        key = hashlib.sha256(data).hexdigest()[:16]
        suffix = "." + (upload.name.rsplit(".", 1)[-1].lower() if "." in upload.name else "png")
        target = queries_dir() / f"{key}{suffix if suffix in QUERY_IMAGE_SUFFIXES else '.png'}"
        if not target.exists():
            from shoal.ingest.images import check_image

            with atomic_path(target) as tmp:
                tmp.write_bytes(data)
                # Decoded in full under the importers' pixel cap before it is kept or embedded.
                reason = check_image(tmp)
                if reason is not None:
                    st.error(f"That file cannot be used as a query image: {visitor_error(reason)}")
                    ui.stop()
        image_key = key
    st.session_state["similar_img"] = image_key
    path = query_image_path(image_key) if image_key else None
    if path is None:
        if image_key:
            st.warning("The query image in this link is no longer on the server; drop it in again.")
        ui.stop()
    st.image(
        path.read_bytes(),
        caption=f"Query image (embedded with {escape_markdown(info.model)})",
        width=200,
    )
    vector = embed_query_image(str(path), info.model)

if not len(query_rows) and vector is None:
    st.caption("Give a query to see its nearest samples.")
    ui.stop()

if len(query_rows):
    with st.expander(f"Query: {len(query_rows):,} sample(s)", expanded=len(query_rows) <= 6):
        widgets.gallery(ds, samples, query_rows, key="similar_query", per_page=12, min_width=120)

if collection is not None:
    st.caption(
        collection.describe()
        + ": the nearest are searched among its members (the query may come from anywhere)."
    )
try:
    result = loaders.similar(
        ds,
        dataset_key,
        embedding,
        version,
        tuple(sample_ids[query_rows]) if len(query_rows) else None,
        vector,
        k,
        None if collection is None else collection.mask.tobytes(),
    )
except (StoreError, ValueError) as error:
    st.error(visitor_error(error))
    ui.stop()

st.subheader(f"{len(result.indices):,} nearest")
st.caption(
    "Cosine distance: 0 = same direction, larger = less alike."
    if result.metric == "cosine"
    else f"{result.metric} distance, smaller = more alike."
)
actions = st.container(horizontal=True)
with actions:
    table = rows_table(
        samples,
        result.indices,
        rank=np.arange(1, len(result.indices) + 1),
        distance=result.distances,
    )
    widgets.download_csv(
        "Export CSV", table, file_name=f"{ds.name}-similar.csv", key="similar_export"
    )
with actions:
    id_column = "object_id" if "object_id" in samples else "sample_id"
    widgets.save_as_collection(
        ds,
        samples[id_column].astype(str).to_numpy()[result.indices].tolist(),
        level="object" if id_column == "object_id" else "sample",
        provenance={
            "page": "similar",
            "query": [str(q) for q in samples[id_column].to_numpy()[query_rows]],
        },
        key="similar",
        created_by=ui.signed_in_user(),
    )
if actions.button("Show on the map", icon=":material/scatter_plot:", key="similar_map"):
    st.session_state["view_sel"] = Selection.from_rows(
        np.r_[query_rows, result.indices], n_rows=len(samples)
    ).to_token()
    st.switch_page("pages/map.py")
widgets.gallery(
    ds,
    samples,
    result.indices,
    key="similar_results",
    captions=[f"#{i + 1} · d = {d:.3f}" for i, d in enumerate(result.distances)],
)
