"""The FastAPI chat example over HTTP (no browser), under uvicorn: the routes the page uses keep the promises the
README makes for them, as the aiohttp example's do (tests/test_chat_example.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the example lives beside the package, not inside it
    sys.path.insert(0, str(ROOT))

from examples.aiohttp_chat.fake_llm import answer_text  # noqa: E402
from examples.fastapi_chat import create_app  # noqa: E402

from ._live_server import Uvicorn  # noqa: E402
from .helpers import parse  # noqa: E402

PROMPT = "How do resumable streams work?"


@pytest.fixture
async def chat() -> AsyncIterator[tuple[aiohttp.ClientSession, Uvicorn]]:
    async with Uvicorn(create_app(speed=0)) as server, aiohttp.ClientSession(base_url=server.url("")) as session:
        yield session, server


async def post(session: aiohttp.ClientSession, path: str, body: Any = None) -> tuple[int, Any]:
    async with session.post(path, json=body) as response:
        return response.status, await response.json()


async def test_an_answer_is_started_once_and_read_to_done_on_both_engines(
    chat: tuple[aiohttp.ClientSession, Uvicorn],
) -> None:
    session, _ = chat
    for n, engine in enumerate(["async", "blocking"]):
        ask = {"conversation": "c1", "message": f"m{n}", "prompt": PROMPT, "engine": engine}
        assert await post(session, "/api/answers", ask) == (
            201,
            {"stream_id": f"c1.m{n}", "url": f"/stream/c1.m{n}", "started": True},
        )
        assert (await post(session, "/api/answers", ask))[1]["started"] is False  # a reload repeats the POST
        async with session.get(f"/stream/c1.m{n}") as response:
            events = parse(await response.read())
        assert "".join(e.data for e in events[:-1]) == answer_text(PROMPT)
        assert events[-1].event == "done"
    async with session.get("/api/stats") as response:
        stats = await response.json()
    assert stats["runs_by_stream"] == {"c1.m0": 1, "c1.m1": 1}
    assert stats["stream_requests"] == 2


async def test_stop_cancels_and_unknown_streams_are_refused(chat: tuple[aiohttp.ClientSession, Uvicorn]) -> None:
    session, server = chat
    slow = create_app(speed=20)
    async with Uvicorn(slow) as slow_server, aiohttp.ClientSession(base_url=slow_server.url("")) as slow_session:
        await post(slow_session, "/api/answers", {"conversation": "c", "message": "m", "prompt": PROMPT})
        async with slow_session.get("/stream/c.m") as response:
            first = await response.content.readuntil(b"\n\n")
            assert first.startswith(b"retry: 2000\nid: ")  # the retry field rides on the first event
            assert parse(first)[0].data == "You"
            assert await post(slow_session, "/api/answers/c.m/stop") == (200, {"stream_id": "c.m", "cancelled": True})
            events = parse(await asyncio.wait_for(response.read(), 5))
        assert events[-1].event == "cancelled"
    async with session.get("/stream/never.asked") as response:
        assert response.status == 403  # not a message this app started
    async with session.get("/stream/never.asked", headers={"Last-Event-ID": "0123456789abcdef-3"}) as response:
        assert response.status == 410
    assert (await post(session, "/api/answers", {"conversation": "x y"}))[0] == 400
    assert server.port > 0


def test_the_example_runs_with_one_command_and_prints_its_url() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.fastapi_chat", "--port", "0", "--speed", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("resumable-sse chat example, FastAPI (memory store): open http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1].strip()
        import urllib.request

        with urllib.request.urlopen(url, timeout=5) as response:
            assert b"<html" in response.read()
    finally:
        process.terminate()
        # uvicorn shuts down, then re-raises the SIGTERM it caught, as a process that did not catch it would end
        assert process.wait(timeout=10) in (0, -15)
        process.stdout.close()
