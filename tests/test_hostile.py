"""Careless and hostile clients: disconnects before the headers, readers that never read, fuzzed requests.

Whatever a client does, the server answers with a plain status (never a 500), logs no traceback, starts nothing
for a request it refuses, and keeps nothing open for a client that has gone.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

from resumable_sse import Streamer, resumable_handler, setup

from .conftest import StoreFactory


async def hello(_request: web.Request) -> AsyncIterator[str]:
    for token in ["Hello", ", ", "world"]:
        yield token


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


def open_subscriptions(streamer: Streamer) -> list[Any]:
    return [s for s in list(streamer._subscriptions) if not s._closed]


async def settle(streamer: Streamer, timeout: float = 10.0) -> None:
    """Wait until no producer runs, no subscription is open and the hub follows nothing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if not len(streamer.producers) and not open_subscriptions(streamer) and not streamer.hub.tails:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"still held: producers={len(streamer.producers)} subscriptions={len(open_subscriptions(streamer))} "
        f"tails={list(streamer.hub.tails)}"
    )


def assert_no_tracebacks(records: list[logging.LogRecord]) -> None:
    bad = [r for r in records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [f"{r.name} {r.levelname} {r.getMessage()} {r.exc_info!r}" for r in bad]


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Garbage collection off: whatever the handler leaves open stays visible instead of being collected."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# -- clients that go away before the headers are written ------------------------------------------------------------


@pytest.mark.usefixtures("no_gc")
async def test_clients_that_disconnect_before_the_headers_leave_nothing_open_and_log_no_error(
    make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = web.Application()
    streamer = setup(app, Streamer(await make_store()))
    app.router.add_get("/stream/{stream_id}", resumable_handler(hello))
    runner, port = await serve(app)
    loop = asyncio.get_running_loop()
    try:
        for i in range(60):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            if i % 2:  # half of them reset the connection rather than closing it
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await loop.sock_sendall(sock, f"GET /stream/gone-{i % 7} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sock.close()
            if i % 3 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.3)
        await settle(streamer)
    finally:
        await runner.cleanup()
    assert_no_tracebacks(caplog.records)


# -- readers that never read ---------------------------------------------------------------------------------------


async def test_a_stalled_reader_is_aborted_after_send_timeout_and_leaves_nothing_open(
    make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Two clients never read their sockets: one from the start of the stream, one that comes after it ended. A
    # producer writes a few MB; each write to them blocks, and after send_timeout their connections are aborted.
    caplog.set_level(logging.DEBUG)
    events, payload = 3000, "x" * 1000

    async def big(_request: web.Request) -> AsyncIterator[str]:
        for _ in range(events):
            yield payload

    app = web.Application()
    streamer = setup(app, Streamer(await make_store(max_events=events + 1)))
    app.router.add_get("/stream/{stream_id}", resumable_handler(big, send_timeout=0.3, heartbeat=0.1))
    runner, port = await serve(app)
    stalled: list[socket.socket] = []
    loop = asyncio.get_running_loop()

    async def stall() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        stalled.append(sock)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, b"GET /stream/big HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")

    try:
        await stall()
        for _ in range(2000):
            if (state := await streamer.status("big")) is not None and state.finished:
                break
            await asyncio.sleep(0.01)
        assert state is not None
        assert (state.status, state.last_seq) == ("done", events + 1)
        await stall()  # a stalled reader of a finished stream: its replay blocks too
        await asyncio.sleep(0.5)
        await settle(streamer, timeout=5)
        for _ in range(250):  # both connections were aborted by the server
            if not runner.server or not runner.server.connections:
                break
            await asyncio.sleep(0.02)
        assert runner.server is not None
        assert runner.server.connections == []
    finally:
        for sock in stalled:
            sock.close()
        await runner.cleanup()
    assert_no_tracebacks(caplog.records)
    assert sum("read nothing for 0.3 s" in r.getMessage() for r in caplog.records) == 2


async def test_send_timeout_defaults_to_30_seconds_and_must_be_positive() -> None:
    import inspect

    assert inspect.signature(resumable_handler).parameters["send_timeout"].default == 30.0
    for bad in [0, -1.0]:
        with pytest.raises(ValueError, match="send_timeout"):
            resumable_handler(hello, send_timeout=bad)
