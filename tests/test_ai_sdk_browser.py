"""The AI SDK example in Chromium: a React page with ``useChat({ resume: true })`` and the helper's chatTransport,
against ``python -m examples.ai_sdk_chat`` in a subprocess.

The page is bundled first (``examples.ai_sdk_chat.build``: ``npm ci`` of the pinned packages, then esbuild). A
script in the page records the length of the assistant's text at every change, so a test sees every state the user
saw: after a reload the text must come back at least as long as it was, never shrink, and end as the model's
answer exactly, from one producer run.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from examples.ai_sdk_chat.build import build
from examples.aiohttp_chat.fake_llm import answer_text

from ._live_server import FaultProxy
from .ai_sdk_npm import tool
from .test_chat_browser import browser, context, make_server

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

__all__ = ["browser", "context", "make_server"]  # (fixtures, imported to be found here)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(120)]

MODULE = "examples.ai_sdk_chat"
PROMPT = "Does useChat survive a reload?"

# Every change of the assistant's text, as lengths, from the page's first render on (kept per page load).
RECORD = """
window.__lengths = [];
new MutationObserver(() => {
  const all = document.querySelectorAll('#messages li[data-role="assistant"]');
  const last = all[all.length - 1];
  const length = last ? last.textContent.length : 0;
  if (window.__lengths[window.__lengths.length - 1] !== length) window.__lengths.push(length);
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


@pytest.fixture(scope="module")
def bundle() -> None:
    tool("npm")
    build()


def assistant_texts(page: Page) -> list[str]:
    texts: list[str] = page.eval_on_selector_all(
        '#messages li[data-role="assistant"]', "els => els.map(e => e.textContent)"
    )
    return texts


def wait_for_length(page: Page, length: int) -> None:
    page.wait_for_function(
        """(length) => { const all = document.querySelectorAll('#messages li[data-role="assistant"]');
                         return all.length > 0 && all[all.length - 1].textContent.length >= length; }""",
        arg=length,
    )


def wait_for_status(page: Page, status: str) -> None:
    page.wait_for_function("(s) => document.querySelector('#status')?.dataset.status === s", arg=status)


def open_chat(context: BrowserContext, url: str) -> Page:
    context.add_init_script(RECORD)
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#prompt")
    return page


def ask(page: Page, prompt: str) -> None:
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")


def test_a_reload_mid_answer_resumes_it_without_a_step_back(
    bundle: None, context: BrowserContext, make_server: Any
) -> None:
    server = make_server(speed=60, module=MODULE)
    page = open_chat(context, server.url)
    ask(page, PROMPT)
    wait_for_length(page, 300)
    seen = len(assistant_texts(page)[-1])
    page.reload()
    expected = answer_text(PROMPT)
    wait_for_length(page, len(expected))
    assert assistant_texts(page) == [expected]  # one answer, all of it, once
    lengths: list[int] = [n for n in page.evaluate("window.__lengths") if n]
    assert lengths[0] >= seen, (lengths[:5], seen)  # it came back at least as long as it was
    assert lengths == sorted(lengths), lengths  # and never shrank
    assert server.stats()["runs"] == {page.evaluate("sessionStorage.getItem('chat-id')"): 1}


def test_a_reload_just_after_the_end_shows_the_answer_once(
    bundle: None, context: BrowserContext, make_server: Any
) -> None:
    server = make_server(speed=400, module=MODULE)
    page = open_chat(context, server.url)
    ask(page, PROMPT)
    wait_for_status(page, "streaming")
    wait_for_status(page, "ready")
    page.reload()
    page.wait_for_selector("#messages li[data-role='assistant']")
    time.sleep(0.5)  # (a resume that wrongly replayed the answer would have added it by now)
    assert assistant_texts(page) == [answer_text(PROMPT)]
    assert len(page.query_selector_all("#messages li[data-role='user']")) == 1


@contextlib.contextmanager
def cutting_proxy(port: int) -> Iterator[tuple[str, Any]]:
    """A TCP proxy in front of ``port`` on a loop of its own: its URL, and a function that cuts every connection
    through it (as a dropped network does: the browser sees its response fail)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="cutting proxy")
    thread.start()
    proxy = FaultProxy(port)
    try:
        asyncio.run_coroutine_threadsafe(proxy.__aenter__(), loop).result(10)
        yield f"http://127.0.0.1:{proxy.port}/", lambda: loop.call_soon_threadsafe(proxy.cut)
        asyncio.run_coroutine_threadsafe(proxy.__aexit__(None, None, None), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_a_dropped_connection_resumes_by_itself(bundle: None, context: BrowserContext, make_server: Any) -> None:
    server = make_server(speed=60, module=MODULE)
    with cutting_proxy(server.port) as (url, cut):
        dropped_and_resumed(context, server, url, cut)


def dropped_and_resumed(context: BrowserContext, server: Any, url: str, cut: Any) -> None:
    page = open_chat(context, url)
    resumes: list[str] = []
    page.on(
        "request",
        lambda request: (
            resumes.append(request.headers.get("last-event-id", ""))
            if request.method == "GET" and request.url.endswith("/stream")
            else None
        ),
    )
    ask(page, PROMPT)
    wait_for_length(page, 200)
    resumes.clear()  # (the page's load asked once, and got 204)
    cut()
    expected = answer_text(PROMPT)
    wait_for_length(page, len(expected))
    wait_for_status(page, "ready")
    assert assistant_texts(page) == [expected]
    lengths: list[int] = [n for n in page.evaluate("window.__lengths") if n]
    assert lengths == sorted(lengths), lengths
    assert server.stats()["runs"] == {page.evaluate("sessionStorage.getItem('chat-id')"): 1}
    assert resumes and all(resumes), resumes  # the transport asked for the rest, with its last id
