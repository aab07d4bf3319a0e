"""Several aiohttp server processes sharing one private Redis: one producer per stream in the whole fleet, resume
on another process, liveness after SIGKILL, remote cancel, a Redis restart mid-stream, and 503 when Redis is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import redis

from ._app_process import AppProcess
from .helpers import SSE, parse
from .redis_servers import RedisServer, require_server_binary, unique_prefix

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TERMINAL = {"done", "error", "cancelled", "lost"}


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A private Redis with persistence (appendonly, fsync always), so a restart keeps every acknowledged write."""
    with RedisServer(require_server_binary(), persistent=True) as private:
        yield private


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
def apps(server: RedisServer, prefix: str) -> Iterator[list[AppProcess]]:
    processes = [AppProcess(server.url, prefix) for _ in range(2)]
    yield processes
    for process in processes:
        process.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def read_all(http: aiohttp.ClientSession, url: str, last_event_id: str | None = None) -> tuple[int, list[SSE]]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    async with http.get(url, headers=headers) as response:
        return response.status, parse(await response.read())


async def read_some(http: aiohttp.ClientSession, url: str, count: int) -> list[SSE]:
    """Read the first ``count`` events, then drop the connection."""
    events: list[SSE] = []
    buffer = b""
    async with http.get(url) as response:
        assert response.status == 200
        async for chunk in response.content.iter_any():
            buffer += chunk
            complete, _, buffer = buffer.rpartition(b"\n\n")
            if complete:
                events += parse(complete + b"\n\n")
            if len(events) >= count:
                return events[:count]
    raise AssertionError("the stream ended early")


async def read_resuming(http: aiohttp.ClientSession, url: str, seen: list[SSE]) -> None:
    """Read to the terminal event like EventSource: reconnect with Last-Event-ID after any break or 503."""
    while not seen or seen[-1].event not in TERMINAL:
        headers = {"Last-Event-ID": seen[-1].id or ""} if seen else {}
        buffer = b""
        try:
            async with http.get(url, headers=headers) as response:
                if response.status == 204:
                    return
                if response.status == 200:
                    async for chunk in response.content.iter_any():
                        buffer += chunk
                        complete, _, buffer = buffer.rpartition(b"\n\n")
                        if complete:
                            seen += parse(complete + b"\n\n")
                else:
                    assert response.status == 503, response.status
        except (aiohttp.ClientError, ConnectionError):
            pass
        await asyncio.sleep(0.05)


def marks(server: RedisServer, prefix: str, name: str, stream_id: str) -> str | None:
    with redis.Redis.from_url(server.url) as client:
        value = client.get(f"{prefix}:{name}:{stream_id}")
        return value.decode() if value is not None else None


async def test_fifty_simultaneous_first_requests_on_two_processes_run_the_producer_once(
    apps: list[AppProcess], server: RedisServer, prefix: str, http: aiohttp.ClientSession
) -> None:
    stream = "count.30.5"
    results = await asyncio.gather(*(read_all(http, f"{apps[i % 2].base}/stream/{stream}") for i in range(50)))
    assert marks(server, prefix, "runs", stream) == "1"
    expected = [f"event {i}" for i in range(30)]
    first_ids = None
    for status, events in results:
        assert status == 200
        assert [event.data for event in events[:-1]] == expected
        assert events[-1].event == "done"
        ids = [event.id for event in events]
        assert len(set(ids)) == 31
        first_ids = first_ids or ids
        assert ids == first_ids  # one epoch, one numbering, whichever process served it


async def test_a_client_resuming_on_the_other_process_gets_exactly_the_rest(
    apps: list[AppProcess], http: aiohttp.ClientSession
) -> None:
    stream = "count.40.10"
    first = await read_some(http, f"{apps[0].base}/stream/{stream}", 12)
    status, rest = await read_all(http, f"{apps[1].base}/stream/{stream}", last_event_id=first[-1].id)
    assert status == 200
    assert [event.data for event in first + rest[:-1]] == [f"event {i}" for i in range(40)]
    assert rest[-1].event == "done"
    # A reconnect after the terminal event, on either process: 204, EventSource stops.
    for app in apps:
        status, _ = await read_all(http, f"{app.base}/stream/{stream}", last_event_id=rest[-1].id)
        assert status == 204


async def test_readers_elsewhere_get_lost_soon_after_the_producers_process_is_killed(
    server: RedisServer, prefix: str, http: aiohttp.ClientSession
) -> None:
    lease = 1.0
    a, b = AppProcess(server.url, prefix, lease), AppProcess(server.url, prefix, lease)
    try:
        stream = "quiet"
        head = await read_some(http, f"{a.base}/stream/{stream}", 1)  # A claims and produces
        reader = asyncio.ensure_future(read_all(http, f"{b.base}/stream/{stream}"))
        await asyncio.sleep(0.3)
        a.kill()
        killed = time.monotonic()
        status, events = await asyncio.wait_for(reader, 10)
        waited = time.monotonic() - killed
        assert status == 200
        lost = '{"state":"lost","message":"the producer stopped responding"}'
        assert [(event.event, event.data) for event in events] == [(None, "hello"), ("lost", lost)]
        assert events[0].id == head[0].id
        # The lease runs out at most `lease` after the kill; B's tail looks every lease / 2.
        assert waited < lease * 2 + 1.0
        status, _ = await read_all(http, f"{b.base}/stream/{stream}", last_event_id=events[-1].id)
        assert status == 204
    finally:
        a.kill()
        b.stop()


async def test_cancel_on_one_process_stops_the_producer_on_the_other_at_once(
    apps: list[AppProcess], server: RedisServer, prefix: str, http: aiohttp.ClientSession
) -> None:
    stream = "quiet"  # yields once, then sleeps: no append would notice a cancel for a minute
    # Process A runs the producer; its reader leaves, so nothing in A reads the stream: only B has readers.
    await read_some(http, f"{apps[0].base}/stream/{stream}", 1)
    readers = [asyncio.ensure_future(read_all(http, f"{apps[1].base}/stream/{stream}")) for _ in range(3)]
    await asyncio.sleep(4.0)  # A notices its reader left (heartbeat, 1 s), its tail lingers lease / 2: then only
    # the producer itself follows the stream in A
    assert marks(server, prefix, "stopped", stream) is None
    started = time.time()
    async with http.post(f"{apps[1].base}/cancel/{stream}") as response:
        assert await response.json() == {"ended": True}
    for reader in readers:
        status, events = await asyncio.wait_for(reader, 5)
        assert status == 200
        assert [event.event for event in events] == [None, "cancelled"]
    deadline = time.monotonic() + 5
    while (stopped := marks(server, prefix, "stopped", stream)) is None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert stopped is not None, "the producer in process A never stopped"
    assert float(stopped) - started < 0.5
    assert marks(server, prefix, "runs", stream) == "1"


async def test_a_redis_restart_mid_stream_loses_and_duplicates_nothing(
    apps: list[AppProcess], server: RedisServer, http: aiohttp.ClientSession
) -> None:
    stream = "count.150.20"  # about 3 s of events
    seen: list[list[SSE]] = [[], []]
    urls = [f"{app.base}/stream/{stream}" for app in apps]
    readers = [asyncio.ensure_future(read_resuming(http, url, events)) for url, events in zip(urls, seen, strict=True)]
    while len(seen[0]) < 30:  # noqa: ASYNC110 (the events arrive in another task)
        await asyncio.sleep(0.02)
    await asyncio.to_thread(server.stop)
    await asyncio.sleep(0.5)  # down for a while: producer appends are retried, readers get 503 and retry
    await asyncio.to_thread(server.start)
    await asyncio.wait_for(asyncio.gather(*readers), 40)
    for events in seen:
        assert [event.data for event in events[:-1]] == [f"event {i}" for i in range(150)]
        assert events[-1].event == "done"
        assert len({event.id for event in events}) == len(events)


async def test_unreachable_redis_at_request_time_is_a_clear_503(
    server: RedisServer, prefix: str, http: aiohttp.ClientSession
) -> None:
    app = AppProcess(server.url, prefix)
    try:
        server.stop()
        started = time.monotonic()
        async with http.get(f"{app.base}/stream/count.3.0") as response:
            assert response.status == 503
            assert "unavailable" in await response.text()
        assert time.monotonic() - started < 5
        server.start()
        status, events = await read_all(http, f"{app.base}/stream/count.3.0")
        assert status == 200
        assert [event.data for event in events] == ["event 0", "event 1", "event 2", '{"state":"done"}']
    finally:
        app.stop()
