"""The headless Chromium that the view benchmark and the browser test drive (Debian's, via Playwright).

Shared by benchmarks/bench_view.py and tests/app/test_browser.py; tests may import it,
benchmarks never import from tests.

Example:
    >>> from playwright.sync_api import sync_playwright                       # doctest: +SKIP
    >>> with sync_playwright() as playwright:                                 # doctest: +SKIP
    ...     browser = launch(playwright)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def available() -> bool:
    """True when the Chromium binary is installed (apt-get install chromium)."""
    return Path(CHROMIUM).exists()


def launch(playwright: Any) -> Any:
    """A headless Chromium browser from a running ``sync_playwright()``."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
