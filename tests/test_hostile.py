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
