"""Shoal's server: the web app (app.py) behind the access gate on every route.

``shoal serve`` runs ``streamlit run asgi.py``: Streamlit finds the ``app`` below and serves it
as an ASGI application whose outermost middleware is :class:`shoal.app.gate.AccessGate`, so
uploads, media, the websocket, the Map's hover cards (:mod:`shoal.app.details`) and the pages
themselves are only reachable after the gate (a
token, or OIDC sign-in plus the allow-list; see docs/team.md). The gate's policy is read once,
at start: change the token or the settings, then restart the server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import streamlit as st
from starlette.middleware import Middleware
from streamlit import config

from shoal.app import details
from shoal.app.access import AllowList
from shoal.app.gate import AccessGate, SignIn, policy_from


def _read_user(cookies: Mapping[str, str]) -> Mapping[str, Any] | None:
    """The provider's claims from Streamlit's signed user cookie (None when not signed in)."""
    from streamlit.auth_util import get_cookie_with_chunks
    from streamlit.web.server.server_util import get_cookie_secret
    from streamlit.web.server.starlette.starlette_app_utils import decode_signed_value
    from streamlit.web.server.starlette.starlette_server_config import USER_COOKIE_NAME

    secret = get_cookie_secret()

    def single(name: str) -> bytes | None:
        raw = cookies.get(name)
        return None if raw is None else decode_signed_value(secret, name, raw.encode("latin-1"))

    decoded = get_cookie_with_chunks(single, USER_COOKIE_NAME)
    if not decoded:
        return None
    claims = json.loads(decoded)
    return claims if claims.get("is_logged_in") is True else None


def _login_url() -> str:
    from streamlit.user_info import generate_login_redirect_url

    return generate_login_redirect_url("default")


def _sign_in() -> SignIn | None:
    """The OIDC settings when .streamlit/secrets.toml has an ``[auth]`` section."""
    if not (st.secrets.load_if_toml_exists() and "auth" in st.secrets):
        return None
    return SignIn(read_user=_read_user, login_url=_login_url, allow=AllowList.from_env(os.environ))


app = st.App(
    Path(__file__).with_name("app.py"),
    routes=details.routes(),  # the Map's hover cards
    middleware=[
        Middleware(
            AccessGate,
            policy=policy_from(os.environ, sign_in=_sign_in),
            base_path=str(config.get_option("server.baseUrlPath") or ""),
        )
    ],
)
