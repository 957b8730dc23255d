"""Outliers, near-duplicates (and split leakage), mislabel candidates: ranked, explained, exportable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from pages import _common as ui
from pages import _loaders as loaders
from pages import _widgets as widgets
from shoal.analysis.outliers import DEFAULT_METHOD, SCORERS
from shoal.app.charts import score_histogram
from shoal.app.selection import Selection
from shoal.app.tables import row_ids, rows_table
from shoal.app.text import code_span, escape_markdown, visitor_error

#: The duplicate slider's range (cosine distance): beyond it pairs are not near-duplicates.
MAX_DUPLICATE_DISTANCE = 0.3

ui.ensure_entrypoint()

SECTIONS = {
    "outliers": "Outliers",
    "duplicates": "Near-duplicates & leakage",
    "mislabels": "Mislabel candidates",
}
ITEMS_PER_PAGE = 8
NEIGHBORS_SHOWN = 5

st.title("Outliers & issues")
loaded = ui.page_data(analysis="issue scan")
ds, embedding, dataset_key, stamp, version, samples = loaded
collection = ui.collection_filter(loaded)
#: Which rows the lists show: every row, or the chosen collection's members. The scores,
#: thresholds and pairs are still those of the whole dataset.
members = np.ones(len(samples), dtype=bool) if collection is None else collection.mask

if ui.url_state("show", "outliers_section", "outliers") not in SECTIONS:
    st.session_state["outliers_section"] = "outliers"
section = st.segmented_control(
    "Show",
    list(SECTIONS),
    format_func=SECTIONS.get,
    key="outliers_section",
    persist_state="session",
    required=True,
)
sample_ids = row_ids(samples)
if collection is not None:
    st.caption(
        collection.describe()
        + ". Scores, thresholds and pairs are computed on the whole dataset; the lists show "
        "the collection's members only."
    )


ID_COLUMN = "object_id" if "object_id" in samples else "sample_id"
LEVEL = "object" if ID_COLUMN == "object_id" else "sample"
ROWS = "boxes" if LEVEL == "object" else "samples"


def keep(rows: np.ndarray, key: str, provenance: dict) -> None:
    """Save the rows as a collection (a popover beside the other actions)."""
    widgets.save_as_collection(
        ds,
        samples[ID_COLUMN].astype(str).to_numpy()[np.asarray(rows, dtype=np.int64)].tolist(),
        level=LEVEL,
        provenance={"page": "outliers", **provenance},
        key=key,
        created_by=ui.signed_in_user(),
    )


def show_on_map(rows: np.ndarray, key: str) -> None:
    if st.button(
        "Show these on the map", icon=":material/scatter_plot:", key=key, disabled=not len(rows)
    ):
        st.session_state["view_sel"] = Selection.from_rows(rows, n_rows=len(samples)).to_token()
        st.switch_page("pages/map.py")


def paged(items: int, key: str) -> range:
    pages = max(1, -(-items // ITEMS_PER_PAGE))
    page = st.pagination(pages, key=key, max_visible_pages=9) if pages > 1 else 1
    start = (int(page) - 1) * ITEMS_PER_PAGE
    return range(start, min(items, start + ITEMS_PER_PAGE))


def evidence_row(
    row: int, caption: str, neighbor_rows: np.ndarray, neighbor_captions: list[str]
) -> None:
    """The sample, then its nearest neighbours: why it was flagged."""
    with st.container(border=True):
        columns = st.columns([1.3] + [1] * NEIGHBORS_SHOWN)
        with columns[0]:
            widgets.sample_tile(ds, samples, row, caption=caption)
        for column, neighbor, text in zip(
            columns[1:], neighbor_rows[:NEIGHBORS_SHOWN], neighbor_captions, strict=False
        ):
            with column:
                widgets.sample_tile(ds, samples, int(neighbor), caption=text, lines=2)


if section == "outliers":
    methods = sorted(SCORERS)
    if ui.url_state("method", "outliers_method", DEFAULT_METHOD) not in methods:
        st.session_state["outliers_method"] = DEFAULT_METHOD
    method = st.selectbox(
        "Scorer",
        methods,
        key="outliers_method",
        persist_state="session",
        format_func=lambda m: f"{m} — {SCORERS[m].description}" if SCORERS[m].description else m,
    )
    result = loaders.outliers(ds, dataset_key, embedding, version, method)
    indices, distances = loaders.neighbors(ds, dataset_key, embedding, version)
    order = np.argsort(-result.scores, kind="stable")
    order = order[members[order]]
    finite = result.scores[np.isfinite(result.scores)]
    low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    manual = ui.url_state("cut", "outliers_cut", None, cast=float)
    if manual is not None and not low <= manual <= high:  # NaN fails too
        st.warning(
            f"Ignored the link's cut={escape_markdown(manual)}: this scorer's scores run from "
            f"{low:.3g} to {high:.3g}; using the automatic threshold."
        )
        manual = st.session_state["outliers_cut"] = None
    threshold = result.threshold
    if not st.toggle(
        "Automatic threshold",
        value=manual is None,
        key=f"outliers_cut_auto_{method}",
        help="Chosen from this dataset's own scores: "
        + escape_markdown(result.params.get("rule", "")),
    ):
        threshold = st.slider(
            "Flag scores above",
            low,
            max(high, low + 1e-6),
            float(manual if manual is not None else np.clip(result.threshold, low, high)),
            format="%.3f",
            key=f"outliers_cut_slider_{method}",
        )
        st.session_state["outliers_cut"] = threshold
    else:
        st.session_state["outliers_cut"] = None
    flagged_mask = result.scores > threshold
    flagged_everywhere = int(flagged_mask.sum())
    flagged_mask &= members
    flagged = int(flagged_mask.sum())
    st.plotly_chart(
        score_histogram(result.scores, threshold, x_title=f"{method} score"),
        key="outliers_histogram",
        config={"displayModeBar": False},
    )
    rule = (
        escape_markdown(result.params.get("rule", "user threshold"))
        if st.session_state["outliers_cut"] is None
        else "your threshold"
    )
    scope = (
        f"{len(samples):,} {ROWS}"
        if collection is None
        else f"{int(members.sum()):,} members ({flagged_everywhere:,} in the whole dataset)"
    )
    st.caption(
        f"**{flagged:,}** of {scope} flagged (score > {threshold:.3g}; "
        f"{rule}). Scores: {escape_markdown(result.score_range)}, higher = more unusual. Each row "
        "shows the sample, then its nearest neighbours: a true outlier's neighbours are far and "
        "unlike it."
    )
    shown = order[: max(flagged, ITEMS_PER_PAGE)] if flagged else order[: ITEMS_PER_PAGE * 3]
    if not flagged:
        who = "no sample" if collection is None else "no member of the collection"
        st.info(
            f"Nothing crosses the threshold: {who} is more unusual than this dataset's own "
            "spread explains. The highest-scoring samples are shown anyway; move the threshold "
            "to flag them."
        )
    actions = st.container(horizontal=True)
    with actions:
        widgets.download_csv(
            "Export CSV",
            lambda: rows_table(
                samples, order, outlier_score=result.scores[order], flagged=flagged_mask[order]
            ),
            file_name=f"{ds.name}-outliers-{method}.csv",
            key="outliers_export",
        )
    with actions:
        show_on_map(np.flatnonzero(flagged_mask), "outliers_map")
    with actions:
        keep(
            np.flatnonzero(flagged_mask),
            "outliers",
            {"section": "outliers", "method": method, "threshold": float(threshold)},
        )
    for i in paged(len(shown), "outliers_page"):
        row = int(shown[i])
        evidence_row(
            row,
            f"#{i + 1} · score {result.scores[row]:.3g}"
            + (" · flagged" if flagged_mask[row] else ""),
            indices[row],
            [f"d = {d:.3f}" for d in distances[row]],
        )

elif section == "duplicates":
    manual = ui.url_state("dup", "outliers_dup", None, cast=float)
    if manual is not None and not 0.0 <= manual <= MAX_DUPLICATE_DISTANCE:  # NaN fails too
        st.warning(
            f"Ignored the link's dup={manual}: a threshold is a cosine distance from 0 to "
            f"{MAX_DUPLICATE_DISTANCE}; using the automatic one."
        )
        manual = st.session_state["outliers_dup"] = None
    automatic = loaders.duplicates(ds, dataset_key, embedding, version, None)
    threshold = None
    if not st.toggle(
        "Automatic threshold",
        value=manual is None,
        key="outliers_dup_auto",
        help="Set from this dataset's own nearest-neighbour distances: pairs far closer than usual.",
    ):
        threshold = st.slider(
            "Near-duplicate if cosine distance ≤",
            0.0,
            MAX_DUPLICATE_DISTANCE,
            float(
                manual if manual is not None else min(automatic.threshold, MAX_DUPLICATE_DISTANCE)
            ),
            step=0.001,
            format="%.3f",
            key="outliers_dup_slider",
            help="0 = identical direction.",
        )
    st.session_state["outliers_dup"] = threshold
    result = (
        automatic
        if threshold is None
        else loaders.duplicates(ds, dataset_key, embedding, version, threshold)
    )
    st.caption(
        f"Near-duplicate: cosine distance ≤ {result.threshold:.4f}"
        + (" (automatic)" if threshold is None else "")
        + "."
    )
    groups = result.groups()
    pair_rows = result.pairs if len(result.pairs) else np.empty((0, 2), dtype=np.int64)
    pair_kept = members[pair_rows[:, 0]] | members[pair_rows[:, 1]]
    if collection is not None:  # the pairs and groups that hold a member, the rest of them too
        groups = [g for g in groups if members[g].any()]
    leaks = int(result.cross_split[pair_kept].sum())
    exact = loaders.exact_duplicates(ds, dataset_key, stamp)
    cols = st.columns(4)
    cols[0].metric("Pairs", f"{int(pair_kept.sum()):,}")
    cols[1].metric("Groups", f"{len(groups):,}")
    cols[2].metric("Pairs across splits (leakage)", f"{leaks:,}")
    cols[3].metric(
        "Byte-identical files",
        f"{len(exact):,}",
        help=f"{exact['group'].nunique() if len(exact) else 0:,} groups of files with the same "
        "bytes (same SHA-256), whatever their names.",
    )
    has_splits = (
        "split" in samples and samples["split"].notna().any() and "object_id" not in samples
    )
    if has_splits:
        with st.expander("Leak-free split: keep every group of copies in one split"):
            policy = st.segmented_control(
                "Move each leaking group to",
                ["priority", "majority", "balanced"],
                format_func={
                    "priority": "the largest split it touches (train)",
                    "majority": "where most of it is",
                    "balanced": "keep split sizes",
                }.get,
                default="priority",
                required=True,
                key="outliers_split_policy",
            )
            plan, moves, counts = loaders.leak_free(
                ds, dataset_key, stamp, embedding, version, policy, threshold
            )
            st.caption(
                f"{counts['leaking_groups']:,} groups of exact or near copies cross splits "
                f"({counts['leaking_samples']:,} samples); the leak-free assignment moves "
                f"{counts['moved']:,} of them, whole groups only, and nothing else."
            )
            if len(moves):
                st.dataframe(moves, hide_index=True)
            actions = st.container(horizontal=True)
            with actions:
                widgets.download_csv(
                    "Download the leak-free split",
                    plan,
                    file_name=f"{ds.name}-leak-free-split.csv",
                    key="duplicates_split_export",
                )
            column = actions.text_input(
                "Column name",
                "clean_split",
                key="outliers_split_column",
                label_visibility="collapsed",
            )
            if actions.button("Save as a new column", key="outliers_split_save"):
                from shoal.store import StoreError
                from shoal.workflows.splits import leak_free, save_split_column

                try:
                    save_split_column(
                        ds, leak_free(ds, embedding, policy=policy, threshold=threshold), column
                    )
                    st.success(
                        f"Saved as column {code_span(column)}: colour the Map or compare by it."
                    )
                except StoreError as error:
                    st.error(visitor_error(error))
    only_leaks = st.toggle(
        "Only groups that leak across splits", key="outliers_only_leaks", value=leaks > 0
    )
    if only_leaks:
        leaked = set(result.leaked_samples().tolist())
        groups = [g for g in groups if leaked.intersection(g.tolist())]
    pair_rows = pair_rows[pair_kept]
    pairs = pd.DataFrame(
        {
            "sample_a": sample_ids[pair_rows[:, 0]],
            "sample_b": sample_ids[pair_rows[:, 1]],
            "distance": np.asarray(result.distances)[pair_kept],
            "cross_split": np.asarray(result.cross_split)[pair_kept],
        }
    )
    for column in ("split", "label"):
        if column in samples and len(pair_rows):
            pairs[f"{column}_a"] = samples[column].to_numpy()[pair_rows[:, 0]]
            pairs[f"{column}_b"] = samples[column].to_numpy()[pair_rows[:, 1]]
    actions = st.container(horizontal=True)
    with actions:
        widgets.download_csv(
            "Export pairs CSV",
            pairs,
            file_name=f"{ds.name}-duplicates.csv",
            key="duplicates_export",
        )
    with actions:
        show_on_map(np.unique(pair_rows.ravel()), "duplicates_map")
    with actions:
        keep(
            np.unique(np.concatenate(groups)) if groups else np.empty(0, int),
            "duplicates",
            {"section": "duplicates", "threshold": result.threshold, "only_leaks": only_leaks},
        )
    if not groups:
        st.info(
            "No near-duplicates at this threshold."
            if not only_leaks
            else "No duplicate crosses a split boundary."
        )
    for i in paged(len(groups), "duplicates_page"):
        group = groups[i]
        group_splits = (
            sorted({str(s) for s in samples["split"].to_numpy()[group]})
            if "split" in samples
            else []
        )
        with st.container(border=True):
            st.caption(
                f"Group {i + 1}: {len(group)} samples"
                + (
                    f" · splits: {escape_markdown(', '.join(group_splits))}"
                    if len(group_splits) > 1
                    else ""
                )
            )
            widgets.gallery(
                ds, samples, group, key=f"duplicates_group_{i}", per_page=12, min_width=120
            )

else:
    if "label" not in samples or samples["label"].isna().all():
        st.info("This dataset has no labels, so there is nothing to check them against.")
        ui.stop()
    result = loaders.mislabels(ds, dataset_key, embedding, version)
    st.caption(
        f"**{result.n_flagged:,}** of {len(samples):,} {ROWS} flagged: none of their labelled "
        "neighbours carries their label (score = 1 − neighbours' support for the given label, "
        "higher = more likely wrong; the suggestion is the neighbours' strongest class)."
    )
    # Positions in the flagged list (its neighbour arrays are aligned with it).
    positions = np.flatnonzero(members[result.flagged_indices])
    flagged = result.flagged_indices[positions]
    if collection is not None:
        st.caption(f"{len(flagged):,} of them in the collection.")
    table = rows_table(
        samples,
        flagged,
        mislabel_score=result.scores[flagged],
        suggested_label=result.suggested_labels[flagged],
        suggested_support=result.suggested_posterior[flagged],
    )
    actions = st.container(horizontal=True)
    with actions:
        widgets.download_csv(
            "Export CSV", table, file_name=f"{ds.name}-mislabels.csv", key="mislabels_export"
        )
    with actions:
        show_on_map(flagged, "mislabels_map")
    with actions:
        keep(flagged, "mislabels", {"section": "mislabels"})
    if not len(flagged):
        st.success("No label disagrees with its neighbourhood.")
    for i in paged(len(flagged), "mislabels_page"):
        row, position = int(flagged[i]), int(positions[i])
        evidence_row(
            row,
            f"labelled {samples['label'].iloc[row]} → {result.suggested_labels[row]}? (score {result.scores[row]:.2f})",
            result.neighbor_indices[position],
            [
                f"{label} · d = {d:.3f}"
                for label, d in zip(
                    result.neighbor_labels[position],
                    result.neighbor_distances[position],
                    strict=False,
                )
            ],
        )
