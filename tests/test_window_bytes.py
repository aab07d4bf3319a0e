"""Server memory per stream is bounded in bytes: the window a process keeps for readers that fall behind holds at
most ``window_bytes`` of event data, a reader's batch at most ``max_batch_bytes`` (one event at least), and one write
to a client at most ``WRITE_BYTES``; a reader behind all of that still gets every event exactly once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from resumable_sse import Entry, Streamer
from resumable_sse._http import WRITE_BYTES, _parts

from .conftest import StoreFactory

KIB = 1024


def window_data(streamer: Streamer, stream_id: str) -> tuple[int, int]:
    """The bytes of event data and the number of entries in the window of ``stream_id`` (0 when not followed)."""
    tail = streamer.hub.tails.get(stream_id)
    if tail is None:
        return 0, 0
    return sum(len(entry.data) for entry in tail.window), len(tail.window)


async def test_the_window_stays_within_its_bytes_while_a_reader_lags(make_store: StoreFactory) -> None:
    """A reader reads its first batch and stops while 400 events of 4 KiB (1.6 MB) are written: the window never holds
    more than its 64 KiB (it did keep what fits: the budget binds, not an empty window); the reader then gets every
    event exactly once, in order, from the store."""
    store = await make_store()
    budget = 64 * KIB
    sizes: list[int] = []
    async with Streamer(store, window_bytes=budget, max_event_bytes=8 * KIB, max_batch_bytes=64 * KIB) as streamer:
        gate = asyncio.Event()

        async def produce() -> AsyncIterator[str]:
            yield "first"
            await gate.wait()
            for i in range(400):
                yield f"{i:04d}" + "d" * (4 * KIB - 4)
                sizes.append(window_data(streamer, "w")[0])  # (the append of the event before this one is in)
                if i % 10 == 0:
                    await asyncio.sleep(0)

        producer = await streamer.start("w", produce)
        assert producer is not None
        subscription = await streamer.subscribe("w")
        batches = subscription.batches()
        first = await batches.__anext__()
        assert [item.data for item in first] == ["first"]
        gate.set()
        assert await asyncio.wait_for(producer.wait(), 30) == "done"
        sizes.append(window_data(streamer, "w")[0])
        rest = [item async for batch in batches for item in batch]
    assert max(sizes) <= budget
    assert max(sizes) > budget // 2
    entries = [item for item in rest if isinstance(item, Entry)]
    assert len(entries) == len(rest)  # no reset: the store kept everything
    assert [entry.seq for entry in entries] == list(range(2, 403))
    assert [entry.data[:4] for entry in entries[:-1]] == [f"{i:04d}" for i in range(400)]
    assert entries[-1].event == "done"


async def test_a_reader_far_behind_reads_the_store_in_batches_of_bounded_bytes(make_store: StoreFactory) -> None:
    """200 events of 32 KiB (6.4 MB) are in the store before the reader starts: each batch it gets holds at most
    max_batch_bytes of data (a read of batch_size events would hold all of them), and every event comes once."""
    store = await make_store()
    async with Streamer(store, max_event_bytes=64 * KIB, max_batch_bytes=256 * KIB) as streamer:

        async def produce() -> AsyncIterator[str]:
            for i in range(200):
                yield f"{i:04d}" + "b" * (32 * KIB - 4)

        producer = await streamer.start("b", produce)
        assert producer is not None
        assert await asyncio.wait_for(producer.wait(), 30) == "done"
        subscription = await streamer.subscribe("b")
        batches = [batch async for batch in subscription.batches()]
    assert all(sum(len(item.data) for item in batch) <= 256 * KIB for batch in batches)
    items = [item for batch in batches for item in batch]
    assert [item.data[:4] for item in items[:-1]] == [f"{i:04d}" for i in range(200)]
    assert items[-1].event == "done"


async def test_an_event_larger_than_the_window_is_read_from_the_store() -> None:
    """An event larger than the whole window is not kept in it; a reader behind it reads it from the store."""
    async with Streamer(window_bytes=KIB) as streamer:
        gate = asyncio.Event()

        async def produce() -> AsyncIterator[str]:
            yield "small"
            await gate.wait()
            yield "L" * (2 * KIB)
            yield "after"

        producer = await streamer.start("l", produce)
        assert producer is not None
        subscription = await streamer.subscribe("l")
        batches = subscription.batches()
        assert [item.data for item in await batches.__anext__()] == ["small"]
        gate.set()
        assert await asyncio.wait_for(producer.wait(), 5) == "done"
        assert window_data(streamer, "l")[0] <= KIB
        rest = [item async for batch in batches for item in batch]
    assert [item.data for item in rest[:-1]] == ["L" * (2 * KIB), "after"]


@pytest.mark.parametrize("sizes", [[10, 20, 30], [300 * KIB], [100 * KIB] * 7, [10, 300 * KIB, 10, 10]])
def test_a_batch_goes_in_writes_of_bounded_bytes_whole_and_in_order(sizes: list[int]) -> None:
    """A batch is one write when its data fits WRITE_BYTES; else consecutive writes of at most that (or of one
    event), which together are the batch, in order."""
    batch = [Entry("e", index + 1, None, "x" * size) for index, size in enumerate(sizes)]
    parts = _parts(batch)
    assert [entry for part in parts for entry in part] == batch
    assert all(len(part) == 1 or sum(len(entry.data) for entry in part) <= WRITE_BYTES for part in parts)
    if sum(sizes) <= WRITE_BYTES or len(sizes) == 1:
        assert parts == [batch]
    else:
        assert len(parts) > 1


def test_window_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window_bytes"):
        Streamer(window_bytes=0)
