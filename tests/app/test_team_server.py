"""A team deployment as docs/team.md describes it: nothing reaches the app before the gate.

`shoal serve` runs the app behind shoal.app.gate.AccessGate on every route. These tests start
the real server on 127.0.0.1 and try it as an outsider would (plain HTTP: pages, static files,
media, the upload route, the websocket) and as teammates do, in Chromium: with the shared token,
and with OIDC sign-in against a real OpenID provider on 127.0.0.1 (oidc-provider-mock) and the
allow-list. Regression: before the gate, an unauthenticated client got the page skeleton, the
websocket and the upload route (files up to server.maxUploadSize, held in RAM).
"""

from __future__ import annotations

import http.cookiejar
import secrets
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import chromium
from benchmarks.servers import REPO, free_port, serving, shoal_server

pytestmark = [pytest.mark.slow]

TOKEN = "correct-horse-battery-staple"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def _status(
    url: str, *, method: str = "GET", data: bytes | None = None, headers=None, opener=None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with (opener or urllib.request.build_opener(_NoRedirect)).open(
            request, timeout=10
        ) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _websocket_status(url: str, cookie: str | None = None) -> int:
    """101 when the websocket handshake succeeds, else the HTTP status the server answered."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    headers = {"Origin": url}
    if cookie:
        headers["Cookie"] = cookie
    target = url.replace("http://", "ws://") + "/_stcore/stream"
    try:
        with connect(
            target, additional_headers=headers, subprotocols=["streamlit"], open_timeout=10
        ):
            return 101
    except InvalidStatus as error:
        return error.response.status_code


OUTSIDER_REQUESTS = [
    ("GET", "/", {"Accept": "text/html"}),
    ("GET", "/map?ds=anything", {"Accept": "text/html"}),
    ("GET", "/static/js/index.js", {}),
    ("GET", "/media/0123456789abcdef.png", {}),
    ("GET", "/_stcore/host-config", {}),
    ("GET", "/_stcore/metrics", {}),
    ("GET", "/component/anything/index.html", {}),
]


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workspace = tmp_path_factory.mktemp("team-ws")
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    with shoal_server(workspace, log, env={"SHOAL_ACCESS_TOKEN": TOKEN}) as url:
        yield url


def test_an_outsider_gets_nothing_but_the_sign_in_form(token_server: str) -> None:
    for method, path, headers in OUTSIDER_REQUESTS:
        status, body = _status(token_server + path, method=method, headers=headers)
        assert status == 401, (path, status)
        assert b"streamlit" not in body.lower() and b"datasets" not in body.lower(), path
    form = _status(token_server + "/", headers={"Accept": "text/html"})[1].decode()
    assert 'name="token"' in form and "Map" not in form and "outliers" not in form.lower()
    # The upload route, as a client that knows Streamlit's protocol would try it.
    status, _ = _status(
        token_server + "/_stcore/upload_file/some-session/some-file",
        method="PUT",
        data=b"x" * 10_000,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert status == 401
    assert _websocket_status(token_server) == 403
    assert _status(token_server + "/_stcore/health")[0] == 200  # for load balancers: says "ok"


def test_a_wrong_token_is_refused_and_the_right_one_opens_every_route(token_server: str) -> None:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect)
    wrong = urllib.parse.urlencode({"token": "guess", "next": "/"}).encode()
    status, body = _status(token_server + "/_shoal/login", method="POST", data=wrong, opener=opener)
    assert status == 401 and b"not right" in body and not list(jar)

    right = urllib.parse.urlencode({"token": TOKEN, "next": "//evil.example/x"}).encode()
    request = urllib.request.Request(token_server + "/_shoal/login", data=right, method="POST")
    try:
        opener.open(request, timeout=10)
        raise AssertionError("expected a redirect")
    except urllib.error.HTTPError as error:
        assert error.code == 303
        assert error.headers["Location"] == "/"  # never to another host
        assert "HttpOnly" in error.headers["Set-Cookie"]
        jar.extract_cookies(error, request)  # type: ignore[arg-type]
    cookie = "; ".join(f"{c.name}={c.value}" for c in jar)
    assert cookie.startswith("shoal_access=")
    status, body = _status(token_server + "/", headers={"Accept": "text/html", "Cookie": cookie})
    assert status == 200 and b'id="root"' in body
    assert _websocket_status(token_server, cookie) == 101
    forged = "shoal_access=" + cookie.split("=", 1)[1].split(".")[0] + "." + "0" * 64
    assert _status(token_server + "/", headers={"Cookie": forged})[0] == 401


@pytest.mark.browser
def test_a_teammate_enters_the_token_and_uses_the_app(token_server: str) -> None:
    if not chromium.available():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = chromium.launch(playwright)
        try:
            page = browser.new_page()
            page.goto(token_server + "/jobs")
            assert page.locator("input[name=token]").is_visible()
            assert "Outliers" not in page.content()  # no page names before the gate
            page.fill("input[name=token]", TOKEN)
            page.click("button[type=submit]")
            page.get_by_role("heading", name="Jobs").first.wait_for(timeout=60_000)
            assert page.url.endswith("/jobs")  # the link the teammate opened
            page.locator('[data-testid="stSidebarNav"]').get_by_text("Outliers").wait_for()
            assert page.locator('[data-testid="stException"]').count() == 0
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "team-token-signed-in.png"))
        finally:
            browser.close()


@pytest.mark.browser
def test_the_app_alone_shows_no_page_names_before_its_own_gate(tmp_path: Path) -> None:
    """`streamlit run app.py` (no server gate) still gates in the app. Regression: its token
    page showed Streamlit's auto-discovered list of the pages/ files to visitors."""
    if not chromium.available():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py")]
    command += ["--server.address", "127.0.0.1", "--server.port", str(port)]
    command += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    env = {"SHOAL_ACCESS_TOKEN": TOKEN, "SHOAL_WORKSPACE": str(tmp_path / "ws")}
    with (
        serving(command, f"http://127.0.0.1:{port}", tmp_path / "app.log", env=env) as url,
        sync_api.sync_playwright() as playwright,
    ):
        browser = chromium.launch(playwright)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            field = page.locator('input[aria-label="Access token"]')
            field.wait_for(timeout=60_000)
            page.wait_for_timeout(1000)
            text = page.inner_text("body").lower()
            assert "outliers" not in text and "common" not in text and "similar" not in text
            field.fill(TOKEN)
            page.get_by_role("button", name="Enter").click()
            page.locator('[data-testid="stSidebarNav"]').get_by_text("Outliers").wait_for()
        finally:
            browser.close()


# --------------------------------------------------------------------------- OIDC sign-in


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    """A real OpenID provider on 127.0.0.1 with two users: one on the allow-list, one not."""
    oidc = pytest.importorskip("oidc_provider_mock")
    from werkzeug.serving import make_server

    users = [
        oidc.User(
            sub="ana", claims={"email": "ana@example.org", "email_verified": True, "name": "Ana"}
        ),
        oidc.User(
            sub="eve", claims={"email": "eve@elsewhere.net", "email_verified": True, "name": "Eve"}
        ),
    ]
    server = make_server("127.0.0.1", 0, oidc.app(user_claims=users), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def sign_in_server(tmp_path_factory: pytest.TempPathFactory, provider: str) -> Iterator[str]:
    pytest.importorskip("authlib")
    folder = tmp_path_factory.mktemp("sign-in")
    port = free_port()
    settings = folder / "secrets.toml"
    settings.write_text(
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_hex(32)}"\n'
        'client_id = "shoal"\nclient_secret = "shoal-secret"\n'
        f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n'
    )
    with shoal_server(
        folder / "ws",
        folder / "serve.log",
        env={"SHOAL_ALLOWED_DOMAINS": "example.org"},
        args=("--secrets", str(settings)),
        port=port,
    ) as url:
        yield url


def _sign_in_as(browser, url: str, user: str):  # type: ignore[no-untyped-def]
    context = browser.new_context()
    page = context.new_page()
    page.goto(url + "/")
    assert "Outliers" not in page.content()
    page.get_by_role("link", name="Sign in").click()
    page.get_by_role("button", name=user, exact=True).click()  # the provider's one-click user
    page.wait_for_load_state()
    return context, page


@pytest.mark.browser
def test_sign_in_admits_the_allow_list_and_refuses_everyone_else(sign_in_server: str) -> None:
    if not chromium.available():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    assert _status(sign_in_server + "/", headers={"Accept": "text/html"})[0] == 401
    with sync_api.sync_playwright() as playwright:
        browser = chromium.launch(playwright)
        try:
            context, page = _sign_in_as(browser, sign_in_server, "ana")
            page.get_by_role("heading", name="Datasets").first.wait_for(timeout=60_000)
            page.get_by_text("Signed in as ana@example.org").wait_for()
            assert page.locator('[data-testid="stException"]').count() == 0
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "team-oidc-signed-in.png"))
            context.close()

            context, page = _sign_in_as(browser, sign_in_server, "eve")
            assert "eve@elsewhere.net is not on this server's list" in page.content()
            page.screenshot(path=str(SCREENSHOTS / "team-oidc-refused.png"))
            upload = context.request.put(
                sign_in_server + "/_stcore/upload_file/a-session/a-file", data=b"x" * 1000
            )
            assert upload.status == 403
            assert context.request.get(sign_in_server + "/static/js/index.js").status == 403
            context.close()
        finally:
            browser.close()
