"""How a producer's events reach the store: SubmitsAppends (the append started without a coroutine) on every store,
and the producer run that starts each append in the step that yielded its events."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from resumable_sse import (
    EventLog,
    MemoryStore,
    Page,
    StoreUnavailable,
    Streamer,
    StreamFenced,
    StreamNotFound,
    SubmitsAppends,
)
from resumable_sse._log import Outcome
from resumable_sse.stores.redis import RedisStore

from .helpers import read_entries
from .redis_servers import shared_cluster, shared_server, unique_prefix

LEASE = 30.0


def submitter(store: EventLog) -> SubmitsAppends:
    assert isinstance(store, SubmitsAppends), "the library's stores start appends without a coroutine"
    return store


async def test_submitted_appends_number_fence_and_recognise_retries_like_append(store: EventLog) -> None:
    submit = submitter(store).submit_append
    claim = await store.claim("s1", "t1", LEASE)
    assert claim.acquired
    assert await submit("s1", "t1", [(None, "a"), ("note", "b")], after=0) == 2
    assert await submit("s1", "t1", [(None, "c")], after=2) == 3
    assert await submit("s1", "t1", [(None, "c")], after=2) == 3  # a retry whose reply was lost: nothing twice
    with pytest.raises(StreamFenced):
        await submit("s1", "intruder", [(None, "x")], after=3)
    with pytest.raises(StreamFenced):
        await submit("s1", "t1", [(None, "x")], after=7)
    with pytest.raises(StreamNotFound):
        await submit("unknown", "t1", [(None, "x")], after=0)
    entries = await read_entries(store, "s1", 0, 10)
    assert [(e.seq, e.event, e.data) for e in entries] == [(1, None, "a"), (2, "note", "b"), (3, None, "c")]
    assert await submit("s1", "t1", [("done", "{}")], after=3, final="done") == 4
    state = await store.state("s1")
    assert state is not None and state.status == "done" and state.last_seq == 4


async def test_appends_submitted_in_one_turn_for_many_streams_keep_each_streams_order(store: EventLog) -> None:
    submit = submitter(store).submit_append
    streams = [f"s{i}" for i in range(40)]
    for sid in streams:
        assert (await store.claim(sid, "t", LEASE)).acquired
    last = dict.fromkeys(streams, 0)
    for round_ in range(5):  # every stream's append of a round is submitted before any of them is awaited
        futures = {sid: submit(sid, "t", [(None, f"{sid}/{round_}")], after=last[sid]) for sid in streams}
        for sid, future in futures.items():
            last[sid] = await future
    for sid in streams:
        assert [e.data for e in await read_entries(store, sid, 0, 10)] == [f"{sid}/{r}" for r in range(5)]


async def test_a_submitted_append_is_notified_with_its_entries(store: EventLog) -> None:
    claim = await store.claim("s1", "t1", LEASE)
    assert claim.acquired
    seen: list[tuple[str, Page | None]] = []
    watch = store.watch(lambda sid, page: seen.append((sid, page)))
    watch.follow("s1", entries=False)  # as while this process produces the stream: its own appends come at once
    await submitter(store).submit_append("s1", "t1", [(None, "a"), (None, "b")], after=0)
    pages = [page for sid, page in seen if sid == "s1" and page is not None and page.entries]
    assert [[(e.id, e.data) for e in page.entries] for page in pages] == [
        [(f"{claim.state.epoch}-1", "a"), (f"{claim.state.epoch}-2", "b")]
    ]
    await watch.close()


async def test_the_memory_store_appends_before_submit_append_returns() -> None:
    store = MemoryStore()
    assert (await store.claim("s1", "t1", LEASE)).acquired
    future = store.submit_append("s1", "t1", [(None, "a")], after=0)
    assert future.done() and future.result() == 1
    refused = store.submit_append("s1", "intruder", [(None, "b")], after=1)
    assert refused.done() and isinstance(refused.exception(), StreamFenced)


async def test_the_memory_store_applies_append_at_once_before_it_returns() -> None:
    """The producer's way on the memory store (no future per append): numbered, notified and fenced like append."""
    store = MemoryStore()
    pages: list[Page | None] = []
    watch = store.watch(lambda _stream_id, page: pages.append(page))
    assert (await store.claim("s1", "t1", LEASE)).acquired
    watch.follow("s1")
    assert store.append_at_once("s1", "t1", [(None, "a"), ("note", "b")], after=0) == 2
    assert store.append_at_once("s1", "t1", [(None, "a"), ("note", "b")], after=0) == 2  # a retry: nothing written
    page = pages[-1]
    assert page is not None and [(e.seq, e.event, e.data) for e in page.entries] == [(1, None, "a"), (2, "note", "b")]
    with pytest.raises(StreamFenced):
        store.append_at_once("s1", "intruder", [(None, "c")], after=2)
    with pytest.raises(StreamNotFound):
        store.append_at_once("nope", "t1", [(None, "c")], after=0)
    assert store.append_at_once("s1", "t1", [("done", "{}")], after=2, final="done") == 3
    state = await store.state("s1")
    assert state is not None and state.status == "done" and state.last_seq == 3
    await watch.close()


async def test_an_append_at_once_that_finds_the_store_unreachable_is_retried() -> None:
    """An in-process store that raises StoreUnavailable from append_at_once is retried through the Streamer (with
    backoff), like a submitted append: every event once, in order, and the stream ends done."""

    class Flaky(MemoryStore):
        failures = 2

        def append_at_once(self, *args: Any, **kwargs: Any) -> int:
            if self.failures:
                self.failures -= 1
                raise StoreUnavailable("not now")
            return super().append_at_once(*args, **kwargs)

    store = Flaky()
    streamer = Streamer(store, store_retry_timeout=10)

    async def produce() -> AsyncIterator[str]:
        for token in ("a", "b", "c", "d"):
            await asyncio.sleep(0)
            yield token

    producer = await streamer.start("s", produce)
    assert producer is not None and await producer.wait() == "done"
    page = await store.read("s", 0, 100)
    assert page is not None and [e.data for e in page.entries][:4] == ["a", "b", "c", "d"]
    assert page.entries[-1].event == "done" and page.state.last_seq == 5 and store.failures == 0
    await streamer.close()


async def test_a_yielded_token_is_in_the_store_before_the_producer_runs_again() -> None:
    """The run appends in the step that pulled the event: no writer task between the producer and its readers."""
    store = MemoryStore()
    streamer = Streamer(store)
    seen: list[int] = []

    async def produce() -> AsyncIterator[str]:
        for token in ("a", "b", "c"):
            await asyncio.sleep(0)  # a producer that waits between tokens (an LLM's pace)
            yield token
            state = await store.state("s")  # (the memory store answers without suspending)
            assert state is not None
            seen.append(state.last_seq)

    producer = await streamer.start("s", produce)
    assert producer is not None and await producer.wait() == "done"
    assert seen == [1, 2, 3]
    await streamer.close()


async def test_a_producer_that_never_waits_is_batched_and_does_not_hold_the_loop() -> None:
    """Events yielded in one turn of the loop go in one append (after the turn's first), at most ``limit`` (16,
    doubling up to batch_size) at a time, and the loop runs between those appends: readers and other streams are
    served while a producer runs flat out."""
    store = MemoryStore(max_events=30_000)
    appends: list[int] = []
    original = store.append_at_once  # the producer's appends come this way on the memory store

    def recorded(stream_id: str, token: str, events: Any, **kwargs: Any) -> int:
        appends.append(len(events))
        return original(stream_id, token, events, **kwargs)

    async def recorded_final(stream_id: str, token: str, events: Any, **kwargs: Any) -> int:
        appends.append(len(events))
        return await original_final(stream_id, token, events, **kwargs)

    original_final = store.append  # the run's last append (what is pending, and the terminal) comes this way
    store.append_at_once = recorded  # type: ignore[method-assign]
    store.append = recorded_final  # type: ignore[method-assign]
    streamer = Streamer(store)
    turns = 0
    done = False

    async def ticker() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    async def produce() -> AsyncIterator[str]:
        for i in range(20_000):
            yield str(i)  # never waits

    ticking = asyncio.ensure_future(ticker())
    producer = await streamer.start("s", produce)
    assert producer is not None and await producer.wait() == "done"
    done = True
    await ticking
    assert sum(appends) == 20_001 and len(appends) < 80  # batched (and the terminal)
    assert max(appends) <= 1025
    assert turns >= len(appends) // 2  # the loop ran between the batches, not once at the end
    entries = await read_entries(store, "s", 0, 30_000)
    assert [e.data for e in entries[:-1]] == [str(i) for i in range(20_000)]
    await streamer.close()


@pytest.mark.redis
@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster"])
async def test_the_producer_is_pulled_while_its_append_travels(cluster: bool) -> None:
    """(Redis: the memory store appends synchronously, so no append of it is ever in flight.)"""
    url = shared_cluster().url if cluster else shared_server().url
    store = RedisStore.from_url(url, cluster=cluster, key_prefix=unique_prefix())
    submitted: list[Outcome] = []
    original = store.append_then  # the producer's appends come this way on the Redis store

    def recorded(*args: Any, outcome: Outcome, **kwargs: Any) -> None:
        original(*args, outcome=outcome, **kwargs)
        submitted.append(outcome)

    store.append_then = recorded  # type: ignore[method-assign]
    streamer = Streamer(store)
    in_flight: list[bool] = []

    async def produce() -> AsyncIterator[str]:
        yield "a"
        in_flight.append(not submitted[0].done())  # pulled again before the first append's round trip is back
        yield "b"
        yield "c"

    producer = await streamer.start("s", produce)
    assert producer is not None and await producer.wait() == "done"
    assert in_flight == [True]
    entries = await read_entries(store, "s", 0, 10)
    assert [e.data for e in entries[:-1]] == ["a", "b", "c"] and entries[-1].event == "done"
    await streamer.close()


async def test_a_stream_ended_from_within_the_producers_own_step_stops_it_without_a_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The end is notified inside the run's own task (no cancel can be delivered there): the run stops at its next
    event, which is not appended."""
    store = MemoryStore()
    streamer = Streamer(store)

    async def produce() -> AsyncIterator[str]:
        yield "a"
        await store.end("s", "cancelled", '{"state":"cancelled"}')  # notified to the hub, in this very task
        yield "b"
        yield "c"

    producer = await streamer.start("s", produce)
    assert producer is not None and await producer.wait() == "cancelled"
    entries = await read_entries(store, "s", 0, 10)
    assert [(e.event, e.data) for e in entries] == [(None, "a"), ("cancelled", '{"state":"cancelled"}')]
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
    await streamer.close()


async def test_a_producer_that_raises_cancelled_error_itself() -> None:
    """Python 3.11+ tells a producer's own CancelledError from a cancel of the run's task: the stream ends
    ``cancelled`` with its terminal entry. On 3.10 it cannot: the run's task ends cancelled, as if it had been."""
    store = MemoryStore()
    streamer = Streamer(store)

    async def produce() -> AsyncIterator[str]:
        yield "a"
        raise asyncio.CancelledError

    producer = await streamer.start("s", produce)
    assert producer is not None
    if sys.version_info >= (3, 11):
        assert await producer.wait() == "cancelled"
        entries = await read_entries(store, "s", 0, 10)
        assert [e.event for e in entries] == [None, "cancelled"]
    else:
        with pytest.raises(asyncio.CancelledError):
            await producer.wait()
    await streamer.close()
