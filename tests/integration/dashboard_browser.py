"""``kubectl kubeloop dashboard`` as a real process, and Debian's Chromium driven by Playwright,
recording every request the page makes and every console error it logs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from harness import REPO, free_port, wait_for

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = REPO / "docs" / "images"


class DashboardProcess:
    """``python -m kubeloop.plugin dashboard [-n NS | -A] --port P --no-open``."""

    def __init__(self, kubeconfig: str, log: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kubeloop.plugin",
                    "dashboard",
                    *args,
                    "--port",
                    str(self.port),
                    "--no-open",
                ],
                env={**os.environ, "KUBECONFIG": kubeconfig},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

        def ready() -> bool:
            assert self.process.poll() is None, log.read_text()[-3000:]
            try:
                return httpx.get(f"{self.url}/api/state", timeout=2).json()["synced"] is True
            except (httpx.HTTPError, ValueError):
                return False

        wait_for(ready, 90, 0.3, f"dashboard on {self.url}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@dataclass
class Recorder:
    """What a page did: the URL of every request and every console error or page error."""

    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def foreign_requests(self, port: int) -> list[str]:
        """Requests that went anywhere but the dashboard on 127.0.0.1:port."""
        return [
            u
            for u in self.requests
            if (urlsplit(u).hostname, urlsplit(u).port) != ("127.0.0.1", port)
        ]


@contextmanager
def chromium_page(recorder: Recorder) -> Iterator[Any]:
    """A page of headless Debian Chromium (no downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.on("request", lambda request: recorder.requests.append(request.url))
            page.on(
                "console",
                lambda message: message.type == "error" and recorder.errors.append(message.text),
            )
            page.on("pageerror", lambda error: recorder.errors.append(f"pageerror: {error}"))
            yield page
        finally:
            browser.close()


def screenshot(page: Any, name: str, tmp_path: Path, full_page: bool = True) -> None:
    """Into docs/images with KUBELOOP_DASHBOARD_SCREENSHOTS=1 (how the committed ones were
    taken), else into the test's tmp_path."""
    target = SCREENSHOTS if os.environ.get("KUBELOOP_DASHBOARD_SCREENSHOTS") == "1" else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target / f"dashboard-{name}.png"), full_page=full_page)


def texts(page: Any, selector: str) -> list[str]:
    return [re.sub(r"\s+", " ", t).strip() for t in page.locator(selector).all_inner_texts()]
