"""A stopped (``SIGSTOP``) Redis, as ``docs/failures.md`` tells it: live readers wait and are told what the stream
became once Redis answers; a request that must ask Redis gets ``503`` after at most 2 x ``socket_timeout``, or its
answer when Redis answers sooner. Scaled down (a 1 s socket timeout) on a private ``redis-server``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from resumable_sse import Streamer, resumable_handler
from resumable_sse.stores.redis import RedisStore

from .helpers import SSE, parse, serve
from .redis_servers import RedisServer, require_server_binary

pytestmark = [pytest.mark.redis, pytest.mark.slow]

COUNT = 40
SOCKET_TIMEOUT = 1.0


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(require_server_binary()) as server:
        yield server


async def paced(_request: Any = None) -> AsyncIterator[str]:
    for i in range(COUNT):
        await asyncio.sleep(0.05)
        yield f"t{i}"


class Answer:
    status = 0
    answered = 0.0  # seconds from the request to its status
    ended = 0.0  # when its body ended (monotonic)
    events: list[SSE]

    def __init__(self) -> None:
        self.events = []


async def request(session: aiohttp.ClientSession, url: str) -> Answer:
    answer = Answer()
    sent = time.monotonic()
    async with session.get(url) as response:
        answer.status, answer.answered = response.status, time.monotonic() - sent
        body = await asyncio.wait_for(response.read(), 60)
    answer.ended = time.monotonic()
    if answer.status == 200:
        answer.events = parse(body)
    return answer


def exact(events: list[SSE], end: str) -> bool:
    seqs = [int(str(event.id).rsplit("-", 1)[1]) for event in events]
    return seqs == list(range(1, len(events) + 1)) and events[-1].event == end


async def frozen(server: RedisServer, seconds: float, **streamer_options: Any) -> tuple[Answer, Answer, Answer, float]:
    """A live reader, then Redis frozen for ``seconds``, with a request for a new stream and one for the running
    stream sent during the freeze: their answers and when Redis answered again (monotonic)."""
    store = RedisStore.from_url(server.url, socket_timeout=SOCKET_TIMEOUT)
    streamer = Streamer(store, **streamer_options)
    app = web.Application()
    app.router.add_get("/s/{stream_id}", resumable_handler(paced, streamer=streamer, heartbeat=0.5))
    runner, port = await serve(app)
    base = f"http://127.0.0.1:{port}/s"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            live = asyncio.ensure_future(request(session, f"{base}/live"))
            await asyncio.sleep(0.5)
            server.pause()
            try:
                during = asyncio.ensure_future(
                    asyncio.gather(request(session, f"{base}/fresh"), request(session, f"{base}/live"))
                )
                await asyncio.sleep(seconds)
            finally:
                server.resume()
            resumed = time.monotonic()
            fresh, joined = await during
            return await live, fresh, joined, resumed
    finally:
        await runner.cleanup()
        await asyncio.wait_for(streamer.close(grace_period=0), 30)


async def test_a_freeze_shorter_than_two_socket_timeouts_delays_requests_and_loses_nothing(
    redis_server: RedisServer,
) -> None:
    live, fresh, joined, _ = await frozen(redis_server, 1.5, lease=5.0)
    for answer in (live, fresh, joined):
        assert answer.status == 200
        assert exact(answer.events, "done") and len(answer.events) == COUNT + 1
    assert 1.0 <= fresh.answered < 2 * SOCKET_TIMEOUT + 1  # answered once Redis answered


async def test_a_longer_freeze_gets_requests_503_after_two_socket_timeouts_and_live_readers_go_on(
    redis_server: RedisServer,
) -> None:
    live, fresh, joined, _ = await frozen(redis_server, 4.0, lease=5.0)
    for answer in (fresh, joined):
        assert answer.status == 503
        assert 2 * SOCKET_TIMEOUT - 0.2 <= answer.answered < 2 * SOCKET_TIMEOUT + 1.5
    assert exact(live.events, "done") and len(live.events) == COUNT + 1  # the live reader: every event, once


async def test_a_freeze_longer_than_the_store_retry_timeout_ends_live_readers_lost_when_redis_answers(
    redis_server: RedisServer,
) -> None:
    live, _, _, resumed = await frozen(redis_server, 7.0, lease=1.0, store_retry_timeout=2.0)
    assert live.status == 200
    assert resumed <= live.ended < resumed + 3  # it waited through the freeze, and heard at once after it
    assert exact(live.events, "lost")  # what came before the freeze, once each, then lost (with an id)
    assert len(live.events) < COUNT
