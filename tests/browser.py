"""A real, offline Chromium for tests that open Kubeloop's HTML (drift report, dashboard).

Debian's ``/usr/bin/chromium`` driven by Playwright, headless. :func:`offline_page` blocks
every request except the ones a test allows (by default ``file://`` URLs and nothing else), so
a page that reaches for a CDN, a font or an analytics beacon shows up in ``page.blocked``
instead of quietly working on a developer's laptop; console errors and page errors are
collected in ``page.errors``.

Usage (any test under ``tests/``; ``tests/conftest.py`` puts this directory on ``sys.path``)::

    from browser import chromium, offline_page

    def test_report(tmp_path):
        with chromium() as browser, offline_page(browser) as page:
            page.goto(report.as_uri())
            assert page.errors == [] and page.blocked == []

or the ``offline_page`` fixture from ``tests/conftest.py``. Tests are skipped (with the reason)
when Playwright or Chromium is missing; set ``KUBELOOP_CHROMIUM`` to use another binary.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

DEFAULT_CHROMIUM = "/usr/bin/chromium"


def chromium_path() -> str:
    """The Chromium binary: ``$KUBELOOP_CHROMIUM``, Debian's, or the one on ``PATH``."""
    configured = os.environ.get("KUBELOOP_CHROMIUM")
    if configured:
        return configured
    if os.path.exists(DEFAULT_CHROMIUM):
        return DEFAULT_CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser") or DEFAULT_CHROMIUM


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium (skips the test when Playwright or the binary is absent)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    path = chromium_path()
    if not os.path.exists(path):
        pytest.skip(f"no Chromium at {path} (install Debian's chromium or set KUBELOOP_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=path,
            headless=True,
            # Containers rarely give Chromium a sandbox or a large /dev/shm.
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class OfflinePage:
    """A page plus what it tried to fetch and what went wrong in it."""

    page: Page
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.page, name)


@contextmanager
def offline_page(
    browser: Browser,
    allow: Callable[[str], bool] | None = None,
    viewport: tuple[int, int] = (1100, 900),
) -> Iterator[OfflinePage]:
    """A page whose every request is aborted unless ``allow(url)`` (default: ``file://`` only)."""
    allowed = allow or (lambda url: url.startswith("file://"))
    context = browser.new_context(
        viewport={"width": viewport[0], "height": viewport[1]}, service_workers="block"
    )
    page = context.new_page()
    result = OfflinePage(page)

    def route(route: Route) -> None:
        url = route.request.url
        if allowed(url) or url.startswith("data:"):
            route.continue_()
        else:
            result.blocked.append(url)
            route.abort()

    page.route(re.compile(r".*"), route)
    page.on(
        "console",
        lambda message: (
            result.errors.append(f"console {message.type}: {message.text}")
            if message.type in {"error", "warning"}
            else None
        ),
    )
    page.on("pageerror", lambda error: result.errors.append(f"page error: {error}"))
    try:
        yield result
    finally:
        context.close()
