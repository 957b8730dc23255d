"""Compare: is the current set distributed like the reference, and where does it differ?"""

from __future__ import annotations

import numpy as np
import streamlit as st

from pages import _common as ui
from pages import _loaders as loaders
from pages import _widgets as widgets
from pages._map_component import scatter_map
from shoal.analysis.two_sample import available_tests
from shoal.app.scatter import Colouring, map_payload_parts, with_header
from shoal.app.text import escape_markdown, visitor_error
from shoal.store import StoreError
from shoal.workflows.collections import collection_masks
from shoal.workflows.filters import FilterError, mentions_collection, parse_filter

ui.ensure_entrypoint()

CUSTOM = "custom filter…"
REST = "everything else"
MAP_COLOURS = ("side", "novelty", "cluster")

st.title("Compare")
loaded = ui.page_data(level="sample")
ds, embedding, dataset_key, stamp, version, samples = loaded
collection = ui.collection_filter(loaded)
if ui.current_level(ds) == "object":
    # The example uses this dataset's own splits, so it runs as written (CATEGORY aside).
    splits = (
        samples["split"].dropna().astype(str).value_counts().index[:2] if "split" in samples else []
    )
    sides = (
        f'--reference "category=CATEGORY & split={splits[0]}" '
        f'--current "category=CATEGORY & split={splits[1]}"'
        if len(splits) == 2
        else "--reference category=CATEGORY"
    )
    st.caption(
        "This page compares sets of whole images and stays at the image level. To compare boxes, "
        f"run `shoal compare {ds.name} --embedding "
        f"{ds.default_embedding(level='object') or 'BOX_SET'} {sides}`."
    )

presets = []
for column in ("split", "label"):
    if column in samples and 2 <= samples[column].nunique() <= 50:
        presets += [
            f"{column}={value}" for value in sorted(samples[column].dropna().astype(str).unique())
        ]
if "split" in samples and samples["split"].nunique() >= 2:
    splits = samples["split"].dropna().astype(str)
    default_reference = (
        "split=train" if "train" in set(splits) else f"split={splits.value_counts().index[0]}"
    )
else:
    default_reference = presets[0] if presets else ""
default_current = ""
if collection is not None:
    # The collection as a side: by default, its members against every other sample.
    inside = f"collection={collection.name}"
    presets = [inside, f"collection!={collection.name}", *presets]
    default_reference, default_current = presets[1], inside
reference_expr = ui.url_state("ref", "compare_ref", default_reference)
current_expr = ui.url_state("cur", "compare_cur", default_current)
method = ui.url_state("method", "compare_method", "auto")
methods = ["auto", *available_tests()]
if method not in methods:
    st.session_state["compare_method"] = method = "auto"

st.caption(
    "Pick two disjoint subsets, by split or by any column filter such as `label=cat,dog & split=test` or "
    "`confidence<0.5`, or a saved collection (`collection=NAME`). The test asks whether they come "
    "from the same distribution; the rest shows where they differ."
)
if collection is not None:
    st.caption(
        f"Collection **{escape_markdown(collection.name)}** ({int(collection.mask.sum()):,} of "
        f"{len(samples):,} samples) is a side to compare: `collection={collection.name}`, or "
        f"`collection!={collection.name}` for the rest. The map below shows every sample."
    )
left, right, far = st.columns([2, 2, 1])
with left:
    options = [*presets, CUSTOM]
    choice = st.selectbox(
        "Reference",
        options,
        index=options.index(reference_expr) if reference_expr in presets else len(options) - 1,
        key="compare_ref_choice",
    )
    if choice == CUSTOM:
        reference_expr = st.text_input(
            "Reference filter", value=reference_expr, key="compare_ref_text"
        )
    else:
        reference_expr = choice
with right:
    options = [REST, *presets, CUSTOM]
    index = (
        0
        if not current_expr
        else options.index(current_expr)
        if current_expr in presets
        else len(options) - 1
    )
    choice = st.selectbox("Current", options, index=index, key="compare_cur_choice")
    if choice == CUSTOM:
        current_expr = st.text_input("Current filter", value=current_expr, key="compare_cur_text")
    else:
        current_expr = "" if choice == REST else choice
with far:
    method = st.selectbox(
        "Test",
        methods,
        key="compare_method",
        persist_state="session",
        help="auto: MMD; classifier: a domain classifier's AUC",
    )
st.session_state["compare_ref"], st.session_state["compare_cur"] = reference_expr, current_expr

if not reference_expr.strip():
    st.info("Give a reference subset (e.g. `split=train`).")
    ui.stop()
collections = (
    collection_masks(ds, samples) if mentions_collection(reference_expr, current_expr) else {}
)
# A filter naming a collection changes with it: part of the cached comparison's key.
collections_stamp = ui.collections_stamp(ds) if collections else ""
try:
    reference_mask = parse_filter(reference_expr, samples, collections=collections)
    current_mask = (
        ~reference_mask
        if not current_expr
        else parse_filter(current_expr, samples, collections=collections)
    )
except FilterError as error:
    st.error(visitor_error(error))
    ui.stop()
n_pooled = int(reference_mask.sum() + current_mask.sum())

if n_pooled > ui.INLINE_MAX_SAMPLES * 4 and not ui.request_job(
    ds,
    "compare",
    {
        "embedding": embedding,
        "reference": reference_expr,
        "current": current_expr or None,
        "method": method,
    },
    what="comparison",
    button=f"Compare {n_pooled:,} samples in the background",
):
    ui.stop()

try:
    result = loaders.comparison(
        ds,
        dataset_key,
        embedding,
        version,
        reference_expr,
        current_expr or None,
        method,
        collections_stamp,
    )
except (FilterError, StoreError, ValueError) as error:
    st.error(visitor_error(error))
    ui.stop()

verdict = result.verdict()
(st.warning if result.significant else st.success)(verdict)
cols = st.columns(4)
cols[0].metric(
    "p-value",
    f"{result.p_value:.3g}",
    help=f"{result.n_permutations} permutations; alpha = {result.alpha:g}",
)
cols[1].metric(result.effect_name, f"{result.effect_size:.3g}")
cols[2].metric("Reference / current", f"{result.n_reference:,} / {result.n_current:,}")
cols[3].metric("Novel current samples", f"{int(result.novelty_flags.sum()):,}")

row_of = {sample_id: i for i, sample_id in enumerate(samples["sample_id"].astype(str))}
current_rows = np.array([row_of[i] for i in result.current_ids], dtype=np.int64)
reference_rows = np.array([row_of[i] for i in result.reference_ids], dtype=np.int64)

st.subheader("Not covered by the reference")
order = np.argsort(-result.novelty, kind="stable")
shown = order[: max(int(result.novelty_flags.sum()), 24)]
st.caption(
    "Current samples ranked by novelty: the share of reference samples that sit closer to their own "
    "neighbours than this sample sits to the reference (1.0 = farther than every one). Flagged ones "
    "(conformal p-value below the novelty level) are marked *novel*."
)
novelty_table = result.novelty_frame()
extra = samples.set_index(samples["sample_id"].astype(str)).drop(
    columns=[c for c in ("sample_id", "path") if c in samples]
)
novelty_table = novelty_table.join(extra, on="sample_id").sort_values("novelty", ascending=False)
with st.container(horizontal=True):
    widgets.download_csv(
        "Export novelty CSV",
        novelty_table,
        file_name=f"{ds.name}-novelty.csv",
        key="compare_novelty_export",
    )
    widgets.save_as_collection(
        ds,
        [result.current_ids[i] for i in np.flatnonzero(result.novelty_flags)],
        level="sample",
        provenance={"page": "compare", "reference": reference_expr, "current": current_expr},
        key="compare_novel",
        created_by=ui.signed_in_user(),
        label="Save the novel ones as a collection",
    )
widgets.gallery(
    ds,
    samples,
    current_rows[shown],
    key="compare_novel",
    captions=[
        ("novel · " if result.novelty_flags[i] else "")
        + f"novelty {result.novelty[i]:.2f} · p {result.novelty_p_values[i]:.3f}"
        for i in shown
    ],
)

st.subheader("Pick what to label next")
st.caption(
    "The current samples that best cover what the reference lacks: the most novel first, each "
    "next one far from the reference and from every earlier pick (k-center greedy seeded with "
    "the reference), so no two picks are near-copies."
)
n_picks = int(
    st.number_input(
        "How many",
        1,
        max(1, len(current_rows)),
        min(24, max(1, len(current_rows))),
        key="compare_n",
    )
)
try:
    picks = loaders.picks(
        ds,
        dataset_key,
        embedding,
        version,
        n_picks,
        current_expr or None,
        reference_expr,
        collections_stamp,
    )
except (FilterError, StoreError, ValueError) as error:
    st.error(visitor_error(error))
else:
    picked_rows = np.array([row_of[i] for i in picks["sample_id"]], dtype=np.int64)
    st.caption(
        f"After {len(picks):,} picks every current sample is within cosine distance "
        f"{picks['radius'].iloc[-1]:.3f} of the reference or a pick."
        if len(picks)
        else "Nothing to pick."
    )
    with st.container(horizontal=True):
        widgets.download_csv(
            "Export picks CSV",
            picks,
            file_name=f"{ds.name}-to-label.csv",
            key="compare_picks_export",
        )
        widgets.save_as_collection(
            ds,
            picks["sample_id"].astype(str).tolist(),
            level="sample",
            provenance={"page": "compare", "picks_novel_vs": reference_expr, "n": n_picks},
            key="compare_picks",
            created_by=ui.signed_in_user(),
            label="Save the picks as a collection",
        )
    widgets.gallery(
        ds,
        samples,
        picked_rows,
        key="compare_picks",
        captions=[
            f"#{p.pick} · covers {p.represented:,} · d {p.pick_distance:.3f}"
            for p in picks.itertuples(index=False)
        ],
    )

st.subheader("Clusters that changed share")
clusters = result.clusters_frame()
st.dataframe(
    clusters.assign(
        reference_fraction=clusters["reference_fraction"].round(3),
        current_fraction=clusters["current_fraction"].round(3),
        ratio=clusters["ratio"].round(2),
    ),
    hide_index=True,
    width="stretch",
)
widgets.download_csv(
    "Export clusters CSV",
    clusters,
    file_name=f"{ds.name}-clusters.csv",
    key="compare_clusters_export",
)

st.subheader("On the map")
if not ui.analysis_ready(ds, embedding, len(samples)):
    st.caption(
        "The map of this large dataset has not been computed yet (open the Map page to start it)."
    )
    ui.stop()
colour = st.segmented_control(
    "Colour by", MAP_COLOURS, key="compare_colour", default="side", required=True
)
coords = loaders.projection(ds, dataset_key, embedding, version)["coords"]
if colour == "side":
    sides = np.full(len(samples), "(not compared)", dtype=object)
    sides[reference_rows] = "reference"
    sides[current_rows] = np.where(result.novelty_flags, "current · novel", "current")
    colouring = Colouring.categorical(
        "side",
        sides,
        colours={
            "reference": "#9DB4C8",
            "current": "#F58518",
            "current · novel": "#D62728",
            "(not compared)": "#E4E4E4",
        },
    )
elif colour == "novelty":
    values = np.full(len(samples), np.nan, dtype=np.float32)
    values[current_rows] = result.novelty
    colouring = Colouring.continuous("novelty", values)
else:
    clusters_of = np.full(len(samples), None, dtype=object)
    clusters_of[reference_rows] = [f"cluster {c}" for c in result.reference_clusters]
    clusters_of[current_rows] = [f"cluster {c}" for c in result.current_clusters]
    colouring = Colouring.categorical("cluster", clusters_of)
header, body = map_payload_parts(coords, colouring, height=520)
scatter_map(with_header(body, {**header, "tools": False}), key="compare_map")
st.caption(f"{len(coords):,} points, every sample drawn; pan and zoom with the mouse.")
