"""Collections at work: which rows a collection covers, and "more like these".

:func:`member_mask` turns a collection into a boolean mask over any table of rows (samples, or
the boxes of a detection dataset), which is how the app opens a collection as a filter on every
page. :func:`grow` grows a collection by similarity, in its own dataset or in another one.

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

from collections.abc import Mapping

import numpy as np
import pandas as pd

from shoal.analysis.blocks import BLOCK_ROWS
from shoal.store import Dataset, StoreError
from shoal.store.collections import Collection, Collections
from shoal.workflows import analyse

#: Neighbours searched per member by default: enough for a long list, cheap for big collections.
NEIGHBOURS_PER_MEMBER = 20


def member_mask(
    collection: Collection, rows: pd.DataFrame, *, objects: pd.DataFrame | None = None
) -> np.ndarray:
    """Boolean mask (len(rows),): the rows that belong to ``collection``.

    ``rows`` is a table with a ``sample_id`` column (and ``object_id`` at the object level).
    A collection of samples covers those samples, or every box of them when ``rows`` are
    boxes; a collection of boxes covers those boxes, or the images holding one of them when
    ``rows`` are samples (then ``objects``, the dataset's boxes table, is needed).

    Example:
        >>> shelf = Collection("pair", ("a", "c"))
        >>> member_mask(shelf, pd.DataFrame({"sample_id": ["a", "b", "c"]})).tolist()
        [True, False, True]
    """
    members = pd.Index(collection.ids, dtype=object)
    if collection.level == "object":
        if "object_id" in rows.columns:
            return rows["object_id"].astype(str).isin(members).to_numpy()
        if objects is None:
            raise StoreError(
                f"collection {collection.name!r} holds boxes: give the dataset's objects table "
                "to see which images hold them"
            )
        holding = objects.loc[objects["object_id"].astype(str).isin(members), "sample_id"]
        members = pd.Index(holding.astype(str).unique(), dtype=object)
    return rows["sample_id"].astype(str).isin(members).to_numpy()


def dataset_member_mask(ds: Dataset, collection: Collection, rows: pd.DataFrame) -> np.ndarray:
    """:func:`member_mask` over ``rows`` of ``ds``, reading its objects table only when a box
    collection is matched against image rows."""
    objects = ds.objects() if collection.level == "object" and "object_id" not in rows else None
    return member_mask(collection, rows, objects=objects)


def collection_masks(ds: Dataset, rows: pd.DataFrame) -> Mapping[str, np.ndarray]:
    """Every collection of ``ds`` as a :func:`member_mask` over ``rows``, by name (for the
    ``collection=NAME`` clause of :func:`shoal.workflows.filters.parse_filter`)."""
    collections = Collections(ds).list()
    objects = ds.objects() if any(c.level == "object" for c in collections) else None
    return {c.name: member_mask(c, rows, objects=objects) for c in collections}


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
