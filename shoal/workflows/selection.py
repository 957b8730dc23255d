"""Pick what to label next, on a stored embedding set, with subsets given as filters.

Three questions users ask, one call (:func:`select`), the kernels in :mod:`shoal.analysis.selection`:

- *cover the dataset*: ``select(ds, 100)``; with ``covered="split=train"`` what is already
  labelled counts as covered, so the picks go where it is not;
- *cover what a reference lacks*: ``select(ds, 100, novel_vs="split=train")``: the current
  samples (``where``, default: everything outside the reference) farthest from the reference
  and from each other (k-center greedy seeded with the reference);
- *representatives of a subset*: ``select(ds, 10, where="label=cat")``.

Example:
    >>> from shoal.store import Workspace                                  # doctest: +SKIP
    >>> picked = select(Workspace().open("pets"), 50, novel_vs="split=train")  # doctest: +SKIP
    >>> picked.to_frame().head()                                           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from shoal.analysis.selection import Selection, select_samples
from shoal.store import Dataset
from shoal.workflows import analyse
from shoal.workflows.collections import collection_masks
from shoal.workflows.filters import FilterError, describe_filter, mentions_collection, parse_filter


@dataclass(frozen=True)
class Picked:
    """A selection (rows of the embedding set) with the set's sample ids and what was asked."""

    result: Selection
    sample_ids: np.ndarray
    embedding: str
    question: dict[str, Any]
    #: split and label of each pick, in pick order (the columns the set's table has)
    picked_metadata: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        """One row per pick, in pick order: the kernel's columns (pick, sample_id,
        pick_distance, radius, mean_distance, represented), then split and label."""
        frame = self.result.to_frame(sample_ids=self.sample_ids)
        for column in self.picked_metadata.columns:
            frame[column] = self.picked_metadata[column].to_numpy()
        return frame

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.result.to_dict(sample_ids=self.sample_ids),
            "embedding": self.embedding,
            **self.question,
        }


def select(
    ds: Dataset,
    n_select: int,
    embedding: str | None = None,
    *,
    where: str | None = None,
    covered: str | None = None,
    novel_vs: str | None = None,
    method: str | None = None,
    random_state: int = 0,
) -> Picked:
    """``n_select`` samples of ``ds`` that cover the candidates ``where`` selects (default: all,
    or everything outside ``novel_vs``), counting the rows ``covered`` selects as covered
    already. ``novel_vs`` is a reference: it counts as covered and the method is k-center, so
    the picks are the most novel and mutually distinct. ``method``: "k-means" (default; typical
    samples of every region) or "k-center" (the farthest first). Filters use the language of
    :func:`shoal.workflows.filters.parse_filter`."""
    if n_select < 1:
        raise ValueError(f"pick at least one sample, not {n_select}")
    embeddings = ds.load_embeddings(embedding)
    table = analyse.row_metadata(ds, embeddings)
    collections = (
        collection_masks(ds, table) if mentions_collection(where, covered, novel_vs) else {}
    )
    reference = _rows(novel_vs, table, "the reference", collections)
    candidates = _rows(where, table, "the candidates", collections)
    if candidates is None and reference is not None:
        candidates = np.setdiff1d(np.arange(len(table)), reference)
    seeds = _rows(covered, table, "the covered samples", collections)
    if reference is not None:
        seeds = reference if seeds is None else np.union1d(seeds, reference)
        method = method or "k-center"
    if candidates is not None and len(candidates) == 0:
        raise FilterError(f"no samples to pick from: {describe_filter(where)} selects none")
    result = select_samples(
        embeddings.vectors,
        n_select,
        method=method or "k-means",
        candidates=candidates,
        already_selected=seeds,
        random_state=random_state,
    )
    question = {
        "where": where,
        "covered": covered,
        "novel_vs": novel_vs,
        "n_requested": n_select,
    }
    shown = [c for c in ("split", "label") if c in table.columns]
    metadata = table.iloc[result.selected][shown].reset_index(drop=True)
    return Picked(result, embeddings.ids.astype(str), embeddings.info.name, question, metadata)


def _rows(
    expr: str | None, table: pd.DataFrame, what: str, collections: Mapping[str, np.ndarray]
) -> np.ndarray | None:
    if not expr:
        return None
    try:
        mask = parse_filter(expr, table, collections=collections)
    except FilterError as error:
        raise FilterError(f"{what} ({expr}): {error}") from error
    return np.flatnonzero(mask)
