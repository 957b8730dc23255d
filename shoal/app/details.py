"""The Map's hover card: what one point is, looked up by its row when the pointer rests on it.

The map sends the browser 9 bytes a point (coordinates and a colour code) and nothing else
(:mod:`shoal.app.scatter`). When the pointer rests on a point, the browser asks the app server
for that point's card: ``GET /_shoal/point?ds=NAME&emb=SET&i=INDEX[&coll=COLLECTION]`` answers
a few metadata lines as JSON, ``GET /_shoal/thumb?...`` the thumbnail (a box crop at the object
level) as JPEG. ``INDEX`` counts the points drawn: every row of the set, or the members of
``coll`` when the Map shows a collection. The routes are mounted beside the app in asgi.py, so
the access gate guards them like every page.

Each server process keeps the row tables of the last :data:`TABLES_KEPT` embedding sets (keyed
by the dataset's stamp, so a changed table is read again): a card costs a lookup, not a
Parquet read (1M rows: about 0.5 s to read, then microseconds).

Example:
    >>> card_query("street", "detector", collection=None)
    'ds=street&emb=detector'
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pandas as pd

from shoal.app.tables import describe_rows, tile_caption
from shoal.app.thumbnails import box_thumbnail, object_box, thumbnail
from shoal.store import Dataset, StoreError, Workspace

POINT_PATH = "/_shoal/point"
THUMB_PATH = "/_shoal/thumb"
#: Metadata lines on a card.
CARD_LINES = 6
#: Row tables kept per process (a 1M-row table is about 150 MB).
TABLES_KEPT = 2


class CardError(LookupError):
    """No such point: unknown dataset, embedding set or collection, or an index out of range."""


def card_query(dataset: str, embedding: str, *, collection: str | None) -> str:
    """The query string naming a map's points (the browser appends ``&i=INDEX``)."""
    query = {"ds": dataset, "emb": embedding}
    if collection:
        query["coll"] = collection
    return urlencode(query)


def card_urls(base_path: str, query: str) -> dict[str, str]:
    """The two routes' URLs for a map (``base_path``: Streamlit's server.baseUrlPath)."""
    base = "/" + base_path.strip("/") if base_path.strip("/") else ""
    return {"point": f"{base}{POINT_PATH}?{query}", "thumb": f"{base}{THUMB_PATH}?{query}"}


@lru_cache(maxsize=TABLES_KEPT)
def _rows(root: str, dataset: str, embedding: str, stamp: str) -> pd.DataFrame:
    from shoal.workflows.analyse import row_metadata

    ds = Workspace(root).open(dataset)
    return row_metadata(ds, ds.load_embeddings(embedding))


@lru_cache(maxsize=8)
def _members(
    root: str, dataset: str, embedding: str, stamp: str, name: str, updated_at: str
) -> np.ndarray:
    from shoal.store.collections import Collections
    from shoal.workflows.collections import dataset_member_mask

    ds = Workspace(root).open(dataset)
    collection = Collections(ds).get(name)
    return np.flatnonzero(
        dataset_member_mask(ds, collection, _rows(root, dataset, embedding, stamp))
    )


def locate(
    workspace: Workspace, dataset: str, embedding: str, index: int, collection: str | None = None
) -> tuple[Dataset, pd.DataFrame, int]:
    """(dataset, its row table for ``embedding``, the row) of the map's point ``index``."""
    try:
        ds = workspace.open(dataset)
        if embedding not in ds.embedding_names():
            raise CardError(f"dataset {dataset!r} has no embedding set {embedding!r}")
        stamp = ds.stamp()
        table = _rows(str(workspace.root), dataset, embedding, stamp)
        rows: Any = range(len(table))
        if collection:
            from shoal.store.collections import Collections

            updated_at = Collections(ds).get(collection).updated_at
            rows = _members(str(workspace.root), dataset, embedding, stamp, collection, updated_at)
    except (StoreError, ValueError) as error:  # unknown dataset or collection, bad name
        raise CardError(str(error)) from error
    if not 0 <= index < len(rows):
        raise CardError(f"point {index} is not on this map ({len(rows):,} points)")
    return ds, table, int(rows[index])


def point_card(
    workspace: Workspace, dataset: str, embedding: str, index: int, collection: str | None = None
) -> dict[str, Any]:
    """The card of point ``index``: its row, id, title line, metadata lines and whether it has a
    thumbnail (JSON-ready)."""
    ds, table, row = locate(workspace, dataset, embedding, index, collection)
    caption = tile_caption(table, row)
    return {
        "row": row,
        "id": caption[-1],
        "title": caption[0] if len(caption) > 1 else "",
        "lines": describe_rows(table, row, limit=CARD_LINES),
        "thumbnail": _image_path(ds, table, row) is not None,
    }


def point_thumbnail(
    workspace: Workspace, dataset: str, embedding: str, index: int, collection: str | None = None
) -> bytes:
    """The JPEG thumbnail of point ``index`` (its box crop for an object); CardError if it has
    no image."""
    ds, table, row = locate(workspace, dataset, embedding, index, collection)
    image = _image_path(ds, table, row)
    if image is None:
        raise CardError(f"point {index} has no image")
    box = object_box(table, row)
    return thumbnail(workspace, image) if box is None else box_thumbnail(workspace, image, box)


def _image_path(ds: Dataset, table: pd.DataFrame, row: int) -> Path | None:
    path = table["path"].iloc[row] if "path" in table else None
    if not ds.has_images or not isinstance(path, str) or not path:
        return None
    return ds.image_file(path)


# --------------------------------------------------------------------------- HTTP


def routes(workspace_root: str | os.PathLike[str] | None = None) -> list[Any]:
    """The two Starlette routes (for ``st.App(routes=...)``), serving the workspace at
    ``workspace_root`` ($SHOAL_WORKSPACE when None, as the pages do)."""
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def workspace() -> Workspace:
        return Workspace(workspace_root or os.environ.get("SHOAL_WORKSPACE") or None)

    def parse(request: Any) -> tuple[str, str, int, str | None]:
        query = request.query_params
        try:
            return query["ds"], query["emb"], int(query["i"]), query.get("coll") or None
        except (KeyError, ValueError) as error:
            raise CardError("give ds, emb and an integer i") from error

    def point(request: Any) -> Any:
        try:
            card = point_card(workspace(), *parse(request))
        except CardError as error:
            return JSONResponse({"error": str(error)}, status_code=404)
        return JSONResponse(card, headers={"Cache-Control": "private, max-age=60"})

    def thumb(request: Any) -> Any:
        try:
            data = point_thumbnail(workspace(), *parse(request))
        except CardError as error:
            return JSONResponse({"error": str(error)}, status_code=404)
        return Response(
            data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
        )

    return [Route(POINT_PATH, point, methods=["GET"]), Route(THUMB_PATH, thumb, methods=["GET"])]
