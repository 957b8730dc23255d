"""Grow a collection by similarity: "more like these", in its own dataset or in another one.

A collection is often several looks of one problem (night shots from three cameras), so the
candidates are ranked by their distance to the *nearest* member, not to the members' mean: each
member's nearest neighbours are searched, and every candidate keeps its smallest distance. The
other dataset (say an unlabelled production pool) must hold embeddings of the same model, or
distances between the two would mean nothing.

Example:
    >>> from shoal.store import Workspace                                  # doctest: +SKIP
    >>> ws = Workspace()                                                   # doctest: +SKIP
    >>> more = grow(ws.open("pets"), "blurry", target=ws.open("pool"), max_distance=0.2)  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.blocks import BLOCK_ROWS
from shoal.store import Dataset, StoreError
from shoal.store.collections import Collections
from shoal.workflows import analyse

#: Neighbours searched per member by default: enough for a long list, cheap for big collections.
NEIGHBOURS_PER_MEMBER = 20


def grow(
    ds: Dataset,
    collection: str,
    *,
    target: Dataset | None = None,
    embedding: str | None = None,
    target_embedding: str | None = None,
    k: int = 50,
    max_distance: float | None = None,
    per_member: int = NEIGHBOURS_PER_MEMBER,
) -> pd.DataFrame:
    """Up to ``k`` samples of ``target`` (default: ``ds`` itself, members left out) nearest to
    any member of ``collection``, nearest first, within ``max_distance`` (cosine) if given.

    Columns: sample_id, distance (to the nearest member), nearest_member, then the target's
    split and label. Refused when the two embedding sets come from different models.
    """
    members = Collections(ds).get(collection)
    if members.level != "sample":
        raise StoreError("growing by similarity works on collections of samples, not of boxes")
    if not members.ids:
        raise StoreError(f"collection {collection!r} is empty: add samples to it first")
    source = ds.load_embeddings(embedding)
    target = target or ds
    same_dataset = target.root == ds.root
    pool = target.load_embeddings(target_embedding if not same_dataset else source.info.name)
    if (source.info.model, source.info.dim) != (pool.info.model, pool.info.dim):
        raise StoreError(
            f"embedding set {source.info.name!r} of {ds.name!r} ({source.info.model}, "
            f"{source.info.dim}-d) and {pool.info.name!r} of {target.name!r} ({pool.info.model}, "
            f"{pool.info.dim}-d) come from different models: embed both with the same model"
        )
    member_rows = analyse.rows_of(source, members.ids)
    index = analyse.neighbor_index(target, pool)
    # In its own dataset a member's nearest neighbours are often other members: search past
    # them (up to 200 more) and drop them, rather than excluding every member from every query.
    each = max(1, min(per_member, k)) + (min(len(member_rows), 200) if same_dataset else 0)
    # Members' vectors a block at a time: a collection may hold a good part of a large set.
    query_rows = np.sort(member_rows)
    found = np.empty((len(query_rows), each), dtype=np.int64)
    distances = np.empty((len(query_rows), each), dtype=np.float32)
    for start in range(0, len(query_rows), BLOCK_ROWS):
        stop = start + BLOCK_ROWS
        found[start:stop], distances[start:stop] = index.search(
            source.vectors[query_rows[start:stop]], each
        )
    member_ids = np.asarray(members.ids, dtype=object)[np.argsort(member_rows)]
    # Every (candidate, distance, member) hit, then each candidate's nearest member: the first
    # hit of the candidate in (distance, query) order. Vectorised: a big collection has
    # hundreds of thousands of hits.
    query = np.repeat(np.arange(len(found)), found.shape[1])
    row, distance = found.ravel(), distances.ravel()
    keep = (row >= 0) & np.isfinite(distance)
    if same_dataset:
        keep &= ~np.isin(row, member_rows)
    if max_distance is not None:
        keep &= distance <= max_distance
    query, row, distance = query[keep], row[keep], distance[keep]
    order = np.lexsort((query, distance, row))
    first = order[np.unique(row[order], return_index=True)[1]]
    ranked = first[np.lexsort((row[first], distance[first]))][:k]
    rows = row[ranked]
    frame = pd.DataFrame(
        {
            "sample_id": pool.ids.astype(str)[rows],
            "distance": distance[ranked].astype(float),
            "nearest_member": member_ids[query[ranked]],
        }
    )
    table = analyse.row_metadata(target, pool)
    for column in ("split", "label"):
        if column in table.columns:
            frame[column] = table[column].to_numpy()[rows]
    return frame
