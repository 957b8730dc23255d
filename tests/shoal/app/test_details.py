"""The Map's hover cards over HTTP (shoal.app.details), without Streamlit: the real routes in a
Starlette app, on the real detection fixture (box crops) and an embeddings-only dataset."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.testclient import TestClient

from shoal.app.details import card_query, card_urls, routes
from shoal.store import Workspace
from shoal.store.collections import Collections


def _client(workspace: Workspace) -> TestClient:
    return TestClient(Starlette(routes=routes(workspace.root)))


def _get(client: TestClient, path: str, **query: Any) -> Any:
    return client.get(path, params={k: str(v) for k, v in query.items()})


def test_a_box_card_names_the_box_and_its_thumbnail_is_the_crop(street: Any) -> None:
    workspace = street[0]
    ds = workspace.open("street")
    embedding = ds.default_embedding(level="object")
    objects = ds.objects()
    stored_ids = ds.load_embeddings(embedding).ids.astype(str)
    client = _client(workspace)
    row = 7
    card = _get(client, "/_shoal/point", ds="street", emb=embedding, i=row).json()
    assert card["row"] == row and card["id"] == stored_ids[row]
    box = objects.set_index("object_id").loc[stored_ids[row]]
    assert f"category: {box['category']}" in card["lines"]
    assert card["thumbnail"] is True
    response = _get(client, "/_shoal/thumb", ds="street", emb=embedding, i=row)
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).format == "JPEG"

    # A collection's map numbers its members only: point 0 is the first member.
    members = [stored_ids[5], stored_ids[2]]
    Collections(ds).create("pair", members, level="object")
    card = _get(client, "/_shoal/point", ds="street", emb=embedding, i=0, coll="pair").json()
    assert card["id"] == stored_ids[2] and card["row"] == 2
    assert (
        _get(client, "/_shoal/point", ds="street", emb=embedding, i=2, coll="pair").status_code
        == 404
    )


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"ds": "nope", "emb": "user", "i": 0}, "no dataset"),
        ({"ds": "plain", "emb": "other", "i": 0}, "no embedding set"),
        ({"ds": "plain", "emb": "user", "i": 3}, "not on this map"),
        ({"ds": "plain", "emb": "user", "i": -1}, "not on this map"),
        ({"ds": "plain", "emb": "user", "i": "x"}, "integer i"),
        ({"ds": "../etc", "emb": "user", "i": 0}, ""),
        ({"ds": "plain", "emb": "user", "i": 0, "coll": "missing"}, "missing"),
    ],
)
def test_bad_requests_are_404_with_the_reason(
    workspace: Workspace, tmp_path: Any, query: dict[str, Any], message: str
) -> None:
    _plain(workspace, tmp_path)
    response = _get(_client(workspace), "/_shoal/point", **query)
    assert response.status_code == 404 and message in response.json()["error"]


def test_a_sample_without_an_image_has_lines_and_no_thumbnail(
    workspace: Workspace, tmp_path: Any
) -> None:
    _plain(workspace, tmp_path)
    client = _client(workspace)
    card = _get(client, "/_shoal/point", ds="plain", emb="user", i=1).json()
    assert card == {
        "row": 1,
        "id": "b",
        "title": "cat · train",
        "lines": ["sample_id: b", "label: cat", "split: train"],
        "thumbnail": False,
    }
    assert _get(client, "/_shoal/thumb", ds="plain", emb="user", i=1).status_code == 404


def test_the_page_builds_the_urls_under_the_base_path() -> None:
    query = card_query("my set", "user", collection="odd & even")
    assert query == "ds=my+set&emb=user&coll=odd+%26+even"
    assert card_urls("", query)["point"] == f"/_shoal/point?{query}"
    assert card_urls("/shoal/", query)["thumb"] == f"/shoal/_shoal/thumb?{query}"


def _plain(workspace: Workspace, tmp_path: Any) -> None:
    """Dataset 'plain': three embeddings-only samples (set 'user')."""
    from shoal.ingest.embeddings import create_from_embeddings

    frame = pd.DataFrame(
        {"sample_id": ["a", "b", "c"], "label": ["dog", "cat", "dog"], "split": "train"}
    )
    frame["embedding"] = list(np.eye(3, dtype=np.float32))
    frame.to_parquet(tmp_path / "plain.parquet")
    create_from_embeddings(workspace, "plain", tmp_path / "plain.parquet")
