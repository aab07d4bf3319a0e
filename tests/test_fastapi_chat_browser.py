"""The chat page served by FastAPI (``python -m examples.fastapi_chat``, resumable_endpoint under uvicorn) in headless
Chromium: EventSource and the browser helper resume through the ASGI endpoint exactly as through aiohttp's.

The machinery (Chromium, the server subprocess, the page helpers) is tests/test_chat_browser.py's; see its
docstring for what the tests need and how they skip or fail without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from . import test_chat_browser as chat
from .test_chat_browser import (
    PROMPT,
    SECOND_PROMPT,
    CuttableProxy,
    answer,
    answer_text,
    ask,
    screenshot,
    stream_requests,
    wait_for_status,
    wait_for_text,
)

browser, context, make_server = chat.browser, chat.context, chat.make_server  # the same fixtures

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Request

pytestmark = pytest.mark.browser

FASTAPI = "examples.fastapi_chat"


def test_fastapi_an_answer_streams_in_full_on_both_engines(context: BrowserContext, make_server: Any) -> None:
    server = make_server(speed=250, module=FASTAPI)
    page = context.new_page()
    page.goto(server.url)
    ask(page, PROMPT)
    wait_for_status(page, "done")
    assert answer(page)["text"] == answer_text(PROMPT)
    ask(page, SECOND_PROMPT, engine="blocking")  # a plain generator, run in a worker thread
    page.wait_for_selector(".answer >> nth=1")
    wait_for_status(page, "done", index=1)
    assert answer(page, 1)["text"] == answer_text(SECOND_PROMPT)
    assert sorted(server.stats()["runs_by_stream"].values()) == [1, 1]


def test_fastapi_reloading_mid_answer_resumes_without_generating_again(
    context: BrowserContext, make_server: Any
) -> None:
    server = make_server(speed=60, module=FASTAPI)
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
        restored = answer(page)  # at once, from localStorage; the rest comes from the server
        assert restored["streamId"] == before["streamId"]
        assert expected.startswith(restored["text"])
        assert len(restored["text"]) >= len(before["text"])
        shown = len(restored["text"])
    wait_for_status(page, "done")
    final = answer(page)
    assert final["text"] == expected  # no token repeated or missing across two reloads
    assert server.stats()["runs_by_stream"] == {final["streamId"]: 1}  # generated exactly once
    assert "last_event_id=" not in requests[0]
    assert len([url for url in requests[1:] if "last_event_id=" in url]) >= 2, requests
    screenshot(page, "fastapi-reloaded")


def test_fastapi_a_dropped_connection_resumes_with_last_event_id(context: BrowserContext, make_server: Any) -> None:
    server = make_server(speed=60, module=FASTAPI)
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
    assert final["text"] == answer_text(PROMPT)
    assert server.stats()["runs_by_stream"] == {final["streamId"]: 1}
    assert len(headers) == 2, headers  # EventSource reconnected by itself, with the Last-Event-ID header
    assert "last-event-id" not in headers[0]
    assert int(headers[1].get("last-event-id", "x-0").split("-")[1]) >= 10
