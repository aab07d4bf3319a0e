"""User code never breaks the engine: an observer hook, ``authorize``, a ``stream_id`` function or a log handler or
filter that raises changes nothing it was called about. The stream still ends as its producer decided, every reader
gets every event and the terminal, the Redis group commit settles every append, ``close()`` returns promptly; the
failure is logged once per hook (logger ``resumable_sse``, with the stream id and the hook's name), then counted.

Also here: a request with no position never fails because a finished stream expires under it (it is absent then).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import resumable_sse
from resumable_sse import Claim, MemoryStore, Observer, Streamer, resumable_handler
from resumable_sse._logger import logger as engine_logger

from ._adapters import Harness, Route
from .conftest import StoreFactory
from .helpers import parse, serve

HOOKS = [
    "stream_started",
    "stream_ended",
    "events_appended",
    "reader_opened",
    "reader_closed",
    "reader_served",
    "request",
    "store_call",
]
TOKENS = [f"t{i}" for i in range(6)]
DONE = '{"state":"done"}'


def broken_observer(hook: str) -> Observer:
    """An observer whose ``hook`` raises at every call (its other methods do nothing)."""

    def fail(self: Observer, *args: Any) -> None:
        raise RuntimeError(f"{hook} is broken")

    return type("Broken", (Observer,), {hook: fail})()  # type: ignore[no-any-return]


async def paced(_request: web.Request | None = None) -> AsyncIterator[str]:
    """Paced: readers wait on the live tail, so each event is delivered in the step that appended it (on Redis, in
    the group commit)."""
    for token in TOKENS:
        await asyncio.sleep(0.01)
        yield token


async def get(session: aiohttp.ClientSession, url: str, **options: Any) -> tuple[int, bytes]:
    async with session.get(url, **options) as response:
        return response.status, await asyncio.wait_for(response.read(), 10)


def records_of(caplog: pytest.LogCaptureFixture, hook: str) -> list[logging.LogRecord]:
    """The ERROR records that report a failure of ``hook``."""
    return [
        r
        for r in caplog.records
        if r.name == "resumable_sse" and r.levelno == logging.ERROR and getattr(r, "hook", None) == hook
    ]


@pytest.mark.parametrize("hook", HOOKS)
async def test_an_observer_hook_that_raises_changes_nothing_it_observes(
    make_store: StoreFactory, hook: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = await make_store()
    streamer = Streamer(store, observer=broken_observer(hook), lease=30.0)
    app = web.Application()
    app.router.add_get("/s/{stream_id}", resumable_handler(paced, streamer=streamer))
    runner, port = await serve(app)
    base = f"http://127.0.0.1:{port}/s"
    try:
        async with aiohttp.ClientSession() as session:
            # Three streams at once, each with two readers: on Redis their appends share group commits.
            answers = await asyncio.gather(*(get(session, f"{base}/x{i % 3}") for i in range(6)))
            for status, body in answers:
                assert status == 200, body
                events = parse(body)
                assert [event.data for event in events] == [*TOKENS, DONE]
            for i in range(3):
                producer = streamer.producer(f"x{i}")
                assert producer is None or await asyncio.wait_for(producer.wait(), 5) == "done"
                state = await streamer.status(f"x{i}")
                assert state is not None and state.status == "done" and state.last_seq == len(TOKENS) + 1
            # A reconnect with the terminal's id: 204, as for any finished stream.
            last_id = parse(answers[0][1])[-1].id
            assert (await get(session, f"{base}/x0", headers={"Last-Event-ID": str(last_id)}))[0] == 204
    finally:
        await runner.cleanup()
    started = time.monotonic()
    await asyncio.wait_for(streamer.close(), 5)
    assert time.monotonic() - started < 2
    name = f"Observer.{hook}"
    assert streamer.hook_failures[name] >= 3  # it raised at every call...
    [logged] = records_of(caplog, name)  # ...and was logged once, with its traceback and the stream id
    assert logged.levelno == logging.ERROR and logged.exc_info is not None
    assert getattr(logged, "stream_id", "missing") in ({None} if hook == "store_call" else {"x0", "x1", "x2"})
    [total] = [r for r in caplog.records if r.levelno == logging.WARNING and getattr(r, "hook", None) == name]
    assert total.getMessage() == f"{name} raised {streamer.hook_failures[name]} times in all"  # said at close()


async def test_reader_served_raising_in_a_group_commit_leaves_no_append_unsettled(
    make_store: StoreFactory,
) -> None:
    # Many paced streams at once with live readers: on Redis, each append's delivery to the waiting readers (which
    # reports reader_served) happens in the group commit, for many streams per commit.
    streamer = Streamer(await make_store(), observer=broken_observer("reader_served"), lease=30.0)
    app = web.Application()
    app.router.add_get("/s/{stream_id}", resumable_handler(paced, streamer=streamer))
    runner, port = await serve(app)
    try:
        async with aiohttp.ClientSession() as session:
            answers = await asyncio.wait_for(
                asyncio.gather(*(get(session, f"http://127.0.0.1:{port}/s/g{i % 20}") for i in range(40))), 20
            )
        assert all(status == 200 and [e.data for e in parse(body)] == [*TOKENS, DONE] for status, body in answers)
        for i in range(20):
            producer = streamer.producer(f"g{i}")
            assert producer is None or await asyncio.wait_for(producer.wait(), 5) == "done"
    finally:
        await runner.cleanup()
    await asyncio.wait_for(streamer.close(), 5)
    assert streamer.hook_failures["Observer.reader_served"] >= 40


class _RaisingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        raise RuntimeError("the log filter is broken")


class _RaisingHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise RuntimeError("the log handler is broken")


async def failing(_request: web.Request | None = None) -> AsyncIterator[str]:
    for token in TOKENS[:2]:
        await asyncio.sleep(0.01)
        yield token
    raise ValueError("the model broke")  # logged by the engine (with its traceback)


@pytest.mark.parametrize("kind", ["filter", "handler"])
async def test_a_log_filter_or_handler_that_raises_breaks_nothing(
    make_store: StoreFactory, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = logging.getLogger("resumable_sse")
    broken: Any = _RaisingFilter() if kind == "filter" else _RaisingHandler()
    before = engine_logger.failures
    streamer = Streamer(await make_store(), observer=broken_observer("reader_served"), lease=30.0)
    app = web.Application()
    app.router.add_get("/s/{stream_id}", resumable_handler(failing, streamer=streamer))
    runner, port = await serve(app)
    (target.addFilter if kind == "filter" else target.addHandler)(broken)
    try:
        async with aiohttp.ClientSession() as session:
            # The producer raises (logged), a hook raises (logged), each in the engine's own steps.
            answers = await asyncio.gather(*(get(session, f"http://127.0.0.1:{port}/s/f{i % 2}") for i in range(4)))
            for status, body in answers:
                assert status == 200
                events = parse(body)
                assert [e.data for e in events[:-1]] == TOKENS[:2]
                assert (events[-1].event, events[-1].data) == (
                    "error",
                    '{"state":"error","message":"the stream failed"}',
                )
            streamer.end_readers()  # a refusal that logs a warning: still 503, not a failed request
            assert (await get(session, f"http://127.0.0.1:{port}/s/other"))[0] == 503
    finally:
        (target.removeFilter if kind == "filter" else target.removeHandler)(broken)
        await runner.cleanup()
    await asyncio.wait_for(streamer.close(), 5)
    assert engine_logger.failures > before  # the records were dropped, and counted
    assert capsys.readouterr().err.count("a handler or filter of the resumable_sse logger raised") <= 1  # said once


@pytest.mark.parametrize("adapter", ["aiohttp", "starlette"])
async def test_a_raising_authorize_or_stream_id_function_fails_that_request_alone(
    adapter: str, caplog: pytest.LogCaptureFixture
) -> None:
    def authorize(_request: Any, stream_id: str) -> bool:
        if stream_id == "cursed":
            raise RuntimeError("the permission service is down")
        return True

    def stream_id(request: Any) -> str:
        query = request.query if adapter == "aiohttp" else request.query_params
        if query.get("id") == "boom":
            raise RuntimeError("the session lookup is broken")
        return str(query["id"])

    harness = Harness(adapter)
    streamer = Streamer(MemoryStore())
    try:
        client = await harness.serve(
            [
                Route("/a/{stream_id}", harness.endpoint(paced, authorize=authorize)),
                Route("/b", harness.endpoint(paced, stream_id=stream_id)),
            ],
            streamer,
        )
        cursed = [await client.get("/a/cursed") for _ in range(2)]
        boom = await client.get("/b", params={"id": "boom"})
        for response in [*cursed, boom]:
            assert response.status == 500
            assert await response.text() == "the server could not answer this request\n"
        for path, options in [("/a/fine", {}), ("/b", {"params": {"id": "also-fine"}})]:
            response = await client.get(path, **options)
            assert response.status == 200
            assert [e.data for e in parse(await asyncio.wait_for(response.read(), 10))] == [*TOKENS, DONE]
        assert await streamer.status("cursed") is None  # nothing started for a request that failed
    finally:
        await harness.close()
    assert dict(streamer.hook_failures) == {"authorize": 2, "stream_id": 1}
    [authorize_log] = records_of(caplog, "authorize")
    [stream_id_log] = records_of(caplog, "stream_id")
    assert getattr(authorize_log, "stream_id", None) == "cursed" and authorize_log.exc_info is not None
    assert hasattr(stream_id_log, "stream_id") and stream_id_log.exc_info is not None


# -- expiry: a request with no position ------------------------------------------------------------------------------


async def quick(_request: web.Request | None = None) -> AsyncIterator[str]:
    for token in TOKENS[:3]:
        yield token


async def test_a_stream_that_expires_between_the_claim_and_the_first_read_is_absent() -> None:
    # Deterministic, on the memory store's clock: the claim finds the finished stream; it expires before the request
    # reads it. The request then starts it anew (200, a whole new run), never 410 or lost.
    now = [0.0]

    class ExpiresAfterTheClaim(MemoryStore):
        expire = False

        async def claim(self, stream_id: str, token: str, lease: float) -> Claim:
            claim = await super().claim(stream_id, token, lease)
            if self.expire and not claim.acquired:
                self.expire = False
                now[0] += 11.0  # past the ttl
            return claim

    store = ExpiresAfterTheClaim(ttl=10, clock=lambda: now[0])
    streamer = Streamer(store)
    app = web.Application()
    app.router.add_get("/s/{stream_id}", resumable_handler(quick, streamer=streamer))
    runner, port = await serve(app)
    try:
        async with aiohttp.ClientSession() as session:
            status, body = await get(session, f"http://127.0.0.1:{port}/s/e")
            assert status == 200
            first = parse(body)
            store.expire = True
            status, body = await get(session, f"http://127.0.0.1:{port}/s/e")
            assert status == 200, body
            second = parse(body)
    finally:
        await runner.cleanup()
    await streamer.close()
    assert [e.data for e in first] == [e.data for e in second] == [*TOKENS[:3], DONE]
    assert str(first[0].id).split("-")[0] != str(second[0].id).split("-")[0]  # a new run (a new epoch)


async def test_requests_with_no_position_across_many_expiries_all_end_done(make_store: StoreFactory) -> None:
    # A short ttl: the stream finishes, expires and is created again many times while requests keep coming. Each
    # request must be a whole run ending done: never 410 (EventSource would stop for good), 204 or lost. (The ttl
    # stays above what a loaded loop takes to serve one response: a reader that has not read a stream by the time
    # it expires is told it is lost, honestly.)
    streamer = Streamer(await make_store(ttl=0.25), lease=30.0)
    app = web.Application()
    app.router.add_get("/s/{stream_id}", resumable_handler(quick, streamer=streamer))
    runner, port = await serve(app)
    url = f"http://127.0.0.1:{port}/s/brief"
    answers: list[tuple[int, bytes]] = []

    async def client(session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            answers.append(await get(session, url))

    try:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(client(session) for _ in range(8)))
    finally:
        await runner.cleanup()
    await streamer.close()
    statuses = [status for status, _ in answers]
    assert statuses.count(200) == len(answers), {s: statuses.count(s) for s in set(statuses)}
    bodies = [parse(body) for _, body in answers]
    wrong = [events for events in bodies if [e.data for e in events] != [*TOKENS[:3], DONE]]
    assert wrong == []
    epochs = {str(events[0].id).split("-")[0] for events in bodies}
    assert len(epochs) >= 10, len(epochs)  # it did expire and start again, many times


def test_every_engine_module_logs_through_the_guarded_logger() -> None:
    # The mechanism, not a list of call sites: a module that took the plain logger would let a raising filter or
    # handler into the engine again. (The client, logger resumable_sse.client, runs in the application, not here.)
    source = Path(resumable_sse.__file__).parent
    plain = [
        str(path.relative_to(source))
        for path in sorted(source.rglob("*.py"))
        if path.name != "_logger.py" and 'getLogger("resumable_sse")' in path.read_text()
    ]
    assert plain == []
