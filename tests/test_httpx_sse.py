"""A third-party SSE client, httpx-sse, reads exactly the stream's events: no empty event for the ``retry:`` line.

httpx-sse hands the application every block that set any field, so a ``retry:`` line in a block of its own reached
its users as an empty ``message`` event at the start of every connection. The server sends the field with the
first real block instead; these tests read real responses with the real client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeAlias

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from httpx_sse import ServerSentEvent, aconnect_sse

from resumable_sse import Event, MemoryStore, Streamer, resumable_handler, setup

from ._adapters import ADAPTERS, Harness, Route
from .helpers import Gate

ClientFactory: TypeAlias = Callable[[web.Application], Awaitable["TestClient[web.Request, web.Application]"]]


async def hello(_request: web.Request) -> AsyncIterator[str | Event]:
    for token in ["Hello", ", ", "world"]:
        yield token
    yield Event({"tokens": 3}, event="usage")


async def server(aiohttp_client: ClientFactory, producer: object, **options: object) -> tuple[str, Streamer]:
    app = web.Application()
    streamer = setup(app, Streamer(MemoryStore()))
    app.router.add_get("/stream/{stream_id}", resumable_handler(producer, **options))  # type: ignore[arg-type]
    client = await aiohttp_client(app)
    return str(client.make_url("/stream/")), streamer


async def read_all(url: str, headers: dict[str, str] | None = None) -> list[ServerSentEvent]:
    async with httpx.AsyncClient(timeout=10) as http, aconnect_sse(http, "GET", url, headers=headers or {}) as source:
        return [sse async for sse in source.aiter_sse()]


async def test_a_new_stream_has_no_empty_event_and_the_retry_rides_on_the_first(aiohttp_client: ClientFactory) -> None:
    base, streamer = await server(aiohttp_client, hello)
    events = await read_all(base + "s")
    state = await streamer.status("s")
    assert state is not None
    e = state.epoch
    assert [(sse.id, sse.event, sse.data) for sse in events] == [
        (f"{e}-1", "message", "Hello"),
        (f"{e}-2", "message", ", "),
        (f"{e}-3", "message", "world"),
        (f"{e}-4", "usage", '{"tokens":3}'),
        (f"{e}-5", "done", '{"state":"done"}'),
    ]
    assert [sse.retry for sse in events] == [2000, None, None, None, None]


async def test_a_resumed_and_a_reset_connection_have_no_empty_event(aiohttp_client: ClientFactory) -> None:
    base, _ = await server(aiohttp_client, hello, retry=500)
    first = await read_all(base + "r")
    resumed = await read_all(base + "r", {"Last-Event-ID": first[2].id})
    assert [(sse.id, sse.data) for sse in resumed] == [(sse.id, sse.data) for sse in first[3:]]
    assert resumed[0].retry == 500
    reset = await read_all(base + "r", {"Last-Event-ID": "0123456789abcdef-2"})
    assert [sse.event for sse in reset] == ["reset", "message", "message", "message", "usage", "done"]
    assert (reset[0].id, reset[0].retry) == ("", 500)
    assert reset[0].json() == {"reason": "epoch", "first_id": first[0].id}


async def test_heartbeats_before_the_first_event_are_not_events(aiohttp_client: ClientFactory) -> None:
    gate = Gate(["late"])
    base, _ = await server(aiohttp_client, gate.produce, heartbeat=0.02)
    # Several heartbeats go out before the producer's first event; httpx-sse must see none of them, nor the retry.
    opener = asyncio.get_running_loop().call_later(0.2, gate.release)
    try:
        events = await read_all(base + "hb")
    finally:
        opener.cancel()
    assert [(sse.event, sse.data, sse.retry) for sse in events] == [
        ("message", "late", 2000),
        ("done", '{"state":"done"}', None),
    ]


@pytest.fixture(params=ADAPTERS)
async def http(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """One adapter (aiohttp, then Starlette under uvicorn), serving for real."""
    harness = Harness(request.param)
    yield harness
    await harness.close()


async def test_heartbeats_after_events_are_not_events(http: Harness) -> None:
    # Once a stream has a last event id, httpx-sse dispatches any block that ends with a blank line, data or not: a
    # heartbeat sent as a comment *block* became an empty message event on every beat. Sent as a comment line, none.
    gate = Gate(["one", "two", "three"])
    client = await http.serve([Route("/stream/{stream_id}", http.endpoint(gate.produce, heartbeat=0.05))])
    url = f"http://127.0.0.1:{http.port}/stream/beats"
    received: list[ServerSentEvent] = []
    witness = await client.get("/stream/beats")  # a second reader: the raw bytes the first one was sent
    async with httpx.AsyncClient(timeout=10) as session, aconnect_sse(session, "GET", url) as source:
        gate.release()
        async for sse in source.aiter_sse():
            received.append(sse)
            if sse.data in ("one", "two"):
                await asyncio.sleep(0.4)  # several heartbeats after this event, before the next one
                gate.release()
    raw = await witness.read()
    assert [(sse.event, sse.data) for sse in received] == [
        ("message", "one"),
        ("message", "two"),
        ("message", "three"),
        ("done", '{"state":"done"}'),
    ]
    after_first = raw.split(b"data: one\n\n", 1)[1]
    assert after_first.count(b": ping\n") >= 4  # the heartbeats were sent, between the events
