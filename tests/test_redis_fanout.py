"""The shared live tail on Redis: Redis commands per appended event do not grow with the number of readers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeAlias

import aiohttp
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient

from resumable_sse import RedisStore, Streamer, resumable_handler, setup

from .helpers import SSE, parse
from .redis_servers import RedisServer, require_server_binary, unique_prefix

pytestmark = pytest.mark.redis

ClientFactory: TypeAlias = Callable[[web.Application], Awaitable["TestClient[web.Request, web.Application]"]]
EVENTS = 60
IGNORED = {"cmdstat_info", "cmdstat_config|resetstat", "cmdstat_config", "cmdstat_client|setinfo", "cmdstat_hello"}


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A private server: INFO commandstats counts this test's commands only."""
    with RedisServer(require_server_binary()) as private:
        yield private


async def read_stream(session: aiohttp.ClientSession, url: str, ready: asyncio.Queue[None]) -> list[SSE]:
    """Read to the terminal event; report once the first event (sent before the measured part) arrived."""
    events: list[SSE] = []
    buffer = b""
    announced = False
    async with session.get(url) as response:
        assert response.status == 200
        async for chunk in response.content.iter_any():
            buffer += chunk
            complete, _, buffer = buffer.rpartition(b"\n\n")
            if complete:
                events += parse(complete + b"\n\n")
            if events and not announced:
                announced = True
                ready.put_nowait(None)
            if events and events[-1].event == "done":
                return events
    raise AssertionError("the stream ended without its terminal event")


async def commands_per_event(aiohttp_client: ClientFactory, server: RedisServer, readers: int) -> float:
    go = asyncio.Event()

    async def produce(_request: web.Request) -> AsyncIterator[str]:
        yield "ready"
        await go.wait()
        for i in range(EVENTS):
            yield f"event {i}"
            await asyncio.sleep(0.005)  # a token stream: each event is its own append

    app = web.Application()
    setup(app, Streamer(RedisStore.from_url(server.url, key_prefix=unique_prefix())))
    app.router.add_get("/stream/{stream_id}", resumable_handler(produce))
    client = await aiohttp_client(app)
    url = str(client.make_url(f"/stream/fan-{readers}"))
    ready: asyncio.Queue[None] = asyncio.Queue()
    with redis.Redis.from_url(server.url) as raw:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            tasks = [asyncio.ensure_future(read_stream(session, url, ready))]
            await ready.get()  # the first request claimed the stream and started the producer
            tasks += [asyncio.ensure_future(read_stream(session, url, ready)) for _ in range(readers - 1)]
            for _ in range(readers - 1):
                await ready.get()
            raw.config_resetstat()  # count from here: every reader is connected and live
            go.set()
            results = await asyncio.gather(*tasks)
        stats = raw.info("commandstats")
    expected = ["ready", *(f"event {i}" for i in range(EVENTS)), '{"state":"done"}']
    for events in results:
        assert [event.data for event in events] == expected
        assert len({event.id for event in events}) == len(events)
    total = sum(stat["calls"] for name, stat in stats.items() if name not in IGNORED)
    return float(total) / (EVENTS + 1)


async def test_redis_commands_per_event_do_not_grow_with_readers(
    aiohttp_client: ClientFactory, server: RedisServer
) -> None:
    one = await commands_per_event(aiohttp_client, server, 1)
    many = await commands_per_event(aiohttp_client, server, 200)
    # One append and a few tail reads per event (about 4 round trips), whatever the number of readers: the process
    # follows the stream once and fans out in memory.
    assert one <= 12  # counting the commands inside the Lua scripts (HMGET, XADD, HSET, XRANGE...)
    assert many <= one * 1.2 + 0.25, (one, many)
