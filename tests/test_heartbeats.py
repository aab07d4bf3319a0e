"""Heartbeats: one timer per loop and interval writes every quiet connection's ``: ping``; a heartbeat that could
wait goes through the connection's own task, bounded like any write; an ended response is never written to or kept.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
import weakref
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from resumable_sse import resumable_handler
from resumable_sse._heartbeats import MESSAGE as HEARTBEAT
from resumable_sse._heartbeats import heartbeats
from resumable_sse.aiohttp import ResumableResponse

from .helpers import body_of, serve

INTERVAL = 0.2


async def quiet(_request: web.Request) -> AsyncIterator[str]:
    await asyncio.sleep(3600)
    yield "never"


async def test_many_quiet_connections_each_get_a_ping_every_interval_from_one_timer() -> None:
    app = web.Application()
    app.router.add_get("/stream/{stream_id}", resumable_handler(quiet, heartbeat=INTERVAL))
    runner, port = await serve(app)
    pings: dict[int, list[float]] = {}

    async def read(index: int, session: aiohttp.ClientSession) -> None:
        async with session.get(f"http://127.0.0.1:{port}/stream/q{index}") as response:
            buffer = b""
            while True:
                buffer += await response.content.readany()
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    assert line == b": ping"  # exact bytes (one comment line), nothing else on a quiet stream
                    pings.setdefault(index, []).append(time.monotonic())

    try:
        async with aiohttp.ClientSession() as session:
            readers = [asyncio.ensure_future(read(i, session)) for i in range(50)]
            await asyncio.sleep(INTERVAL * 6.5)
            # One timer for all of them: the loop's heartbeats hold one interval with every connection queued.
            group = heartbeats().intervals[INTERVAL]
            assert len(group.queue) == 50 and group.timer is not None
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    finally:
        await runner.cleanup()
    assert sorted(pings) == list(range(50))
    for times in pings.values():
        assert 4 <= len(times) <= 7
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        # Never more often than the interval; late by at most a 64th of it, give or take a busy machine.
        assert all(INTERVAL * 0.9 <= gap <= INTERVAL * 2 for gap in gaps), gaps


async def test_a_quiet_connections_heartbeats_make_no_task() -> None:
    """What makes a heartbeat cheap: the loop's one timer writes it, no task of the response wakes for it (a task
    that slept a period per heartbeat made a timer, a future and a coroutine each time)."""
    seen: dict[str, object] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        response = ResumableResponse(heartbeat=0.05)
        await response.prepare(request)
        await asyncio.sleep(0.01)
        seen["tasks before"] = set(asyncio.all_tasks())
        await asyncio.sleep(0.4)
        seen["tasks after"] = set(asyncio.all_tasks())
        response.stop_streaming()
        await response.write_eof()
        return response

    body = await body_of(handler)
    assert body.count(HEARTBEAT) >= 5 and body == HEARTBEAT * body.count(HEARTBEAT)
    assert seen["tasks before"] == seen["tasks after"]


async def test_a_heartbeat_that_could_wait_is_written_by_a_task_of_its_own() -> None:
    writes: list[tuple[bytes, str]] = []

    class Recording(ResumableResponse):
        async def write(self, data: bytes | bytearray | memoryview) -> None:
            task = asyncio.current_task()
            writes.append((bytes(data), "" if task is None else task.get_name()))
            await super().write(data)

    async def handler(request: web.Request) -> web.StreamResponse:
        response = Recording(heartbeat=0.05)
        await response.prepare(request)
        await asyncio.sleep(0.01)  # it has joined the timer's queue
        await response.write(b"data: 0\n\n")
        response.started = [asyncio.get_running_loop().time()]  # a write in progress: the timer must not write
        await asyncio.sleep(0.07)
        response.started = None
        await asyncio.sleep(0.12)
        response.stop_streaming()
        await response.write_eof()
        return response

    body = await body_of(handler)
    # The heartbeat due during the write went through write() (bounded), from a task of its own; the next ones
    # went out from the timer again (not through write()).
    assert writes[1:] == [(HEARTBEAT, "resumable-sse heartbeat")]
    assert body.startswith(b"data: 0\n\n" + HEARTBEAT)
    assert body.replace(HEARTBEAT, b"") == b"data: 0\n\n" and body.count(HEARTBEAT) >= 3


async def test_an_ended_response_gets_no_heartbeat_and_is_not_kept() -> None:
    kept: list[weakref.ReferenceType[ResumableResponse]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = ResumableResponse(heartbeat=0.05)
        await response.prepare(request)
        await asyncio.sleep(0.01)  # its heartbeat task has joined the timer's queue
        assert response.heartbeat_ref is not None
        await response.write(b"data: 0\n\n")
        await response.write_eof()
        assert not response.beat()  # ended: never written to again (the connection may serve another request)
        response.stop_streaming()
        kept.append(weakref.ref(response))
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    runner, port = await serve(app)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):  # one keep-alive connection, reused
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    assert await response.read() == b"data: 0\n\n"
            await asyncio.sleep(0.15)
    finally:
        await runner.cleanup()
    gc.collect()
    assert len(kept) == 3 and all(ref() is None for ref in kept)
    assert 0.05 not in heartbeats().intervals
