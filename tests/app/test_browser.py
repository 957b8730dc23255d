"""The app as users meet it: `shoal serve` in a real Chromium, from upload to a shared link.

One journey, screenshots of every page in artifacts/screenshots/:
fresh server + deep link -> upload a zip of real images -> embedding job finishes -> map ->
box selection -> thumbnails -> copy the link -> open it in a new browser context -> same selection.
"""

from __future__ import annotations

import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import chromium
from benchmarks.bench_view import drag_box, share_link
from benchmarks.servers import shoal_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
VIEWPORT = {"width": 1400, "height": 1800}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not chromium.available():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    workspace = tmp_path_factory.mktemp("browser-ws")
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    with shoal_server(workspace, log) as url:
        yield url


@pytest.fixture(scope="module")
def images_zip(tmp_path_factory: pytest.TempPathFactory, sample_images: Path) -> Path:
    """~40 real images: 5 per training class, plus 5 of the class only the test split has."""
    target = tmp_path_factory.mktemp("upload") / "stamps.zip"
    with zipfile.ZipFile(target, "w") as bundle:
        for class_dir in sorted((sample_images / "train").iterdir()) + [
            sample_images / "test" / "space"
        ]:
            for image in sorted(class_dir.iterdir())[:5]:
                bundle.write(image, f"stamps/{image.relative_to(sample_images).as_posix()}")
    return target


def _wait_idle(page, timeout: float = 60.0) -> None:
    """Until Streamlit's 'running' indicator has been gone for a moment."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout * 1000)
    deadline, quiet = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and quiet < 6:
        quiet = 0 if page.locator('[data-testid="stStatusWidget"]').count() else quiet + 1
        time.sleep(0.25)


def _shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]'
    ).first.inner_text()


def _selected_count(page) -> int | None:
    for heading in page.locator("h3").all_inner_texts():
        match = re.match(r"([\d,]+) selected", heading.strip())
        if match:
            return int(match.group(1).replace(",", ""))
    return None


def _box_select(page) -> int:
    """With the map's Box select tool, drag a box over most of the map; the count it selects."""
    page.wait_for_function("() => window.shoalMapDrawn !== undefined", timeout=60_000)
    count, _ = drag_box(page, (0.05, 0.1, 0.95, 0.95))
    _wait_idle(page)
    return count


def test_upload_embed_select_share(server: str, images_zip: Path) -> None:
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    with sync_playwright() as playwright:
        browser = chromium.launch(playwright)
        try:
            page = browser.new_page(viewport=VIEWPORT)

            # A deep link is the first request this fresh server sees: it must still go through
            # app.py (navigation, sidebar), not run pages/jobs.py alone (see docs/app_architecture.md).
            page.goto(f"{server}/jobs")
            _wait_idle(page)
            assert page.title() == "Jobs · Shoal"
            assert page.locator('[data-testid="stSidebarNav"]').get_by_text("Datasets").count() == 1

            page.goto(server)
            _wait_idle(page)
            assert page.title() == "Datasets · Shoal"
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
                str(images_zip)
            )
            page.get_by_role("button", name="Import").wait_for()
            page.wait_for_function(
                "() => [...document.querySelectorAll('button')].some(b => b.innerText.trim() === 'Import' && !b.disabled)",
                timeout=30_000,
            )
            page.get_by_role("button", name="Import").click()
            page.get_by_text("Imported 40 samples").wait_for(timeout=60_000)
            page.get_by_text(re.compile(r"Job embed · stamps finished")).wait_for(timeout=180_000)
            _wait_idle(page)
            _no_exception(page)
            _shot(page, "datasets")

            page.get_by_role("link", name="Map").click()
            _wait_idle(page, timeout=120)
            page.wait_for_function("() => window.shoalMapDrawn !== undefined", timeout=120_000)
            assert page.evaluate("window.shoalMapDrawn.n") == 40  # every sample drawn
            _shot(page, "map")
            selected = _box_select(page)
            assert 0 < selected <= 40
            thumbnails = page.locator('[data-testid="stImage"] img')
            thumbnails.first.wait_for(timeout=30_000)
            assert thumbnails.count() == min(selected, 24)
            _no_exception(page)
            _shot(page, "map-selection")

            link = share_link(page)
            assert link.startswith(f"{server}/map?") and "sel=" in link and "ds=stamps" in link

            fresh = browser.new_context(viewport=VIEWPORT).new_page()
            fresh.goto(link)
            _wait_idle(fresh, timeout=60)
            fresh.get_by_text(f"{selected} selected").wait_for(timeout=60_000)
            assert _selected_count(fresh) == selected
            assert fresh.locator('[data-testid="stImage"] img').count() == min(selected, 24)
            _shot(fresh, "map-shared-link")

            for path, name in (
                ("outliers", "outliers"),
                ("similar", "similar"),
                ("compare", "compare"),
                ("jobs", "jobs"),
            ):
                fresh.get_by_role("link", name=name.capitalize()).click()
                _wait_idle(fresh, timeout=90)
                assert fresh.url.split("?")[0].endswith(f"/{path}")
                assert "ds=stamps" in fresh.url  # the dataset travels across pages
                _no_exception(fresh)
                _shot(fresh, name)
        finally:
            browser.close()
    assert time.monotonic() - started < 240
