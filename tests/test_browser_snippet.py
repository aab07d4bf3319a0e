"""The README's browser snippet, as printed, in headless Chromium through a proxy that cuts the connection.

``error`` is both the stream's terminal event and EventSource's own event for a dropped connection. A snippet that
closes on every ``error`` stops for good at the first drop (Chromium closed after 54 of 500 events that way): the
one the README prints must close only on a terminal event (a ``MessageEvent`` with data), let EventSource resume
by itself after every cut (``Last-Event-ID``), and hand the page every event exactly once, in order. The same page
also shows that heartbeats after events reach the page as nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ._proxy import CuttableProxy
from .snippets import ROOT, collect
from .test_chat_browser import browser

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

__all__ = ["browser"]  # (a fixture: Debian's Chromium, launched once per module, imported to be found here)

pytestmark = pytest.mark.browser

TIMEOUT_MS = 30_000


def browser_snippet() -> str:
    """The one HTML block of README.md marked ``<!-- snippet: browser -->`` (the page of the quick start)."""
    found = [s for s in collect() if s.is_browser]
    assert [s.path for s in found] == ["README.md"], [s.id for s in found]
    return found[0].code


class SnippetPage:
    """tests/_snippet_page.py in a subprocess, serving the README's snippet."""

    def __init__(self, tmp_path: Path, *options: str) -> None:
        snippet = tmp_path / "index.html"
        snippet.write_text(browser_snippet())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests._snippet_page", str(snippet), *options],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("snippet-page: "), line
        self.url = line.removeprefix("snippet-page: ").strip()
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))

    def requests(self) -> int:
        with urllib.request.urlopen(self.url + "requests", timeout=5) as response:
            count: int = json.load(response)
            return count

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    pages: list[SnippetPage] = []

    def start(*options: str) -> SnippetPage:
        pages.append(SnippetPage(tmp_path, *options))
        return pages[-1]

    yield start
    for page in pages:
        page.stop()


def state(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(
        "() => ({text: document.getElementById('answer').textContent, messages: window.messages,"
        " closed: window.closedAt, connectionErrors: window.connectionErrors})"
    )
    return result


def test_the_snippet_resumes_through_cuts_and_closes_only_on_the_terminal_event(browser: Browser, serve: Any) -> None:
    server = serve("--tokens", "400", "--pause", "0.3")
    proxy = CuttableProxy(server.port)
    try:
        page = browser.new_page()
        page.goto(proxy.url)
        cuts = 0
        for at in (30, 120, 200, 300):  # cut while events flow, four times
            page.wait_for_function(f"() => window.messages >= {at} || window.closedAt !== null", timeout=TIMEOUT_MS)
            if state(page)["closed"] is not None:
                break
            proxy.cut()
            cuts += 1
        page.wait_for_function("() => window.closedAt !== null", timeout=TIMEOUT_MS)
        time.sleep(0.5)  # a snippet that did not close would reconnect after retry (0.1 s) and be counted
        final = state(page)
        page.close()
    finally:
        proxy.close()
    assert final["text"] == "".join(f"t{i} " for i in range(400))  # every event once, in order, across every cut
    assert (final["messages"], final["closed"]) == (400, 400)  # closed once, after the last event: on the terminal
    assert cuts == 4 and final["connectionErrors"] >= cuts  # EventSource's own errors did not close it
    assert server.requests() == 1 + cuts  # one resume per cut, and no request after the end


def test_the_snippet_closes_on_a_terminal_error_event(browser: Browser, serve: Any) -> None:
    server = serve("--tokens", "20", "--pause", "0.3", "--end", "error")
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_function("() => window.closedAt !== null", timeout=TIMEOUT_MS)
    time.sleep(0.5)
    final = state(page)
    page.close()
    assert (final["text"], final["messages"]) == ("".join(f"t{i} " for i in range(20)), 20)
    assert (final["closed"], final["connectionErrors"]) == (20, 0)
    assert server.requests() == 1  # closed for good: no reconnect to a 204
