"""The Map's WebGL scatter: a Streamlit component (components v2) around regl-scatterplot.

The browser code is one committed bundle, ``shoal/app/static/map.js`` (built from
``shoal/app/frontend/map`` with ``npm run build``; no CDN, nothing fetched at run time). It is
registered inline, so no package manifest is needed; Streamlit turns it into a module URL once
per session. Data goes in as one binary message (``shoal.app.scatter.encode_map_payload``); a
drawn box, lasso or clicked point comes back as the ``selection`` trigger:
``{"kind": "box" | "lasso" | "point" | "none", "count", "rows": base64 uint32, "polygon"}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

import shoal.app

BUNDLE = Path(shoal.app.__file__).parent / "static" / "map.js"
COMPONENT_NAME = "shoal_map"


@st.cache_resource(show_spinner=False)
def _bundle() -> str:
    return BUNDLE.read_text(encoding="utf-8")


def _renderer() -> Any:
    return st.components.v2.component(COMPONENT_NAME, js=_bundle(), isolate_styles=False)


def scatter_map(payload: bytes, *, key: str) -> dict[str, Any] | None:
    """Mount the map with ``payload`` (bytes); the selection event of this run, or None.

    Keep ``key`` stable: the browser then keeps its canvas and redraws only when the payload's
    ``points_id`` changes, and an unchanged payload is not sent again (Streamlit's message cache).
    """
    result = _renderer()(key=key, data=payload, height="content", on_selection_change=lambda: None)
    event = getattr(result, "selection", None)
    return event if isinstance(event, dict) else None
