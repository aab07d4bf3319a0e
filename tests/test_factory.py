"""resumable-sse 0.1 compatibility: ``resumable_sse.factory.get_streamer`` and its ``stream()``.

The 0.1 snippet (tests/legacy_app.py, verbatim) is served by uvicorn and read over real HTTP; the new guarantees are
checked on it: one generator run per session, a refresh replays, a finished session is not generated again.
``last_id`` is checked on ``stream()`` itself, on the memory store and on a private Redis server.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import sys
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from sse_starlette.sse import AppStatus

from resumable_sse import Streamer
from resumable_sse.factory import LegacyStreamer, get_streamer

from ._live_server import Uvicorn
from .helpers import parse

NAME = "tests.legacy_app"
WARNING = r"deprecated: serve streams with resumable_sse\.starlette\.resumable_endpoint.*Migrating from 0\.1"


def fresh_legacy_app() -> ModuleType:
    """tests/legacy_app.py imported anew (a new app and memory store); its import warns as 0.1 code should."""
    loaded = sys.modules.get("tests.legacy_app")
    load = functools.partial(importlib.reload, loaded) if loaded else functools.partial(importlib.import_module, NAME)
    with pytest.warns(DeprecationWarning, match=WARNING):
        return load()


def legacy_streamer(**options: Any) -> LegacyStreamer:
    with pytest.warns(DeprecationWarning, match=WARNING):
        return get_streamer(**options)


@pytest.fixture
async def legacy() -> AsyncIterator[tuple[ModuleType, str]]:
    """The 0.1 application under uvicorn: (its module, its base URL)."""
    # sse-starlette before 2.2 (the only ones that run on Starlette 0.37, our floor) keeps one exit event per process,
    # made in the event loop that first serves it: each test has a loop of its own, so each starts without one (newer
    # sse-starlette has no such class attribute)
    if getattr(AppStatus, "should_exit_event", None) is not None:
        AppStatus.should_exit_event = None
    module = fresh_legacy_app()
    async with Uvicorn(module.app) as server:
        yield module, server.url("")
    await module.streamer.streamer.close()


async def get_body(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        return await asyncio.wait_for(response.read(), 10)


async def test_the_01_snippet_streams_every_token_then_done_with_ids(legacy: tuple[ModuleType, str]) -> None:
    module, base = legacy
    async with aiohttp.ClientSession() as session:
        body = await get_body(session, f"{base}/stream?session_id=s1")
    events = parse(body.replace(b"\r\n", b"\n"))  # sse-starlette ends lines with CRLF
    state = await module.streamer.streamer.status("s1")
    assert state is not None
    assert [e.data for e in events] == [*module.TOKENS, '{"state":"done"}']
    assert [e.id for e in events] == [f"{state.epoch}-{n}" for n in range(1, len(module.TOKENS) + 2)]
    assert [e.event for e in events] == [None] * len(module.TOKENS) + ["done"]
    assert module.RUNS == ["run"]


async def test_a_refresh_replays_and_a_finished_session_is_not_generated_again(
    legacy: tuple[ModuleType, str],
) -> None:
    module, base = legacy
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/stream?session_id=s2") as first:  # a refresh mid-stream: leave early
            await first.content.readuntil(b"\r\n\r\n")
        bodies = [await get_body(session, f"{base}/stream?session_id=s2") for _ in range(3)]
    assert len(set(bodies)) == 1  # the same events, same ids, each time: replayed from the log
    assert [e.data for e in parse(bodies[0].replace(b"\r\n", b"\n"))][:-1] == module.TOKENS
    assert module.RUNS == ["run"]


async def test_concurrent_first_requests_run_the_generator_once(legacy: tuple[ModuleType, str]) -> None:
    module, base = legacy
    async with aiohttp.ClientSession() as session:
        bodies = await asyncio.gather(*(get_body(session, f"{base}/stream?session_id=s3") for _ in range(10)))
    assert len(set(bodies)) == 1
    assert module.RUNS == ["run"]


def test_get_streamer_warns_and_checks_its_arguments() -> None:
    with pytest.warns(DeprecationWarning, match="resumable_sse.starlette.resumable_endpoint"):
        legacy = get_streamer()
    assert isinstance(legacy, LegacyStreamer)
    assert isinstance(legacy.streamer, Streamer)
    for bad, message in [
        ({"backend": "redis"}, "needs redis_client"),
        ({"backend": "memory", "redis_client": object()}, "only used with backend='redis'"),
        ({"backend": "sqlite"}, "unknown backend"),
    ]:
        with pytest.raises(ValueError, match=message):
            legacy_streamer(**bad)


async def tokens(count: int, runs: list[int] | None = None) -> AsyncIterator[str]:
    if runs is not None:
        runs.append(1)
    for i in range(count):
        yield f"t{i}"


async def drain(legacy: LegacyStreamer, session_id: str, last_id: str | None = "0", **kw: Any) -> list[dict[str, str]]:
    return [item async for item in legacy.stream(session_id, tokens(5, kw.get("runs")), last_id=last_id)]


async def check_last_id_semantics(legacy: LegacyStreamer) -> None:
    runs: list[int] = []
    full = await drain(legacy, "sess", runs=runs)
    epoch = full[0]["id"].split("-")[0]
    assert full == [
        *({"id": f"{epoch}-{n + 1}", "data": f"t{n}"} for n in range(5)),
        {"id": f"{epoch}-6", "event": "done", "data": '{"state":"done"}'},
    ]
    assert await drain(legacy, "sess", last_id=f"{epoch}-2", runs=runs) == full[2:]  # exactly after it
    assert await drain(legacy, "sess", last_id=f"{epoch}-6", runs=runs) == []  # the end: nothing more
    assert await drain(legacy, "sess", last_id="", runs=runs) == full
    assert await drain(legacy, "sess", last_id=None, runs=runs) == full
    # an id of another life, or one in 0.1's own format: a reset, then the whole session again
    for other in ["0123456789abcdef-3", "1700000000000-0"]:
        replay = await drain(legacy, "sess", last_id=other, runs=runs)
        assert replay[0]["event"] == "reset"
        assert "id" not in replay[0]
        assert json.loads(replay[0]["data"]) == {"reason": "epoch", "first_id": f"{epoch}-1"}
        assert replay[1:] == full
    assert runs == [1]  # every call but the first was served from the log


async def test_last_id_resumes_exactly_on_the_memory_store() -> None:
    legacy = legacy_streamer(backend="memory")
    async with legacy.streamer:
        await check_last_id_semantics(legacy)


@pytest.mark.redis
async def test_last_id_resumes_exactly_on_redis_with_a_redis_client() -> None:
    import redis.asyncio

    from .redis_servers import shared_server, unique_prefix

    client = redis.asyncio.Redis.from_url(shared_server().url)
    legacy = legacy_streamer(backend="redis", redis_client=client, key_prefix=unique_prefix())
    try:
        async with legacy.streamer:
            await check_last_id_semantics(legacy)
    finally:
        await client.aclose()


async def test_an_unused_generator_object_is_closed_and_an_expired_session_runs_again() -> None:
    legacy = legacy_streamer(backend="memory", ttl=0.2)
    async with legacy.streamer:
        first = await drain(legacy, "exp")
        closed: list[str] = []

        async def never_run() -> AsyncIterator[str]:
            try:
                yield "never"
            finally:
                closed.append("closed")

        generator = never_run()
        await generator.asend(None)  # started, so that closing it runs its finally
        assert [item async for item in legacy.stream("exp", generator)] == first
        assert closed == ["closed"]
        await asyncio.sleep(0.5)  # the finished session expires
        runs: list[int] = []
        again = await drain(legacy, "exp", last_id=first[1]["id"], runs=runs)
        assert runs == [1]
        assert again[0]["event"] == "reset"
        assert json.loads(again[0]["data"])["reason"] == "epoch"
        assert [item["data"] for item in again[1:]] == [item["data"] for item in first]
        assert again[1]["id"] != first[0]["id"]  # a new life of the session: a new epoch


def test_the_keywords_of_01_storage_are_accepted_and_ignored_with_a_warning() -> None:
    """0.1's get_streamer took stream_prefix, status_prefix and end_marker: an app passing them still starts."""
    with pytest.warns(DeprecationWarning, match="resumable-sse 0.1") as warned:
        legacy = get_streamer(backend="memory", stream_prefix="stream:chat", status_prefix="s:", end_marker="[END]")
    assert isinstance(legacy, LegacyStreamer)
    messages = [str(warning.message) for warning in warned]
    assert any("stream_prefix, status_prefix, end_marker" in message and "ignored" in message for message in messages)


async def test_a_plain_iterable_runs_in_a_worker_thread_as_in_01() -> None:
    """0.1 iterated a plain (sync) iterable in a thread pool; so does this version, off the event loop."""
    import threading

    threads: list[str] = []

    def blocking_tokens() -> Any:
        for i in range(3):
            threads.append(threading.current_thread().name)
            yield f"b{i}"

    legacy = legacy_streamer(backend="memory")
    async with legacy.streamer:
        got = [item async for item in legacy.stream("plain", blocking_tokens())]
        assert [item["data"] for item in got[:-1]] == ["b0", "b1", "b2"]
        assert got[-1]["event"] == "done"
        assert threading.main_thread().name not in threads  # never on the event loop's thread
        epoch = got[0]["id"].split("-")[0]
        unused = blocking_tokens()
        next(unused)  # started, so that closing it shows
        assert [item async for item in legacy.stream("plain", unused, last_id=f"{epoch}-4")] == []  # at the end
        assert unused.gi_frame is None  # closed unused: another request produced the session


async def test_any_string_is_a_session_id_as_in_01() -> None:
    """0.1 took any session id; one that is no valid stream id is stored under a digest of it, the same every time."""
    legacy = legacy_streamer(backend="memory")
    async with legacy.streamer:
        for session_id in ["user@example.com", "a/b", "chat 1", "x" * 300, "sess"]:
            runs: list[int] = []
            first = await drain(legacy, session_id, runs=runs)
            assert [item["data"] for item in first[:-1]] == [f"t{n}" for n in range(5)]
            again = await drain(legacy, session_id, runs=runs)
            assert again == first  # replayed from the same stream: not generated again
            assert await drain(legacy, session_id, last_id=first[1]["id"], runs=runs) == first[2:]
            assert runs == [1]
