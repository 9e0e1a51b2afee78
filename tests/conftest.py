"""Fixtures for every test directory. Its presence also puts ``tests/`` on ``sys.path``, so
shared helpers such as ``browser`` (a real offline Chromium) import from any test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from browser import OfflinePage, chromium, offline_page

__all__ = ["offline_browser_page"]


@pytest.fixture
def offline_browser_page() -> Iterator[OfflinePage]:
    """A headless Chromium page that may load ``file://`` URLs and nothing else
    (see ``tests/browser.py``); skipped when Playwright or Chromium is missing."""
    with chromium() as browser, offline_page(browser) as page:
        yield page
