"""Compare two subsets of a stored dataset, chosen by filters: train vs test, labelled vs production.

The kernel is :func:`shoal.analysis.compare.compare`; this workflow selects the two sides with
:mod:`shoal.workflows.filters`, reads their vectors from the store and caches the result under the
contract of :mod:`shoal.workflows.cache` (keyed by the embedding version, both filters, digests of
the selected ids and every parameter).

Example:
    >>> computed = compare_dataset(ds, reference="split=train", current="split=test")  # doctest: +SKIP
    >>> print(computed.result.verdict())                                               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from shoal.analysis.compare import ComparisonResult, compare
from shoal.analysis.rows import RowSubset
from shoal.analysis.two_sample import DEFAULT_N_PERMUTATIONS
from shoal.store import Dataset, StoreError, digest_values
from shoal.workflows.analyse import row_metadata
from shoal.workflows.cache import Computed, cached
from shoal.workflows.collections import collection_masks
from shoal.workflows.filters import FilterError, describe_filter, mentions_collection, parse_filter


def compare_dataset(
    ds: Dataset,
    *,
    reference: str | Mapping[str, Any],
    current: str | Mapping[str, Any] | None = None,
    embedding: str | None = None,
    method: str = "auto",
    alpha: float = 0.05,
    n_permutations: int = DEFAULT_N_PERMUTATIONS,
    random_state: int = 0,
    recompute: bool = False,
    **options: Any,
) -> Computed[ComparisonResult]:
    """Compare two subsets of a stored dataset, selected by filters (see ``parse_filter``).

    ``current=None`` means every sample not in ``reference``. The subsets must not overlap.
    ``options`` go to ``compare`` (max_samples, n_components, novelty_neighbors, novelty_alpha,
    n_clusters). The result carries both sides' sample ids; the Computed's rows are the current
    side's samples. With an object-level ``embedding`` the two sides are sets of boxes, filtered
    on the boxes' columns and their image's (``category=person & split=train``), and the ids are
    object ids.
    """
    embeddings = ds.load_embeddings(embedding)
    boxes = embeddings.info.level == "object"
    unit = embeddings.info.unit
    if boxes:
        # One row per vector: the box's columns and its image's (split, metadata).
        rows = row_metadata(ds, embeddings)
        id_column = "object_id"
    else:
        rows, id_column = ds.samples(), "sample_id"
    collections = collection_masks(ds, rows) if mentions_collection(reference, current) else {}
    reference_mask = parse_filter(reference, rows, collections=collections)
    current_mask = (
        ~reference_mask if current is None else parse_filter(current, rows, collections=collections)
    )
    overlap = int(np.count_nonzero(reference_mask & current_mask))
    if overlap:
        raise FilterError(
            f"reference {describe_filter(reference)} and current {describe_filter(current)} share "
            f"{overlap} {unit}; a comparison needs two disjoint subsets"
        )
    for what, mask, expr in (
        ("reference", reference_mask, reference),
        ("current", current_mask, current),
    ):
        if mask.sum() < 2:
            raise FilterError(
                f"{what} filter {describe_filter(expr)} selects {int(mask.sum())} {unit}; need at least 2"
            )

    row_ids = rows[id_column].astype(str).to_numpy()
    reference_ids, current_ids = row_ids[reference_mask], row_ids[current_mask]
    if boxes:  # the table is aligned to the vectors
        reference_rows, current_rows = np.flatnonzero(reference_mask), np.flatnonzero(current_mask)
    else:
        position = pd.Index(embeddings.ids.astype(str))
        reference_rows = position.get_indexer(reference_ids)
        current_rows = position.get_indexer(current_ids)
        missing = np.concatenate([reference_ids[reference_rows < 0], current_ids[current_rows < 0]])
        if len(missing):
            raise StoreError(
                f"{len(missing)} selected samples (e.g. {missing[0]!r}) have no vector in embedding set "
                f"{embeddings.info.name!r}; re-run `shoal embed {ds.name}` to embed them"
            )
    reference_text = describe_filter(reference)
    current_text = describe_filter(current) if current is not None else f"not ({reference_text})"
    params = {
        "method": method,
        "alpha": alpha,
        "n_permutations": n_permutations,
        "random_state": random_state,
        **options,
    }

    def compute() -> ComparisonResult:
        # Views, not copies: at 1M x 1280 a train side of 800k rows would be 4 GB in memory.
        reference_vectors: Any = RowSubset(embeddings.vectors, reference_rows)
        current_vectors: Any = RowSubset(embeddings.vectors, current_rows)
        result = compare(reference_vectors, current_vectors, **params)
        return replace(
            result,
            reference_ids=reference_ids,
            current_ids=current_ids,
            params={
                **result.params,
                "reference": reference_text,
                "current": current_text,
                "embedding": embeddings.info.name,
                "embedding_version": embeddings.info.version,
            },
        )

    key_params = {
        **params,
        "reference": reference_text,
        "current": current_text,
        "reference_ids": digest_values(reference_ids),
        "current_ids": digest_values(current_ids),
    }
    return cached(
        ds,
        embeddings,
        "compare",
        key_params,
        ComparisonResult,
        compute,
        recompute=recompute,
        sample_ids=current_ids,
    )
