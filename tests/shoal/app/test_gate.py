"""The server's access gate (shoal.app.gate) as an ASGI middleware, in front of a stand-in app.

The real server behind it is tried in tests/app/test_team_server.py; here each rule of the gate
is checked on its own, through Starlette's test client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from shoal.app.access import AllowList
from shoal.app.gate import (
    COOKIE_MAX_AGE_S,
    COOKIE_NAME,
    MAX_FAILURES,
    AccessGate,
    Closed,
    Open,
    Policy,
    SignIn,
    Token,
    policy_from,
    token_cookie,
    token_cookie_valid,
)

HTML = {"Accept": "text/html"}


async def _ok(request: Any) -> PlainTextResponse:
    return PlainTextResponse("the app")


async def _socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


def _client(policy: Policy, *, base_path: str = "") -> TestClient:
    prefix = "/" + base_path.strip("/") if base_path else ""
    routes = [
        Route(prefix + "/{path:path}", _ok, methods=["GET", "PUT", "POST"]),
        WebSocketRoute(prefix + "/_stcore/stream", _socket),
    ]
    app = Starlette(
        routes=routes[::-1],
        middleware=[
            Middleware(AccessGate, policy=policy, base_path=base_path, failure_delay_s=0.0)
        ],
    )
    return TestClient(app, base_url="http://127.0.0.1", follow_redirects=False)


def test_token_cookies_are_signed_with_the_token_and_expire() -> None:
    value = token_cookie("s3cret", now=1_000_000)
    assert token_cookie_valid("s3cret", value, now=1_000_100)
    assert not token_cookie_valid("other", value, now=1_000_100)  # a new token signs all out
    assert not token_cookie_valid("s3cret", value, now=1_000_000 + COOKIE_MAX_AGE_S + 1)
    issued, signature = value.split(".")
    assert not token_cookie_valid("s3cret", f"{int(issued) + 1}.{signature}", now=1_000_100)
    for junk in (None, "", "x", "1.2.3", "abc.def", f"{issued}.{'0' * 64}"):
        assert not token_cookie_valid("s3cret", junk)


def test_the_policy_is_sign_in_then_token_then_open_and_closed_on_broken_settings() -> None:
    sign_in = SignIn(read_user=lambda c: None, login_url=lambda: "/auth/login", allow=AllowList())
    assert policy_from({"SHOAL_ACCESS_TOKEN": "t"}, sign_in=lambda: sign_in) is sign_in
    assert policy_from({"SHOAL_ACCESS_TOKEN": " t "}, sign_in=lambda: None) == Token("t")
    assert policy_from({"SHOAL_ACCESS_TOKEN": " "}, sign_in=lambda: None) == Open()

    def broken() -> None:
        raise ValueError("bad toml")

    closed = policy_from({"SHOAL_ACCESS_TOKEN": "t"}, sign_in=broken)
    assert isinstance(closed, Closed) and "cannot be read" in closed.reason


def test_without_the_token_every_route_is_refused() -> None:
    client = _client(Token("s3cret"))
    page = client.get("/map?ds=x", headers=HTML)
    assert page.status_code == 401 and 'name="token"' in page.text and "the app" not in page.text
    assert 'value="/map?ds=x"' in page.text  # back to the link after signing in
    for method, path in [
        ("GET", "/static/app.js"),
        ("GET", "/media/a.png"),
        ("PUT", "/_stcore/upload_file/s/f"),
    ]:
        reply = client.request(method, path, content=b"x" * 100)
        assert reply.status_code == 401 and "the app" not in reply.text, path
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/_stcore/stream"):
        pass
    assert refused.value.code == 1008
    assert client.get("/_stcore/health").text == "the app"  # health stays open


def test_the_right_token_sets_a_cookie_that_opens_every_route() -> None:
    client = _client(Token("s3cret"))
    wrong = client.post("/_shoal/login", data={"token": "guess", "next": "/map"})
    assert (
        wrong.status_code == 401 and "not right" in wrong.text and COOKIE_NAME not in client.cookies
    )
    right = client.post("/_shoal/login", data={"token": "s3cret", "next": "/map?ds=x"})
    assert right.status_code == 303 and right.headers["location"] == "/map?ds=x"
    assert (
        "HttpOnly" in right.headers["set-cookie"] and "SameSite=Lax" in right.headers["set-cookie"]
    )
    assert client.get("/media/a.png").text == "the app"
    assert client.put("/_stcore/upload_file/s/f", content=b"x").text == "the app"
    cookie = {"cookie": f"{COOKIE_NAME}={client.cookies[COOKIE_NAME]}"}
    with client.websocket_connect("/_stcore/stream", headers=cookie) as socket:
        assert socket.receive_text() == "hello"
    client.get("/_shoal/logout")
    assert client.get("/media/a.png").status_code == 401


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "https://evil.example", "/\\evil.example", "map"]
)
def test_signing_in_never_redirects_to_another_site(target: str) -> None:
    reply = _client(Token("t")).post("/_shoal/login", data={"token": "t", "next": target})
    assert reply.headers["location"] == "/"


def test_guessing_is_cut_off_after_a_few_wrong_tokens() -> None:
    client = _client(Token("s3cret"))
    for _ in range(MAX_FAILURES):
        assert client.post("/_shoal/login", data={"token": "guess"}).status_code == 401
    assert client.post("/_shoal/login", data={"token": "s3cret"}).status_code == 429


def test_a_huge_login_form_is_not_read_into_memory() -> None:
    reply = _client(Token("t")).post("/_shoal/login", content=b"token=" + b"t" * 100_000)
    assert reply.status_code == 401


def test_a_base_path_is_honoured() -> None:
    client = _client(Token("t"), base_path="shoal")
    page = client.get("/shoal/map", headers=HTML)
    assert page.status_code == 401 and 'action="/shoal/_shoal/login"' in page.text
    right = client.post("/shoal/_shoal/login", data={"token": "t", "next": "/map"})
    assert (
        right.headers["location"] == "/shoal/map" and "Path=/shoal" in right.headers["set-cookie"]
    )
    assert client.get("/shoal/map").text == "the app"


def _sign_in(users: Mapping[str, Mapping[str, Any]]) -> SignIn:
    return SignIn(
        read_user=lambda cookies: users.get(cookies.get("who", "")),
        login_url=lambda: "/auth/login?provider=abc",
        allow=AllowList(domains=frozenset({"example.org"})),
    )


def test_sign_in_admits_only_verified_listed_emails_everywhere() -> None:
    policy = _sign_in(
        {
            "ana": {"email": "ana@example.org", "email_verified": True},
            "eve": {"email": "eve@elsewhere.net", "email_verified": True},
            "unverified": {"email": "bob@example.org", "email_verified": False},
        }
    )
    client = _client(policy)
    page = client.get("/", headers=HTML)
    assert page.status_code == 401 and 'href="/auth/login?provider=abc"' in page.text
    assert client.get("/auth/login?provider=abc").text == "the app"  # the provider's flow
    assert client.get("/oauth2callback?code=1").text == "the app"
    assert client.put("/_stcore/upload_file/s/f", content=b"x").status_code == 401

    client.cookies.set("who", "ana")
    assert client.put("/_stcore/upload_file/s/f", content=b"x").text == "the app"
    for refused in ("eve", "unverified"):
        client.cookies.set("who", refused)
        page = client.get("/", headers=HTML)
        assert page.status_code == 403 and "the app" not in page.text
        assert client.get("/media/a.png").status_code == 403
        with (
            pytest.raises(WebSocketDisconnect),
            client.websocket_connect("/_stcore/stream", headers={"cookie": f"who={refused}"}),
        ):
            pass
    client.cookies.set("who", "eve")
    assert "eve@elsewhere.net is not on" in client.get("/", headers=HTML).text


def test_sign_in_with_an_empty_allow_list_admits_nobody() -> None:
    policy = SignIn(
        read_user=lambda cookies: {"email": "ana@example.org", "email_verified": True},
        login_url=lambda: "/auth/login",
        allow=AllowList(),
    )
    page = _client(policy).get("/", headers=HTML)
    assert page.status_code == 403 and "lists nobody" in page.text


def test_closed_refuses_everything_and_says_why() -> None:
    client = _client(Closed("settings cannot be read"))
    page = client.get("/", headers=HTML)
    assert page.status_code == 503 and "settings cannot be read" in page.text
    assert client.put("/_stcore/upload_file/s/f", content=b"x").status_code == 503


def test_reason_and_next_are_escaped_in_the_page() -> None:
    client = _client(Token("t"))
    page = client.get('/x"><script>alert(1)</script>', headers=HTML)
    assert "<script>alert" not in page.text
