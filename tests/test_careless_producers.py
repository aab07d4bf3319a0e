"""Careless producers: a factory that blocks, a generator object where a function belongs, text that is not valid
Unicode, batches larger than a store takes. Each is refused or handled at the door, the same way on every store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

from resumable_sse import MemoryStore, RedisStore, Streamer, resumable_handler, setup

from .conftest import StoreFactory
from .helpers import parse, read_entries
from .redis_servers import RedisServer, require_server_binary, unique_prefix


async def _worst_loop_stall(during: Any) -> float:
    """Run ``during`` (a coroutine) while measuring the event loop's worst stall, in seconds."""
    worst = 0.0
    done = False

    async def probe() -> None:
        nonlocal worst
        while not done:
            started = time.monotonic()
            await asyncio.sleep(0.01)
            worst = max(worst, time.monotonic() - started - 0.01)

    task = asyncio.ensure_future(probe())
    try:
        await during
    finally:
        done = True
        await task
    return worst


async def test_a_plain_producer_function_that_blocks_before_it_returns_does_not_stall_the_loop(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    streamer = Streamer(store)

    def legacy_sdk() -> Iterator[str]:  # like create(stream=True): connects, then returns an iterator
        time.sleep(1.0)
        return iter(["a", "b"])

    async def run() -> None:
        producer = await streamer.start("s", legacy_sdk)
        assert producer is not None
        assert await producer.wait() == "done"

    # Called on the loop, the factory would stall it for the whole second; a busy machine (CI runs suites side by
    # side on two cores) stalls it for a tenth of that on its own, so the bound sits far from both.
    assert await _worst_loop_stall(run()) < 0.4
    assert [e.data for e in await read_entries(store, "s")] == ["a", "b", '{"state":"done"}']
    await streamer.close()


async def test_a_generator_object_is_refused_at_once_and_nothing_is_claimed() -> None:
    store = MemoryStore()
    streamer = Streamer(store)

    def sync_gen() -> Iterator[str]:
        yield "x"

    async def async_gen() -> AsyncIterator[str]:
        yield "x"

    generator = sync_gen()
    agen = async_gen()
    for wrong in (generator, agen, ["a", "b"], None):
        with pytest.raises(TypeError, match="function"):
            await streamer.start("s", wrong)  # type: ignore[arg-type]
    assert await store.state("s") is None
    await agen.aclose()
    await streamer.close()


async def test_a_lone_surrogate_ends_the_stream_with_error_after_everything_before_it(
    make_store: StoreFactory, aiohttp_client: Any
) -> None:
    store = await make_store()

    async def produce(_request: web.Request) -> AsyncIterator[str]:
        yield "ok"
        yield "\ud800"
        yield "never"

    app = web.Application()
    setup(app, Streamer(store))
    app.router.add_get("/stream/{stream_id}", resumable_handler(produce))
    client = await aiohttp_client(app)
    for _ in range(2):  # the same answer every time, on every store: nothing poisoned, nothing truncated
        response = await client.get("/stream/bad")
        assert response.status == 200
        events = parse(await response.read())
        assert [(e.event, e.data) for e in events] == [
            (None, "ok"),
            ("error", '{"state":"error","message":"an event was not valid text"}'),
        ]
    state = await store.state("bad")
    assert state is not None and state.status == "error"


async def test_appends_are_bounded_by_bytes_on_the_memory_store() -> None:
    store = MemoryStore()
    sizes: list[int] = []
    original = store.append_at_once  # the producer's appends come this way (and the final one through append)
    original_final = store.append

    def recorded(stream_id: str, token: str, events: Any, **kwargs: Any) -> int:
        sizes.append(sum(len(data.encode()) for _, data in events))
        return original(stream_id, token, events, **kwargs)

    async def recorded_final(stream_id: str, token: str, events: Any, **kwargs: Any) -> int:
        sizes.append(sum(len(data.encode()) for _, data in events))
        return await original_final(stream_id, token, events, **kwargs)

    store.append_at_once = recorded  # type: ignore[method-assign]
    store.append = recorded_final  # type: ignore[method-assign]
    streamer = Streamer(store, max_event_bytes=10_000, max_batch_bytes=50_000)
    chunk = "é" * 4_000  # 8,000 bytes, 4,000 characters: the byte count, not the length, must be bounded

    async def produce() -> AsyncIterator[str]:
        for _ in range(100):
            yield chunk

    producer = await streamer.start("big", produce)
    assert producer is not None
    assert await producer.wait() == "done"
    assert max(sizes) <= 50_000 and sum(sizes) >= 100 * 8_000
    assert len(await read_entries(store, "big", 0, 1000)) == 101
    await streamer.close()


@pytest.mark.redis
async def test_a_redis_that_refuses_large_commands_still_gets_every_event() -> None:
    # proto-max-bulk-len 1mb: one argument over 1 MB resets the connection. Appends bounded by max_batch_bytes never
    # send one, so nothing is retried for store_retry_timeout and nothing is lost.
    with RedisServer(require_server_binary()) as server:
        store = RedisStore.from_url(server.url, key_prefix=unique_prefix())
        await store.client.config_set("proto-max-bulk-len", "1mb")
        streamer = Streamer(store, max_event_bytes=200_000, max_batch_bytes=512 * 1024, store_retry_timeout=2)
        event = "x" * 100_000

        async def produce() -> AsyncIterator[str]:
            for _ in range(60):  # 6 MB, produced faster than one append takes
                yield event

        producer = await streamer.start("big", produce)
        assert producer is not None
        assert await asyncio.wait_for(producer.wait(), 20) == "done"
        entries = await read_entries(store, "big", 0, 1000)
        assert [len(e.data) for e in entries[:-1]] == [100_000] * 60
        await streamer.close()


async def test_a_handler_whose_plain_producer_function_blocks_does_not_stall_the_loop(aiohttp_client: Any) -> None:
    def legacy(_request: web.Request) -> Iterator[str]:
        time.sleep(1.0)  # a legacy SDK connecting inside create(stream=True)
        return iter(["a", "b"])

    app = web.Application()
    setup(app, Streamer(MemoryStore()))
    app.router.add_get("/stream/{stream_id}", resumable_handler(legacy))
    client = await aiohttp_client(app)
    body: list[bytes] = []

    async def request() -> None:
        response = await client.get("/stream/s")
        body.append(await response.read())

    assert await _worst_loop_stall(request()) < 0.4  # (as above: the block would last a second)
    assert [e.data for e in parse(body[0])] == ["a", "b", '{"state":"done"}']
