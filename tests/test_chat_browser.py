"""The chat example in a real browser: headless Chromium driven by Playwright, against the app in a subprocess.

These are the project's end-to-end tests: the page, the browser helper (resumable-sse.js), EventSource's own
reconnects and the server together. The server runs as ``python -m examples.aiohttp_chat`` (a separate process,
so that a test can kill and restart it); Playwright's sync API runs in plain (non-async) tests, outside any event
loop.

Needs Debian's ``chromium`` (``/usr/bin/chromium``, or ``$RESUMABLE_SSE_CHROMIUM``) and the ``playwright`` pip
package; never Playwright's own browser download. Without them the tests skip with the reason, except under
``CI=true`` where they fail. Screenshots go to ``test-output/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the example lives beside the package, not inside it
    sys.path.insert(0, str(ROOT))

from examples.aiohttp_chat.fake_llm import answer_text  # noqa: E402

from ._proxy import CuttableProxy  # noqa: E402

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Request

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("RESUMABLE_SSE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUTPUT = ROOT / "test-output"
PROMPT = "Why does the answer survive a refresh?"
SECOND_PROMPT = "And what does the blocking SDK do?"
TIMEOUT_MS = 20_000


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set $RESUMABLE_SSE_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright; no browser download needed)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium, launched once for this module."""
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests must run in CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    OUTPUT.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ChatServer:
    """The example app in a subprocess, as a user runs it; can be killed and started again on the same port."""

    def __init__(self, speed: float, module: str = "examples.aiohttp_chat") -> None:
        self.speed = speed
        self.module = module  # examples.fastapi_chat serves the same page and routes
        self.port = _free_port()
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", self.module, "--port", str(self.port), "--speed", str(self.speed)]
        OUTPUT.mkdir(exist_ok=True)
        log = OUTPUT / f"server-{self.port}.log"
        with log.open("a") as stderr:
            process = self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once the port is listening
        if "open http://" not in line:
            self.kill()
            pytest.fail(f"the example did not start: {line!r}; its stderr: {log.read_text()[-2000:]}")
        self.url = line.rsplit(" ", 1)[1].strip()

    def kill(self) -> None:
        """Stop it abruptly, like a crash: no graceful shutdown, and the memory store is gone with it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        self.kill()

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "api/stats", timeout=5) as response:
            stats: dict[str, Any] = json.load(response)
            return stats


@pytest.fixture
def make_server() -> Iterator[Any]:
    """Start chat servers at a given model speed (tokens per second); all are stopped after the test."""
    servers: list[ChatServer] = []

    def make(speed: float, module: str = "examples.aiohttp_chat") -> ChatServer:
        server = ChatServer(speed, module)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (its own localStorage); fails the test on any uncaught page error."""
    ctx = browser.new_context(viewport={"width": 1100, "height": 800})
    ctx.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    ctx.on("page", lambda page: page.on("pageerror", lambda error: errors.append(str(error))))
    yield ctx
    ctx.close()
    assert errors == [], f"the page raised: {errors}"


def ask(page: Page, prompt: str, engine: str = "async") -> None:
    page.select_option("#engine", engine)
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")


def answer(page: Page, index: int = -1) -> dict[str, Any]:
    """The status, stream id and text an answer shows (the last one by default)."""
    shown: dict[str, Any] = page.evaluate(
        """(index) => {
            const all = document.querySelectorAll(".answer");
            const el = all[index < 0 ? all.length + index : index];
            return el ? {status: el.dataset.status, streamId: el.dataset.streamId || null,
                         text: el.querySelector(".text").textContent} : null;
        }""",
        index,
    )
    return shown


def wait_for_status(page: Page, statuses: str, index: int = -1) -> None:
    """Wait until answer ``index`` shows one of the space-separated ``statuses``."""
    page.wait_for_function(
        """([index, statuses]) => {
            const all = document.querySelectorAll(".answer");
            const el = all[index < 0 ? all.length + index : index];
            return !!el && statuses.split(" ").includes(el.dataset.status);
        }""",
        arg=[index, statuses],
    )


def wait_for_text(page: Page, length: int, index: int = -1) -> None:
    """Wait until answer ``index`` shows at least ``length`` characters."""
    page.wait_for_function(
        """([index, length]) => {
            const all = document.querySelectorAll(".answer");
            const el = all[index < 0 ? all.length + index : index];
            return !!el && el.querySelector(".text").textContent.length >= length;
        }""",
        arg=[index, length],
    )


def stream_requests(page: Page) -> list[str]:
    """Start recording the URLs of the page's requests to /stream/ (EventSource and fetch alike)."""
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url) if "/stream/" in request.url else None)
    return urls


def screenshot(page: Page, name: str) -> None:
    page.screenshot(path=str(OUTPUT / f"chat-{name}.png"))


# -- (1) ask, let it finish ---------------------------------------------------------------------------------------


def test_an_answer_streams_in_full(context: BrowserContext, make_server: Any) -> None:
    server = make_server(speed=250)
    page = context.new_page()
    page.goto(server.url)
    ask(page, PROMPT)
    wait_for_status(page, "streaming done")
    wait_for_status(page, "done")
    assert answer(page)["text"] == answer_text(PROMPT)
    # The second path: a blocking SDK-style generator, run by resumable-sse in a worker thread.
    ask(page, SECOND_PROMPT, engine="blocking")
    page.wait_for_selector(".answer >> nth=1")
    wait_for_status(page, "done", index=1)
    assert answer(page, 1)["text"] == answer_text(SECOND_PROMPT)
    assert answer(page, 0)["text"] == answer_text(PROMPT)
    assert page.text_content(".answer >> nth=1 >> .engine") == "blocking SDK · thread"
    stats = server.stats()
    assert sorted(stats["runs_by_stream"].values()) == [1, 1]
    screenshot(page, "finished")


# -- (2) reload mid-answer, twice ---------------------------------------------------------------------------------


@pytest.mark.parametrize("example", ["examples.aiohttp_chat", "examples.fastapi_chat"], ids=["aiohttp", "fastapi"])
def test_reloading_mid_answer_resumes_without_generating_again(
    context: BrowserContext, make_server: Any, example: str
) -> None:
    server = make_server(speed=60, module=example)
    page = context.new_page()
    requests = stream_requests(page)
    page.goto(server.url)
    ask(page, PROMPT)
    expected = answer_text(PROMPT)
    shown = 0
    for _ in range(2):
        wait_for_text(page, shown + 150)
        before = answer(page)
        assert before["status"] == "streaming", "the answer finished before the reload: slow the model down"
        page.reload()
        # At once, from localStorage: the text it had (a prefix of the answer), then the rest from the server.
        restored = answer(page)
        assert restored["streamId"] == before["streamId"]
        assert expected.startswith(restored["text"])
        assert len(restored["text"]) >= len(before["text"])
        shown = len(restored["text"])
    wait_for_status(page, "done")
    final = answer(page)
    assert final["text"] == expected  # no token repeated or missing across two reloads
    assert server.stats()["runs_by_stream"] == {final["streamId"]: 1}  # and generated exactly once
    assert "last_event_id=" not in requests[0]
    resumed = [url for url in requests[1:] if "last_event_id=" in url]
    assert len(resumed) >= 2, requests  # each reload resumed from its last event id, not from the start
    screenshot(page, f"reloaded-{example.split('.')[-1]}")


# -- (3) stop mid-answer ------------------------------------------------------------------------------------------


def test_stop_cancels_the_answer_in_every_tab(context: BrowserContext, make_server: Any) -> None:
    server = make_server(speed=40)
    first = context.new_page()
    first.goto(server.url)
    ask(first, PROMPT)
    wait_for_text(first, 60)
    second = context.new_page()
    second.goto(first.url)  # the same conversation (?c=...) in another tab
    wait_for_status(second, "streaming")
    assert answer(second)["streamId"] == answer(first)["streamId"]
    first.click("#stop")
    for page in (first, second):
        wait_for_status(page, "cancelled")
        assert "cancelled for every tab" in (page.text_content(".answer >> nth=-1 >> .notice") or "")
        assert page.is_disabled("#stop")
    texts = [answer(page)["text"] for page in (first, second)]
    assert texts[0] == texts[1]
    assert answer_text(PROMPT).startswith(texts[0])
    assert len(texts[0]) < len(answer_text(PROMPT))
    # A reload shows the stopped answer from storage, still stopped; the producer ran once.
    second.reload()
    wait_for_status(second, "cancelled")
    assert answer(second)["text"] == texts[0]
    assert list(server.stats()["runs_by_stream"].values()) == [1]
    screenshot(first, "stopped")


# -- (4) two tabs on one conversation -----------------------------------------------------------------------------


def test_two_tabs_show_the_same_answer_live(context: BrowserContext, make_server: Any) -> None:
    server = make_server(speed=120)
    first = context.new_page()
    first.goto(server.url)
    second = context.new_page()
    second.goto(first.url)  # open before the question: the second tab learns of it from the shared storage
    ask(first, PROMPT)
    for page in (first, second):
        wait_for_status(page, "streaming done")
    # Both read it live (neither is finished yet when the other shows text).
    wait_for_text(second, 40)
    assert answer(first)["status"] == "streaming"
    for page in (first, second):
        wait_for_status(page, "done")
        assert answer(page)["text"] == answer_text(PROMPT)
    assert server.stats()["runs_by_stream"] == {answer(first)["streamId"]: 1}
    screenshot(second, "second-tab")


# -- (5) the server restarts (memory store) mid-answer ------------------------------------------------------------


def test_a_restarted_server_tells_the_page_the_answer_was_lost(context: BrowserContext, make_server: Any) -> None:
    server = make_server(speed=40)
    page = context.new_page()
    page.goto(server.url)
    ask(page, PROMPT)
    wait_for_text(page, 80)
    server.kill()  # the memory store, and the answer being generated, die with the process
    wait_for_status(page, "reconnecting")
    partial = answer(page)["text"]
    server.start()  # same port, empty store
    wait_for_status(page, "gone")
    shown = answer(page)
    assert shown["text"] == partial  # what was received stays on screen
    assert "answer was lost" in (page.text_content(".answer >> nth=-1 >> .notice") or "")
    assert page.is_disabled("#stop")
    # No reconnect loop: the EventSource request (410 Gone) and the one fetch that read the status, then nothing,
    # though EventSource would retry every 2 s if it were still trying.
    time.sleep(5)
    stats = server.stats()
    assert stats["stream_requests"] == 2
    assert stats["producer_runs"] == 0  # and nothing was generated again
    # A reload shows the same verdict from storage without asking the server again.
    page.reload()
    wait_for_status(page, "gone")
    assert server.stats()["stream_requests"] == 2
    screenshot(page, "lost")


# -- (6) a saved position the server cannot continue: reset ------------------------------------------------------


def test_a_stale_position_is_redrawn_from_the_replay(context: BrowserContext, make_server: Any) -> None:
    server = make_server(speed=150)
    page = context.new_page()
    page.goto(server.url)
    conversation = page.url
    ask(page, PROMPT)
    wait_for_text(page, 100)
    stream_id = answer(page)["streamId"]
    # Leave the conversation, then make its saved progress look like it came from an earlier life of the stream
    # (as after a Redis flush and the answer being asked again): another epoch, and text that is not the answer.
    page.goto(server.url + "api/stats")  # same origin, no scripts: nothing writes the storage meanwhile
    page.evaluate(
        """(key) => localStorage.setItem(key, JSON.stringify(
            {v: 1, lastEventId: "0badc0ffee-7", state: "Text from an earlier life. ", status: "running"}))""",
        f"chat:answer:{stream_id}",
    )
    page.goto(conversation)
    wait_for_status(page, "done")
    assert answer(page)["text"] == answer_text(PROMPT)  # the stale text was dropped, the replay drew the answer
    notice = page.text_content(".answer >> nth=-1 >> .notice") or ""
    assert "(epoch)" in notice
    assert "redrawn from its replay" in notice
    assert server.stats()["runs_by_stream"] == {stream_id: 1}
    screenshot(page, "reset")


# -- (7) the network drops mid-answer ------------------------------------------------------------------------------


@pytest.mark.parametrize("example", ["examples.aiohttp_chat", "examples.fastapi_chat"], ids=["aiohttp", "fastapi"])
def test_a_dropped_connection_resumes_where_it_stopped(context: BrowserContext, make_server: Any, example: str) -> None:
    server = make_server(speed=60, module=example)
    proxy = CuttableProxy(server.port)
    try:
        page = context.new_page()
        requests: list[Request] = []
        page.on("request", lambda request: requests.append(request) if "/stream/" in request.url else None)
        page.goto(proxy.url)
        ask(page, PROMPT)
        wait_for_text(page, 100)
        proxy.cut()
        wait_for_status(page, "reconnecting streaming")
        wait_for_status(page, "done")
        final = answer(page)
        headers = [request.all_headers() for request in requests]
    finally:
        proxy.close()
    assert final["text"] == answer_text(PROMPT)  # nothing repeated or missing across the drop
    assert server.stats()["runs_by_stream"] == {final["streamId"]: 1}
    # EventSource reconnected by itself, sending the Last-Event-ID header (the page did not reopen it).
    assert len(headers) == 2, headers
    assert "last-event-id" not in headers[0]
    assert "last_event_id=" not in str(headers)
    position = headers[1].get("last-event-id", "")
    assert position.count("-") == 1, headers[1]
    assert int(position.split("-")[1]) >= 10  # at least the ~20 tokens the page had shown before the cut


# -- (8) the server refuses the stream for a while (a deploy, a proxy's 502/503, a 4xx) -----------------------------


def test_refusals_are_retried_and_a_failure_is_not_saved_as_the_end(context: BrowserContext, make_server: Any) -> None:
    from playwright.sync_api import Route

    server = make_server(speed=60)
    page = context.new_page()
    refusals: list[int] = []  # the statuses to answer the next /stream/ requests with, in order; then pass through
    refused: list[str] = []

    def refuse_some(route: Route) -> None:
        if refusals:
            status = refusals.pop(0)
            refused.append(f"{route.request.resource_type} {status}")
            route.fulfill(status=status, body="refused by the test\n", content_type="text/plain")
        else:
            route.continue_()

    page.route("**/stream/**", refuse_some)
    page.goto(server.url)
    refusals += [403, 403]  # a 4xx: EventSource stops, the helper's fetch reads why, the page says it failed
    ask(page, PROMPT)
    wait_for_status(page, "failed")
    assert "refused by the test" in (page.text_content(".answer >> nth=-1 >> .notice") or "")
    assert refused == ["eventsource 403", "fetch 403"]
    # "failed" is not the end of the answer: a reload connects again (here through two rounds of 503, retried
    # with backoff as "reconnecting") and shows the whole answer, generated once.
    refusals += [503, 503, 503, 503]
    page.reload()
    wait_for_status(page, "reconnecting")
    wait_for_status(page, "done")
    assert refused[2:] == ["eventsource 503", "fetch 503", "eventsource 503", "fetch 503"]
    final = answer(page)
    assert final["text"] == answer_text(PROMPT)
    assert server.stats()["runs_by_stream"] == {final["streamId"]: 1}


# -- (9) close the tab mid-answer, open the conversation again -----------------------------------------------------


def test_a_closed_and_reopened_tab_continues_the_answer(context: BrowserContext, make_server: Any) -> None:
    server = make_server(speed=60)
    page = context.new_page()
    page.goto(server.url)
    conversation = page.url
    ask(page, PROMPT, engine="blocking")  # the SDK-style producer, fed through SyncStreamer from a thread
    wait_for_text(page, 120)
    before = answer(page)
    assert before["status"] == "streaming"
    page.close()  # the only tab: no reader is left, the producer goes on
    reopened = context.new_page()
    requests = stream_requests(reopened)
    reopened.goto(conversation)
    restored = answer(reopened)
    assert restored["streamId"] == before["streamId"]
    assert answer_text(PROMPT).startswith(restored["text"])  # shown from storage at once
    wait_for_status(reopened, "done")
    final = answer(reopened)
    assert final["text"] == answer_text(PROMPT)
    assert server.stats()["runs_by_stream"] == {final["streamId"]: 1}
    assert "last_event_id=" in requests[0]  # it resumed from where the closed tab was, not from the start


# -- (10) an answer that ends with error or lost says so -----------------------------------------------------------


@pytest.mark.parametrize(
    ("end", "data", "notice"),
    [
        ("error", '{"state":"error","message":"the model refused"}', "The model failed: the model refused"),
        ("lost", '{"state":"lost","message":"the producer stopped responding"}', "server producing it stopped"),
    ],
)
def test_an_answer_that_ends_with_error_or_lost_says_so(
    context: BrowserContext, make_server: Any, end: str, data: str, notice: str
) -> None:
    from playwright.sync_api import Route

    server = make_server(speed=60)
    page = context.new_page()
    # The fake model never fails, so the stream's bytes are scripted here, as the server sends them.
    body = f"retry: 2000\nid: e0e0e0e0-1\ndata: Partial \n\nid: e0e0e0e0-2\nevent: {end}\ndata: {data}\n\n"

    def scripted(route: Route) -> None:
        route.fulfill(status=200, body=body, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})

    page.route("**/stream/**", scripted)
    page.goto(server.url)
    ask(page, PROMPT)
    wait_for_status(page, end)
    shown = answer(page)
    assert shown["text"] == "Partial "
    assert notice in (page.text_content(".answer >> nth=-1 >> .notice") or "")
    assert page.is_disabled("#stop")
    page.reload()  # the end is saved: shown again without reconnecting
    wait_for_status(page, end)
    assert answer(page)["text"] == "Partial "


def test_a_page_that_is_not_an_event_stream_fails_once_instead_of_retrying(
    context: BrowserContext, make_server: Any
) -> None:
    from playwright.sync_api import Route

    server = make_server(speed=60)
    page = context.new_page()
    answered: list[str] = []

    def html_fallback(route: Route) -> None:  # an SPA fallback or a proxy's login page, with status 200
        answered.append(route.request.resource_type)
        route.fulfill(status=200, body="<!doctype html><p>Sign in</p>", content_type="text/html")

    page.route("**/stream/**", html_fallback)
    page.goto(server.url)
    ask(page, PROMPT)
    wait_for_status(page, "failed")
    assert "not an event stream (text/html)" in (page.text_content(".answer >> nth=-1 >> .notice") or "")
    time.sleep(2.5)  # a retry would come after 1 s
    assert answered == ["eventsource", "fetch"]


# -- (12) a plain EventSource, as the README's quick start shows it -------------------------------------------------


def test_a_plain_eventsource_left_open_reconnects_once_and_gets_204(context: BrowserContext, make_server: Any) -> None:
    """What the README says of an EventSource that does not close on the terminal event: after it, one ``onerror``
    while reconnecting, one request (answered ``204``), one more ``onerror`` as it closes for good, and no more."""
    server = make_server(speed=0)
    page = context.new_page()
    page.goto(server.url)
    statuses: list[int] = []
    page.on("response", lambda response: statuses.append(response.status) if "/stream/" in response.url else None)
    page.evaluate(
        """async () => {
            const response = await fetch("/api/answers", {method: "POST", headers: {"Content-Type": "application/json"},
                body: JSON.stringify({conversation: "plain", message: "m1", prompt: "hello", engine: "async"})});
            const {url} = await response.json();
            window.seen = [];
            const source = new EventSource(url);
            source.addEventListener("done", () => seen.push("done"));
            source.onerror = () => seen.push("error " + source.readyState);
        }"""
    )
    page.wait_for_function("() => window.seen.length >= 3")
    time.sleep(2.5)  # another reconnect would come after retry (2 s)
    assert page.evaluate("window.seen") == ["done", "error 0", "error 2"]  # 0: CONNECTING, 2: CLOSED
    assert statuses == [200, 204]
