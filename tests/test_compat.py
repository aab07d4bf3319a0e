"""What resumable-sse assumes of its dependencies beyond their documented API, checked against the installed
versions (each test fails the day an assumption stops holding), and the bound it gives the kernel.

- ``_compat_aiohttp``: aiohttp's write completes in the step that calls it; if it ever waits before writing, that
  is detected and the chunk goes the awaited way (never dropped). aiohttp's writer sets known attributes late.
- ``send_timeout`` is the socket's ``TCP_USER_TIMEOUT`` on every aiohttp-sse version (2.x sets none, 3.x its own).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter

from resumable_sse import _compat_aiohttp, resumable_handler
from resumable_sse.aiohttp import ResumableResponse

from .helpers import body_of, parse, serve


async def test_aiohttps_write_completes_in_the_step_that_calls_it() -> None:
    """The assumption behind ``write_at_once``: with an empty socket buffer, ``StreamResponse.write`` hands the data
    to the transport and returns without suspending (if this fails, aiohttp changed: the fast path is off)."""
    steps: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for data in (b"first\n", b"x" * 60_000, b"last\n"):
            write = response.write(data)
            try:
                write.send(None)
            except StopIteration:
                steps.append("completed")
            else:
                write.close()
                steps.append("suspended")
            await asyncio.sleep(0.01)  # the socket drains
        await response.write_eof()
        return response

    body = await body_of(handler)
    assert steps == ["completed"] * 3
    assert body == b"first\n" + b"x" * 60_000 + b"last\n"


async def test_a_stream_is_written_in_the_appending_step_while_the_assumption_holds() -> None:
    async def count(_request: web.Request) -> AsyncIterator[str]:
        for index in range(20):
            await asyncio.sleep(0.005)
            yield str(index)

    body = await body_of(resumable_handler(count, stream_id=lambda _request: "s"))
    assert [event.data for event in parse(body) if event.event is None] == [str(i) for i in range(20)]
    assert _compat_aiohttp.fast_path_on()


async def test_a_write_that_would_wait_before_writing_is_detected_and_nothing_is_lost(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Should aiohttp's write ever wait before it writes (a lock, a hook), the write in one step sees it, says so
    once, and goes the awaited way from then on: every event still arrives, in order, once."""
    original = web.StreamResponse.write

    async def waits_first(self: web.StreamResponse, data: bytes | bytearray | memoryview) -> None:
        await asyncio.sleep(0)
        await original(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", waits_first)
    monkeypatch.setattr(_compat_aiohttp, "_fast", True)

    async def count(_request: web.Request) -> AsyncIterator[str]:
        for index in range(30):
            await asyncio.sleep(0.002)
            yield str(index)

    with caplog.at_level(logging.ERROR, logger="resumable_sse"):
        body = await body_of(resumable_handler(count, stream_id=lambda _request: "s"))
    assert [event.data for event in parse(body) if event.event is None] == [str(i) for i in range(30)]
    assert parse(body)[-1].event == "done"
    errors = [record for record in caplog.records if "waited before it wrote" in record.getMessage()]
    assert len(errors) == 1
    assert not _compat_aiohttp.fast_path_on()


def test_write_at_once_refuses_and_writes_nothing_once_the_fast_path_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compat_aiohttp, "_fast", False)
    ran: list[bool] = []

    async def write() -> None:
        ran.append(True)

    coroutine: Coroutine[Any, Any, None] = write()
    assert not _compat_aiohttp.write_at_once(coroutine, StreamWriter(None, None))  # type: ignore[arg-type]
    assert ran == []


async def test_the_writer_attributes_set_late_are_the_ones_shared_first() -> None:
    """``share_writer_keys`` must still run, and name every attribute aiohttp's writer gets after it is made: a new
    one would again cost a dict per connection after a burst of requests."""
    started: list[AbstractStreamWriter] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = ResumableResponse(heartbeat=15)
        writer = await response.prepare(request)
        assert writer is not None
        await response.write(b"data: 1\n\n")
        await response.end()
        started.append(writer)
        return response

    await body_of(handler)
    assert _compat_aiohttp.share_writer_keys()
    fresh = StreamWriter(None, None)  # type: ignore[arg-type]
    late = set(vars(started[0])) - set(vars(fresh))
    assert late <= set(_compat_aiohttp.LATE_WRITER_ATTRIBUTES), late - set(_compat_aiohttp.LATE_WRITER_ATTRIBUTES)


async def test_a_started_response_keeps_its_attributes_in_the_class_shared_table() -> None:
    """With aiohttp's and aiohttp-sse's attributes, a response must stay under 30 in all: from 30 on, CPython 3.11+
    gives every response a dict of its own (296 bytes become 1,584: 1.3 KB more per open connection)."""
    counts: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = ResumableResponse(heartbeat=15)
        await response.prepare(request)
        await response.write(b"data: 1\n\n")
        counts.append(len(vars(response)))
        await response.end()
        return response

    await body_of(handler)
    assert counts[0] < 30


TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", None)


@pytest.mark.skipif(TCP_USER_TIMEOUT is None, reason="TCP_USER_TIMEOUT is a Linux socket option")
@pytest.mark.parametrize(("send_timeout", "milliseconds"), [(None, 0), (5, 5_000), (300, 300_000)])
async def test_the_kernel_aborts_after_send_timeout_on_every_aiohttp_sse_version(
    send_timeout: float | None, milliseconds: int
) -> None:
    """``send_timeout`` is the socket's ``TCP_USER_TIMEOUT`` while the response lasts (0, the system's, for None;
    aiohttp-sse 3 would set 120 s, 2.x nothing), and the option is given back when the response ends."""
    assert TCP_USER_TIMEOUT is not None
    release = asyncio.Event()
    sockets: list[Any] = []

    async def one(_request: web.Request) -> AsyncIterator[str]:
        yield "first"
        await release.wait()

    streams = resumable_handler(one, send_timeout=send_timeout)

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        sockets.append(request.transport.get_extra_info("socket"))
        return await streams(request)

    app = web.Application()
    app.router.add_get("/stream/{stream_id}", handler)
    runner, port = await serve(app)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/stream/s{send_timeout}") as response:
                assert b"data: first" in await response.content.readuntil(b"data: first\n\n")
                during = sockets[0].getsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT)
                release.set()
                body = await response.read()
            assert b"event: done" in body
            await asyncio.sleep(0.05)  # the handler has returned; the connection stays open (keep-alive)
            after = sockets[0].getsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT)
    finally:
        await runner.cleanup()
    assert during == milliseconds
    assert after == 0
