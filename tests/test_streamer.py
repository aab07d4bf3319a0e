"""The Streamer without HTTP: subscriptions, lost producers, idle limits, store limits, and nothing left behind."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
from collections.abc import AsyncIterator, Sequence

import pytest
from aiohttp import web

from resumable_sse import (
    Entry,
    InvalidEventId,
    InvalidStreamId,
    MemoryStore,
    Page,
    Reset,
    StoreFull,
    Streamer,
    StreamerClosed,
    StreamNotFound,
    resumable_handler,
    setup,
)

from .conftest import StoreFactory
from .helpers import Gate, parse, read_entries, renew_one


async def collect(streamer: Streamer, stream_id: str, last_event_id: str | None = None) -> list[Entry | Reset]:
    subscription = await streamer.subscribe(stream_id, last_event_id)
    return [item async for item in subscription]


async def collect_batches(batches: AsyncIterator[Sequence[Entry | Reset]]) -> list[Entry | Reset]:
    return [item async for batch in batches for item in batch]


async def tokens(count: int) -> AsyncIterator[str]:
    for i in range(count):
        yield f"t{i}"


async def test_subscribe_without_http_in_order_to_done() -> None:
    async with Streamer() as streamer:
        producer = await streamer.start("s", lambda: tokens(50))
        assert producer is not None
        assert await streamer.start("s", lambda: tokens(1)) is None  # claimed already
        items = await collect(streamer, "s")
        assert await producer.wait() == "done"
    assert [i.data for i in items if isinstance(i, Entry)][:-1] == [f"t{i}" for i in range(50)]
    assert isinstance(items[-1], Entry)
    assert items[-1].terminal
    assert [i.seq for i in items if isinstance(i, Entry)] == list(range(1, 52))


async def test_subscribe_rejects_bad_input_clearly() -> None:
    async with Streamer() as streamer:
        with pytest.raises(InvalidStreamId):
            await streamer.subscribe("bad id")
        with pytest.raises(StreamNotFound):
            await streamer.subscribe("unknown")
        await streamer.start("s", lambda: tokens(1))
        with pytest.raises(InvalidEventId):
            await streamer.subscribe("s", "nonsense")


async def test_lost_producer_is_detected_by_readers_and_written_once() -> None:
    store = MemoryStore()
    # A producer elsewhere claimed the stream, wrote one event and died: nobody renews its lease.
    claim = await store.claim("dead", "their-token", 0.3)
    await store.append("dead", "their-token", [(None, "last words")], after=0)
    async with Streamer(store, lease=0.3) as first, Streamer(store, lease=0.3) as second:
        items = await asyncio.wait_for(
            asyncio.gather(collect(first, "dead"), collect(second, "dead"), collect(first, "dead")), 5
        )
    for got in items:
        assert next((i.event, i.data) for i in got if isinstance(i, Entry)) == (None, "last words")
        assert isinstance(got[-1], Entry)
        assert got[-1].event == "lost"
        assert got[-1].seq == 2  # exactly one terminal entry
    assert json.loads(items[0][-1].data)["state"] == "lost"
    state = await store.state("dead")
    assert state is not None
    assert (state.status, state.epoch, state.last_seq) == ("lost", claim.state.epoch, 2)


async def test_live_producer_is_not_declared_lost() -> None:
    async def slow() -> AsyncIterator[str]:
        for i in range(3):
            await asyncio.sleep(0.4)  # quieter than the lease, but the lease is renewed
            yield str(i)

    async with Streamer(lease=0.3) as streamer:
        await streamer.start("slow", slow)
        items = await asyncio.wait_for(collect(streamer, "slow"), 5)
    assert [i.data for i in items if isinstance(i, Entry)] == ["0", "1", "2", '{"state":"done"}']


async def test_idle_producer_ends_with_error(caplog: pytest.LogCaptureFixture) -> None:
    async def stuck() -> AsyncIterator[str]:
        yield "one"
        await asyncio.sleep(3600)
        yield "never"

    async with Streamer(lease=0.15, idle_timeout=0.3) as streamer:
        producer = await streamer.start("idle", stuck)
        assert producer is not None
        assert await asyncio.wait_for(producer.wait(), 5) == "error"
        items = await collect(streamer, "idle")
    last = items[-1]
    assert isinstance(last, Entry)
    assert json.loads(last.data) == {"state": "error", "message": "the producer was idle too long"}
    assert any("yielded nothing" in r.getMessage() for r in caplog.records)


async def test_cancel_from_outside_fences_the_producer_at_its_next_write() -> None:
    store = MemoryStore()
    gate = Gate([f"t{i}" for i in range(10)])
    async with Streamer(store) as streamer:
        producer = await streamer.start("f", gate.produce)
        assert producer is not None
        gate.release()
        await asyncio.sleep(0.05)
        # Another process (another Streamer on the same store) cancels.
        async with Streamer(store) as other:
            assert await other.cancel("f") is True
        gate.release(9)
        assert await asyncio.wait_for(producer.wait(), 5) == "cancelled"
        items = await collect(streamer, "f")
    assert [i.event for i in items if isinstance(i, Entry)] == [None, "cancelled"]


async def test_slow_reader_that_falls_behind_the_retained_history_gets_reset() -> None:
    store = MemoryStore(max_events=10)
    async with Streamer(store, batch_size=4, window=4) as streamer:
        gate = Gate([f"t{i}" for i in range(40)])
        await streamer.start("sl", gate.produce)
        gate.release(2)
        subscription = await streamer.subscribe("sl")
        iterator = subscription.batches()
        first = await iterator.__anext__()
        assert [i.data for i in first][:1] == ["t0"]
        gate.release(38)  # the reader sleeps while 38 more events come and go
        producer = streamer.producer("sl")
        assert producer is not None
        await asyncio.wait_for(producer.wait(), 5)
        rest = [item async for batch in iterator for item in batch]
    assert isinstance(rest[0], Reset)
    assert rest[0].reason == "trimmed"
    assert [i.data for i in rest[1:] if isinstance(i, Entry)][:-1] == [f"t{i}" for i in range(31, 40)]


def assert_no_silent_gap(items: list[Entry | Reset], count: int) -> None:
    """Every jump in sequence numbers is announced by a reset, nothing repeats, and the stream ends with done."""
    cursor = 0
    announced = False
    for item in items:
        if isinstance(item, Reset):
            announced = True
            continue
        assert item.seq > cursor, f"duplicate or out of order: {item.seq} after {cursor}"
        assert item.seq == cursor + 1 or announced, f"silent gap: {cursor} -> {item.seq}"
        announced = False
        cursor = item.seq
    last = items[-1]
    assert isinstance(last, Entry)
    assert (last.event, last.seq) == ("done", count + 1)


@pytest.mark.parametrize(("max_events", "count"), [(1000, 20_000), (2000, 50_000)])
async def test_a_producer_that_outruns_the_retention_never_makes_readers_skip_silently(
    make_store: StoreFactory, max_events: int, count: int
) -> None:
    # The producer appends faster than the live tail reads, so the store trims entries the tail never saw: readers
    # must get a reset at each such gap (and still reach the terminal entry), never a silent jump.
    async with Streamer(await make_store(max_events=max_events)) as streamer:
        await streamer.start("fast", lambda: tokens(count))
        readers = [asyncio.ensure_future(collect(streamer, "fast")) for _ in range(3)]
        for items in await asyncio.wait_for(asyncio.gather(*readers), 30):
            assert_no_silent_gap(items, count)


async def test_store_full_is_503_and_nothing_started(aiohttp_client: object) -> None:
    app = web.Application()
    gate = Gate(["a"])
    streamer = setup(app, Streamer(MemoryStore(max_streams=1)))
    app.router.add_get("/stream/{stream_id}", resumable_handler(gate.produce))
    client = await aiohttp_client(app)  # type: ignore[operator]
    first = await client.get("/stream/one")
    assert first.status == 200
    second = await client.get("/stream/two")
    assert second.status == 503
    assert "unavailable" in await second.text()
    with pytest.raises(StoreFull):
        await streamer.store.claim("three", "t", 5)
    gate.release()
    await first.read()


async def test_finished_streams_are_evicted_early_when_the_store_is_full() -> None:
    store = MemoryStore(max_streams=2, ttl=600)
    async with Streamer(store) as streamer:
        for name in ["a", "b", "c"]:
            producer = await streamer.start(name, lambda: tokens(1))
            assert producer is not None
            await producer.wait()
        assert await store.state("a") is None  # the oldest finished stream made room
        assert await store.state("c") is not None


async def test_nothing_is_left_behind_after_a_stream_expires() -> None:
    store = MemoryStore(ttl=0.2)
    streamer = Streamer(store, lease=0.2)
    baseline_tasks = len(asyncio.all_tasks())
    producer = await streamer.start("x", lambda: tokens(100))
    assert producer is not None
    readers = [asyncio.ensure_future(collect(streamer, "x")) for _ in range(5)]
    await asyncio.wait_for(asyncio.gather(*readers), 5)
    await producer.wait()
    await asyncio.sleep(0.5)  # past the TTL and past the tail's quiet interval
    assert await store.state("x") is None
    assert len(store) == 0
    assert len(streamer.producers) == 0
    assert streamer.hub.tails == {}
    assert len(asyncio.all_tasks()) == baseline_tasks
    gc.collect()
    assert len(streamer._subscriptions) == 0
    await streamer.close()


async def test_an_expired_stream_is_freed_by_work_on_other_streams() -> None:
    # A busy store must not hold expired streams until someone names them again: any operation sweeps.
    now = [0.0]
    store = MemoryStore(ttl=10, clock=lambda: now[0])
    await store.claim("busy", "u", 1e9)
    operations = [
        lambda: store.append("busy", "u", [(None, "y")], after=0),
        lambda: read_entries(store, "busy", 0, 10),
        lambda: store.state("busy"),
        lambda: renew_one(store, "busy", "u", 1e9),
        lambda: store.audit(["busy"], "{}"),
    ]
    for operation in operations:
        assert (await store.claim("old", "t", 5)).acquired
        await store.append("old", "t", [(None, "x")] * 1000 + [("done", "{}")], after=0, final="done")
        now[0] += 11.0
        assert "old" in store._streams
        await operation()
        assert "old" not in store._streams  # freed without naming it, and without len()


async def test_a_subscription_that_meets_a_new_epoch_follows_it_to_its_end() -> None:
    # Subscribed (after the first event) while the first life of the stream ran, at its newest event; by the time
    # it is iterated, that life finished, expired and the stream was created again. It must say reset, then follow
    # the new life live until its terminal entry, not stop early. (A subscription reads its first page when it is
    # made: here that page is empty, and the iteration finds the new life.)
    now = [0.0]
    async with Streamer(MemoryStore(ttl=10, clock=lambda: now[0])) as streamer:
        life = Gate(["x", "y"])
        first = await streamer.start("e", life.produce)
        assert first is not None
        life.release(1)
        while (state := await streamer.status("e")) is None or state.last_seq < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        batches = (await streamer.subscribe("e", f"{first.epoch}-1")).batches()
        life.release(1)
        assert await first.wait() == "done"
        now[0] = 11.0  # the first life expires
        gate = Gate(["a", "b", "c"])
        second = await streamer.start("e", gate.produce)
        assert second is not None
        gate.release(1)
        while (state := await streamer.status("e")) is None or state.last_seq < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        head = await batches.__anext__()
        assert isinstance(head[0], Reset)
        assert head[0].reason == "epoch"
        assert [item.data for item in head[1:] if isinstance(item, Entry)] == ["a"]
        rest = asyncio.ensure_future(collect_batches(batches))
        await asyncio.sleep(0.05)  # the reader waits for the live tail of the new life
        gate.release(2)
        items = await asyncio.wait_for(rest, 5)
        assert [(item.epoch, item.data) for item in items if isinstance(item, Entry)] == [
            (second.epoch, "b"),
            (second.epoch, "c"),
            (second.epoch, '{"state":"done"}'),
        ]


async def test_closed_streamer_refuses_new_work() -> None:
    streamer = Streamer()
    await streamer.close()
    with pytest.raises(StreamerClosed):
        await streamer.start("s", lambda: tokens(1))


async def test_end_readers_ends_subscriptions_refuses_new_ones_and_lets_producers_finish() -> None:
    # setup() calls end_readers() in on_shutdown; a request that subscribes after it (even one already waiting on the
    # store) must be refused, or aiohttp would wait its whole shutdown timeout for a response nobody ends.
    class SlowState(MemoryStore):
        entered = asyncio.Event()
        go_on = asyncio.Event()

        async def read(self, stream_id: str, after: int, limit: int, *, epoch: str | None = None) -> Page | None:
            if stream_id == "slow":  # (a subscription with no position reads its first page when it is made)
                self.entered.set()
                await self.go_on.wait()
            return await super().read(stream_id, after, limit, epoch=epoch)

    store = SlowState()
    async with Streamer(store) as streamer:
        gate = Gate(["a", "b", "c"])
        producer = await streamer.start("s", gate.produce)
        assert producer is not None
        await streamer.start("slow", lambda: tokens(1))
        gate.release(1)
        batches = (await streamer.subscribe("s")).batches()
        assert [item.data for item in await batches.__anext__() if isinstance(item, Entry)] == ["a"]
        late = asyncio.ensure_future(streamer.subscribe("slow"))
        await store.entered.wait()
        streamer.end_readers()
        store.go_on.set()
        assert await asyncio.wait_for(anext(batches, None), 5) is None  # the open one ends at once
        with pytest.raises(StreamerClosed):
            await late
        with pytest.raises(StreamerClosed):
            await streamer.subscribe("s")
        gate.release(2)
        assert await asyncio.wait_for(producer.wait(), 5) == "done"


def test_configuration_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="max_events"):
        MemoryStore(max_events=0)
    with pytest.raises(ValueError, match="ttl"):
        MemoryStore(ttl=0)
    with pytest.raises(ValueError, match="lease"):
        Streamer(lease=0)
    with pytest.raises(ValueError, match="on_unknown"):
        resumable_handler(lambda r: tokens(1), on_unknown="maybe")  # type: ignore[arg-type]


async def test_events_ready_together_go_out_in_one_socket_write() -> None:
    """Over a real socket: a reader joining a finished stream gets all its events in one HTTP chunk."""
    app = web.Application()
    streamer = setup(app)
    app.router.add_get("/stream/{stream_id}", resumable_handler(lambda _r: tokens(300)))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        producer = await streamer.start("w", lambda: tokens(300))
        assert producer is not None
        await producer.wait()

        def fetch() -> bytes:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"GET /stream/w HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                return data

        raw = await asyncio.to_thread(fetch)
    finally:
        await runner.cleanup()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    chunks = []
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        chunks.append(body[:size])
        body = body[size + 2 :]
    assert len(chunks) == 1  # every event and the terminal in a single write, the retry field on the first event
    assert chunks[0].startswith(b"retry: 2000\nid: ")
    events = parse(chunks[0])
    assert [e.data for e in events][:-1] == [f"t{i}" for i in range(300)]
    assert events[-1].event == "done"
