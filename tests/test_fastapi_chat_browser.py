"""The chat page served by FastAPI (``python -m examples.fastapi_chat``, resumable_endpoint under uvicorn) in headless
Chromium: EventSource and the browser helper resume through the ASGI endpoint exactly as through aiohttp's.

The machinery (Chromium, the server subprocess, the page helpers) is tests/test_chat_browser.py's; see its
docstring for what the tests need and how they skip or fail without it. The dropped-connection case runs there, on
both examples, and so does the reload mid-answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from . import test_chat_browser as chat
from .test_chat_browser import (
    PROMPT,
    SECOND_PROMPT,
    answer,
    answer_text,
    ask,
    wait_for_status,
)

browser, context, make_server = chat.browser, chat.context, chat.make_server  # the same fixtures

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

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
