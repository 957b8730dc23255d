"""The access gate in front of every route of the server: pages, websocket, uploads, media.

The app's own gate (``pages._common.access_gate``) runs inside a script run, so it cannot
protect what Streamlit serves outside one: the upload route takes files from anyone who can
reach the port, media URLs serve thumbnails, and the page skeleton lists the pages. ``shoal
serve`` therefore runs the app as an ASGI application (``asgi.py``, ``streamlit.starlette.App``)
with :class:`AccessGate` as its outermost middleware, so a request reaches Streamlit only when
the visitor has already passed the gate:

- **token** (``SHOAL_ACCESS_TOKEN``): a visitor without a valid ``shoal_access`` cookie gets a
  small sign-in form (served here, before any Streamlit code); the right token sets an HttpOnly
  cookie signed with a key derived from the token (so changing the token signs everyone out).
- **sign-in** (an ``[auth]`` section in ``.streamlit/secrets.toml``): Streamlit's own OIDC
  routes stay reachable; everything else needs Streamlit's signed user cookie, for a verified
  email on the allow-list (:mod:`shoal.app.access`). Signed in but not listed: 403 everywhere.
- **closed**: the sign-in settings cannot be read, so nobody enters (never falls back to open).
- **open**: no gate configured (``shoal serve`` allows that only on a loopback address or with
  ``--no-auth``).

Only ``/_stcore/health`` answers without the gate (it says "ok" and nothing else), for load
balancers. This module imports Starlette, never Streamlit: ``asgi.py`` hands it the one
Streamlit-specific piece (how to read the signed user cookie).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, quote

from shoal.app.access import AllowList, admission

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]

COOKIE_NAME = "shoal_access"
COOKIE_MAX_AGE_S = 30 * 24 * 3600
LOGIN_PATH = "/_shoal/login"
LOGOUT_PATH = "/_shoal/logout"
HEALTH_PATH = "/_stcore/health"
#: Streamlit's OIDC routes: a visitor must reach them to sign in.
SIGN_IN_ROUTES = ("/auth/login", "/auth/logout", "/oauth2callback")
#: Failed token attempts allowed per client address in FAILURE_WINDOW_S before answering 429.
MAX_FAILURES = 10
FAILURE_WINDOW_S = 600.0
MAX_FORM_BYTES = 8192


# --------------------------------------------------------------------------- the token cookie


def _cookie_key(token: str) -> bytes:
    return hashlib.sha256(b"shoal-access-cookie\0" + token.encode()).digest()


def token_cookie(token: str, *, now: float | None = None) -> str:
    """The cookie value that proves its holder entered ``token``: ``issued.signature``."""
    issued = str(int(time.time() if now is None else now))
    signature = hmac.new(_cookie_key(token), issued.encode(), hashlib.sha256).hexdigest()
    return f"{issued}.{signature}"


def token_cookie_valid(token: str, value: str | None, *, now: float | None = None) -> bool:
    """Whether ``value`` was made by :func:`token_cookie` for this token, and is not expired."""
    if not value or value.count(".") != 1:
        return False
    issued, signature = value.split(".")
    if not issued.isdigit():
        return False
    expected = hmac.new(_cookie_key(token), issued.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature, expected):
        return False
    age = (time.time() if now is None else now) - int(issued)
    return -60 <= age <= COOKIE_MAX_AGE_S


# --------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class Open:
    """No gate: every request passes."""

    kind: str = "open"


@dataclass(frozen=True)
class Closed:
    """Nobody enters, and the page says why (for the administrator)."""

    reason: str
    kind: str = "closed"


@dataclass(frozen=True)
class Token:
    token: str
    kind: str = "token"


@dataclass(frozen=True)
class SignIn:
    """OIDC sign-in. ``read_user`` returns the provider's claims from the request's cookies
    (None when not signed in); ``login_url`` the URL path (base path included) that
    starts the provider's flow."""

    read_user: Callable[[Mapping[str, str]], Mapping[str, Any] | None]
    login_url: Callable[[], str]
    allow: AllowList
    kind: str = "sign-in"


Policy = Open | Closed | Token | SignIn


def policy_from(
    environ: Mapping[str, str],
    *,
    sign_in: Callable[[], SignIn | None],
) -> Policy:
    """The gate for this server: sign-in when configured, else the token, else open.

    ``sign_in`` reads the sign-in settings and returns None when there are none; any error
    it raises (an unreadable ``secrets.toml``) closes the gate rather than opening it.
    """
    try:
        configured = sign_in()
    except Exception as error:  # noqa: BLE001 - any unreadable settings: fail closed
        return Closed(
            "This server's sign-in settings (.streamlit/secrets.toml) cannot be read, so nobody "
            f"can enter until its administrator fixes them ({type(error).__name__})."
        )
    if configured is not None:
        return configured
    token = environ.get("SHOAL_ACCESS_TOKEN", "").strip()
    return Token(token) if token else Open()


# --------------------------------------------------------------------------- the middleware


@dataclass
class AccessGate:
    """ASGI middleware: lets a request through to ``app`` only when ``policy`` admits it."""

    app: Callable[..., Any]
    policy: Policy
    base_path: str = ""
    #: Seconds a wrong token waits before its answer (slows guessing from one client).
    failure_delay_s: float = 1.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base_path = "/" + self.base_path.strip("/") if self.base_path.strip("/") else ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or isinstance(self.policy, Open):
            await self.app(scope, receive, send)
            return
        path = self._relative(scope.get("path", "/"))
        if path == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        cookies = _cookies(scope)
        policy = self.policy
        if isinstance(policy, Closed):
            await self._refuse(scope, send, 503, "Shoal is closed", policy.reason)
        elif isinstance(policy, Token):
            await self._token(policy, path, cookies, scope, receive, send)
        else:
            await self._sign_in(policy, path, cookies, scope, receive, send)

    # token -------------------------------------------------------------------------------

    async def _token(
        self,
        policy: Token,
        path: str,
        cookies: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if path == LOGIN_PATH and scope["type"] == "http" and scope.get("method") == "POST":
            await self._check_token(policy, scope, receive, send)
        elif path == LOGOUT_PATH and scope["type"] == "http":
            await _respond(
                send,
                303,
                b"",
                headers=[(b"location", self._url("/").encode()), self._clear_cookie()],
            )
        elif token_cookie_valid(policy.token, cookies.get(COOKIE_NAME)):
            await self.app(scope, receive, send)
        elif _wants_page(scope):
            await _respond(send, 401, self._token_form(scope, error=None), html_page=True)
        else:
            await self._refuse(scope, send, 401, "Sign in first", "Enter the access token first.")

    async def _check_token(self, policy: Token, scope: Scope, receive: Receive, send: Send) -> None:
        client = (scope.get("client") or ("?", 0))[0]
        recent = self._failures.setdefault(client, deque())
        while recent and recent[0] < time.monotonic() - FAILURE_WINDOW_S:
            recent.popleft()
        if len(recent) >= MAX_FAILURES:
            await self._refuse(
                scope, send, 429, "Too many attempts", "Too many wrong tokens: wait ten minutes."
            )
            return
        form = await _read_form(receive)
        given = (form.get("token") or [""])[0]
        target = _safe_next((form.get("next") or ["/"])[0])
        if given and hmac.compare_digest(given.encode(), policy.token.encode()):
            recent.clear()
            cookie = _set_cookie(
                token_cookie(policy.token),
                path=self.base_path or "/",
                secure=scope.get("scheme") in ("https", "wss"),
            )
            await _respond(
                send, 303, b"", headers=[(b"location", self._url(target).encode()), cookie]
            )
            return
        recent.append(time.monotonic())
        await asyncio.sleep(self.failure_delay_s)
        body = self._token_form(scope, error="That token is not right.", target=target)
        await _respond(send, 401, body, html_page=True)

    def _token_form(self, scope: Scope, *, error: str | None, target: str | None = None) -> bytes:
        if target is None:
            query = scope.get("query_string", b"").decode("latin-1")
            target = self._relative(scope.get("path", "/")) + (f"?{query}" if query else "")
        message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
        return _page(
            "Shoal",
            f"""<p>This Shoal server is private. Enter the access token its administrator gave you.</p>
{message}<form method="post" action="{html.escape(self._url(LOGIN_PATH))}">
<label for="token">Access token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<input type="hidden" name="next" value="{html.escape(_safe_next(target))}">
<button type="submit">Enter</button></form>""",
        )

    # sign-in -----------------------------------------------------------------------------

    async def _sign_in(
        self,
        policy: SignIn,
        path: str,
        cookies: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if path in SIGN_IN_ROUTES:
            await self.app(scope, receive, send)
            return
        try:
            user = policy.read_user(cookies)
        except Exception:  # noqa: BLE001 - an unreadable cookie is no sign-in
            user = None
        if not user:
            if _wants_page(scope):
                login = html.escape(policy.login_url())
                body = _page(
                    "Shoal",
                    "<p>This Shoal server is private. Sign in with your organisation's account.</p>"
                    f'<p><a class="button" href="{login}">Sign in</a></p>',
                )
                await _respond(send, 401, body, html_page=True)
            else:
                await self._refuse(scope, send, 401, "Sign in first", "Sign in first.")
            return
        refused = admission(user, policy.allow)
        if refused is None:
            await self.app(scope, receive, send)
            return
        logout = html.escape(self._url("/auth/logout"))
        await self._refuse(
            scope,
            send,
            403,
            "Not on the list",
            refused,
            extra=f'<p><a href="{logout}">Log out</a></p>',
        )

    # helpers -----------------------------------------------------------------------------

    def _relative(self, path: str) -> str:
        if self.base_path and (path == self.base_path or path.startswith(self.base_path + "/")):
            path = path[len(self.base_path) :] or "/"
        return path

    def _url(self, relative: str) -> str:
        return self.base_path + relative

    def _clear_cookie(self) -> tuple[bytes, bytes]:
        return (
            b"set-cookie",
            f"{COOKIE_NAME}=; Path={self.base_path or '/'}; Max-Age=0; HttpOnly; SameSite=Lax".encode(),
        )

    async def _refuse(
        self, scope: Scope, send: Send, status: int, title: str, reason: str, *, extra: str = ""
    ) -> None:
        if scope["type"] == "websocket":
            # Closing before accepting makes the server answer the handshake with HTTP 403.
            await send({"type": "websocket.close", "code": 1008, "reason": ""})
            return
        if _wants_page(scope):
            await _respond(
                send, status, _page(title, f"<p>{html.escape(reason)}</p>{extra}"), html_page=True
            )
        else:
            await _respond(send, status, reason.encode())


def _cookies(scope: Scope) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # noqa: BLE001, S112 - a malformed cookie header is no cookie
                continue
    return {key: morsel.value for key, morsel in jar.items()}


def _wants_page(scope: Scope) -> bool:
    if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
        return False
    accept = dict(scope.get("headers", [])).get(b"accept", b"")
    return b"text/html" in accept


def _safe_next(target: str) -> str:
    """A same-site path to go to after signing in (never another host: no open redirect)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return quote(target, safe="/?&=%:@!$'()*+,;-._~")


async def _read_form(receive: Receive) -> dict[str, list[str]]:
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > MAX_FORM_BYTES:
            return {}
    return parse_qs(body.decode("utf-8", "replace"))


def _set_cookie(value: str, *, path: str, secure: bool) -> tuple[bytes, bytes]:
    attributes = (
        f"{COOKIE_NAME}={value}; Path={path}; Max-Age={COOKIE_MAX_AGE_S}; HttpOnly; SameSite=Lax"
    )
    return b"set-cookie", (attributes + ("; Secure" if secure else "")).encode()


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    html_page: bool = False,
) -> None:
    content_type = b"text/html; charset=utf-8" if html_page else b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (b"x-frame-options", b"DENY"),
                (
                    b"content-security-policy",
                    b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
                ),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _page(title: str, body: str) -> bytes:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:5rem auto;padding:0 1rem;color:#262730}}
input[type=password]{{display:block;width:100%;margin:.4rem 0 1rem;padding:.5rem;font-size:1rem}}
button,.button{{background:#ff4b4b;color:#fff;border:0;border-radius:.4rem;padding:.5rem 1rem;
font-size:1rem;text-decoration:none}}.error{{color:#b00020}}</style></head>
<body><h1>Shoal</h1>{body}</body></html>""".encode()
