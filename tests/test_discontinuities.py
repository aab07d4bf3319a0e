"""When the store changes under a live reader: the stream recreated (new epoch shorter or longer than the reader's
position), rewound (an older snapshot restored), trimmed past the reader, or lost. On every store, the reader gets
exactly what a reconnect would: a reset and every retained event, or a terminal event; never a silent gap, never a
stalled event loop. Also the producer runtime's own bookkeeping: runs keyed by epoch, cancellation, failures logged.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from resumable_sse import Entry, EventLog, MemoryStore, Reset, Streamer
from resumable_sse._subscription import Gone

from .conftest import StoreFactory

LEASE = 30.0  # the test's own producer never renews: it must not be declared lost meanwhile


# -- faults a store can suffer, done to each kind of store the way it happens to it -----------------------------------


async def lose(store: EventLog, stream_id: str) -> None:
    """The store forgets the stream without a terminal entry (restart without persistence, eviction, flush)."""
    if isinstance(store, MemoryStore):
        store._forget(stream_id)
    else:
        await store.client.delete(*store.keys(stream_id)[:2])  # type: ignore[attr-defined]


async def snapshot(store: EventLog, stream_id: str) -> Any:
    if isinstance(store, MemoryStore):
        stream = copy.copy(store._streams[stream_id])
        stream.types, stream.texts = list(stream.types), list(stream.texts)
        return stream
    client: Any = store.client  # type: ignore[attr-defined]
    return [(key, await client.dump(key)) for key in store.keys(stream_id)[:2]]  # type: ignore[attr-defined]


async def restore(store: EventLog, stream_id: str, saved: Any) -> None:
    """The store goes back to ``saved`` (restarted from an older snapshot, a lagging replica promoted)."""
    if isinstance(store, MemoryStore):
        store._streams[stream_id] = saved
        return
    client: Any = store.client  # type: ignore[attr-defined]
    for key, dumped in saved:
        await client.restore(key, 0, dumped, replace=True)


# -- probes -----------------------------------------------------------------------------------------------------------


@pytest.fixture
async def loop_lag(make_store: StoreFactory) -> AsyncIterator[list[float]]:
    """Measures the event loop's worst stall during the test; asserts it stayed under 100 ms."""
    await make_store()  # the first store of a kind may start private servers: not a stall of the library
    gc.collect()  # nor a full collection of what earlier tests left (the model suite leaves plenty)
    worst = [0.0]

    async def probe() -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(0.01)
            worst[0] = max(worst[0], time.monotonic() - started - 0.01)

    task = asyncio.ensure_future(probe())
    yield worst
    task.cancel()
    assert worst[0] < 0.1, f"the event loop stalled for {worst[0] * 1000:.0f} ms"


class Reader:
    """A live reader collecting everything it is sent."""

    def __init__(self, streamer: Streamer, stream_id: str) -> None:
        self.items: list[Entry | Reset | Gone] = []
        self.streamer = streamer
        self.stream_id = stream_id
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Reader:
        subscription = await self.streamer.subscribe(self.stream_id)

        async def run() -> None:
            async for item in subscription:
                self.items.append(item)

        self.task = asyncio.ensure_future(run())
        return self

    async def until(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.items) < count:
            assert time.monotonic() < deadline, f"{len(self.items)} of {count} items: {self.items}"
            await asyncio.sleep(0.01)

    async def end(self, timeout: float = 10.0) -> list[Entry | Reset | Gone]:
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout)
        return self.items


def shape(items: Sequence[Entry | Reset | Gone]) -> list[tuple[str, ...]]:
    """Items as comparable rows: ('entry', id, data), ('reset', reason, first_id), ('gone',)."""
    rows: list[tuple[str, ...]] = []
    for item in items:
        if isinstance(item, Entry):
            rows.append(("entry", item.id, item.data))
        elif isinstance(item, Reset):
            rows.append(("reset", item.reason, str(item.first_id)))
        else:
            rows.append(("gone",))
    return rows


def entries(epoch: str, texts: Sequence[str], first: int = 1) -> list[tuple[str, ...]]:
    return [("entry", f"{epoch}-{first + i}", text) for i, text in enumerate(texts)]


async def produced(store: EventLog, stream_id: str, token: str, texts: Sequence[str], after: int = 0) -> str:
    """Claim (when ``after`` is 0) and append ``texts`` as a remote producer would; the stream's epoch."""
    if after == 0:
        claim = await store.claim(stream_id, token, LEASE)
        assert claim.acquired
    await store.append(stream_id, token, [(None, text) for text in texts], after=after)
    state = await store.state(stream_id)
    assert state is not None
    return state.epoch


async def appended(store: EventLog, stream_id: str, count: int) -> None:
    """Wait until the store holds ``count`` events of the stream."""
    for _ in range(500):
        state = await store.state(stream_id)
        if state is not None and state.last_seq >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{stream_id!r} never reached {count} events")


async def finish(store: EventLog, stream_id: str, token: str, after: int) -> None:
    await store.append(stream_id, token, [("done", '{"state":"done"}')], after=after, final="done")


# -- the reader's side ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("new_length", [3, 8], ids=["shorter", "longer"])
async def test_a_stream_recreated_under_a_live_reader_is_a_reset_then_the_new_life(
    make_store: StoreFactory, loop_lag: list[float], new_length: int
) -> None:
    store = await make_store()
    streamer = Streamer(store, lease=0.6)
    old = await produced(store, "s", "t1", ["a", "b", "c", "d", "e"])
    reader = await Reader(streamer, "s").start()
    await reader.until(5)
    await lose(store, "s")
    new_texts = [f"new{i}" for i in range(1, new_length + 1)]
    new = await produced(store, "s", "t2", new_texts)
    await finish(store, "s", "t2", new_length)
    got = shape(await reader.end())
    assert new != old
    done = ("entry", f"{new}-{new_length + 1}", '{"state":"done"}')
    # The claim of the new life is announced at once: the reader may hear of it before its first event exists.
    reset = got[5]
    assert reset in {("reset", "epoch", f"{new}-1"), ("reset", "epoch", "None")}
    assert got == [*entries(old, "abcde"), reset, *entries(new, new_texts), done]
    await streamer.close()


async def test_a_stream_rewound_under_a_live_reader_is_a_reset_then_the_retained_events(
    make_store: StoreFactory, loop_lag: list[float]
) -> None:
    store = await make_store()
    streamer = Streamer(store, lease=0.6)
    epoch = await produced(store, "s", "t", ["a", "b", "c"])
    saved = await snapshot(store, "s")
    await produced(store, "s", "t", ["d", "e"], after=3)
    reader = await Reader(streamer, "s").start()
    await reader.until(5)
    await restore(store, "s", saved)  # silently: nothing is published
    await reader.until(9)  # noticed by the audit of quiet streams (lease / 2)
    await produced(store, "s", "t", ["D"], after=3)
    await finish(store, "s", "t", 4)
    got = shape(await reader.end())
    assert got == [
        *entries(epoch, "abcde"),
        ("reset", "position", f"{epoch}-1"),
        *entries(epoch, "abc"),
        ("entry", f"{epoch}-4", "D"),
        ("entry", f"{epoch}-5", '{"state":"done"}'),
    ]
    await streamer.close()


async def test_a_reader_the_store_trimmed_past_gets_a_reset_then_the_retained_events(
    make_store: StoreFactory, loop_lag: list[float]
) -> None:
    store = await make_store(max_events=10)
    streamer = Streamer(store, batch_size=4, window=4)  # a window too short to bridge the gap
    epoch = await produced(store, "s", "t", ["1", "2", "3"])
    subscription = await streamer.subscribe("s")
    batches = subscription.batches()
    first = await anext(batches)
    assert [item.data for item in first if isinstance(item, Entry)] == ["1", "2", "3"]
    await produced(store, "s", "t", [str(i) for i in range(4, 31)], after=3)  # the reader falls 27 behind
    await finish(store, "s", "t", 30)
    rest = [item async for batch in batches for item in batch]
    assert shape(rest) == [
        ("reset", "trimmed", f"{epoch}-22"),
        *entries(epoch, [str(i) for i in range(22, 31)], first=22),
        ("entry", f"{epoch}-31", '{"state":"done"}'),
    ]
    await streamer.close()


async def test_a_stream_lost_under_a_live_reader_ends_it_with_a_lost_event(
    make_store: StoreFactory, loop_lag: list[float]
) -> None:
    store = await make_store()
    streamer = Streamer(store, lease=0.6)
    epoch = await produced(store, "s", "t", ["a", "b"])
    reader = await Reader(streamer, "s").start()
    await reader.until(2)
    started = time.monotonic()
    await lose(store, "s")
    got = await reader.end()
    assert shape(got) == [*entries(epoch, "ab"), ("gone",)]
    assert time.monotonic() - started < 0.6 + 2  # within an audit interval (lease / 2) and change
    assert got[-1].wire() == b'event: lost\ndata: {"state":"lost","message":"the stream is no longer in the store"}\n\n'
    await streamer.close()


async def test_a_quiet_reader_costs_no_store_calls_between_audits(make_store: StoreFactory) -> None:
    # Never a busy loop: a reader that has everything waits; the store is asked about the stream once per audit.
    store = await make_store()
    streamer = Streamer(store, lease=0.6)
    await produced(store, "s", "t", ["a"])
    reader = await Reader(streamer, "s").start()
    await reader.until(1)
    calls = {"read": 0, "audit": 0}
    for name in calls:
        original = getattr(store, name)

        async def counted(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            calls[_name] += 1
            return await _original(*args, **kwargs)

        setattr(store, name, counted)
    await asyncio.sleep(0.95)  # about three audit intervals (lease / 2)
    assert calls["read"] == 0
    assert 2 <= calls["audit"] <= 4
    await streamer.close()


# -- the producer runtime -------------------------------------------------------------------------------------------


async def test_a_run_of_a_new_epoch_is_not_dropped_when_the_old_one_ends(make_store: StoreFactory) -> None:
    store = await make_store()
    streamer = Streamer(store, lease=0.6)
    release_old = asyncio.Event()

    async def old_producer() -> AsyncIterator[str]:
        yield "old"
        await release_old.wait()
        yield "never written"

    async def new_producer() -> AsyncIterator[str]:
        for i in range(20):
            yield f"new{i}"
            await asyncio.sleep(0.1)  # two seconds: more than a lease

    old = await streamer.start("s", old_producer)
    assert old is not None
    await appended(store, "s", 1)
    await lose(store, "s")
    new = await streamer.start("s", new_producer)
    assert new is not None and new.epoch != old.epoch
    release_old.set()
    assert await asyncio.wait_for(old.wait(), 5) == "lost"  # its stream is gone: it could not write
    assert streamer.producer("s") is not None and streamer.producer("s").epoch == new.epoch  # type: ignore[union-attr]
    assert await asyncio.wait_for(new.wait(), 10) == "done"  # its lease was renewed all along: not lost
    final = await store.state("s")
    assert final is not None and (final.epoch, final.status, final.last_seq) == (new.epoch, "done", 21)
    await streamer.close()


async def test_cancelling_a_producer_task_cancels_it() -> None:
    streamer = Streamer(MemoryStore())

    async def forever() -> AsyncIterator[str]:
        while True:
            yield "x"
            await asyncio.sleep(0.01)

    producer = await streamer.start("s", forever)
    assert producer is not None
    await asyncio.sleep(0.05)
    task = streamer.producers.get("s", producer.epoch).task  # type: ignore[union-attr]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()  # the supervisor did not swallow the cancel aimed at it
    assert len(streamer.producers) == 0
    await streamer.close()


async def test_a_producer_whose_stream_the_store_lost_is_logged_with_the_stream_id(
    make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    store = await make_store()
    streamer = Streamer(store)
    gate = asyncio.Event()

    async def produce() -> AsyncIterator[str]:
        yield "a"
        await gate.wait()
        yield "b"

    producer = await streamer.start("s", produce)
    assert producer is not None
    await appended(store, "s", 1)
    await lose(store, "s")
    with caplog.at_level(logging.WARNING, logger="resumable_sse"):
        gate.set()
        assert await asyncio.wait_for(producer.wait(), 5) == "lost"
    records = [r for r in caplog.records if getattr(r, "stream_id", None) == "s" and r.levelno >= logging.ERROR]
    assert len(records) == 1 and records[0].name == "resumable_sse" and "lost" in records[0].getMessage()
    assert not [record for record in caplog.records if record.name == "asyncio"]
    await streamer.close()
