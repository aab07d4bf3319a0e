"""The event log contract (resumable_sse.EventLog), run unchanged against every store in STORE_FACTORIES."""

from __future__ import annotations

import asyncio
import time

import pytest

from resumable_sse import EventLog, StreamFenced, StreamNotFound
from resumable_sse._event import EventId

from .conftest import StoreFactory

LEASE = 30.0


async def claimed(store: EventLog, stream_id: str = "s1", token: str = "t1") -> str:
    claim = await store.claim(stream_id, token, LEASE)
    assert claim.acquired
    return claim.state.epoch


async def test_claim_creates_stream_with_epoch_and_empty_log(store: EventLog) -> None:
    claim = await store.claim("s1", "t1", LEASE)
    assert claim.acquired
    state = claim.state
    assert (state.stream_id, state.status, state.first_seq, state.last_seq) == ("s1", "running", 1, 0)
    assert state.epoch and EventId.parse(f"{state.epoch}-1").epoch == state.epoch
    assert await store.state("s1") == state
    assert await store.read("s1", 0, 100) == []


async def test_unknown_stream(store: EventLog) -> None:
    assert await store.state("nope") is None
    with pytest.raises(StreamNotFound):
        await store.read("nope", 0, 10)
    with pytest.raises(StreamNotFound):
        await store.wait("nope", 0, 10, 0.01)
    assert await store.renew("nope", "t", LEASE) is False
    assert await store.end("nope", "cancelled", "{}") is False


async def test_second_claim_is_refused_and_returns_current_state(store: EventLog) -> None:
    epoch = await claimed(store)
    await store.append("s1", "t1", [(None, "a")], after=0)
    again = await store.claim("s1", "t2", LEASE)
    assert not again.acquired
    assert again.state.epoch == epoch and again.state.last_seq == 1


async def test_concurrent_claims_have_exactly_one_winner(store: EventLog) -> None:
    results = await asyncio.gather(*(store.claim("race", f"t{i}", LEASE) for i in range(50)))
    assert sum(result.acquired for result in results) == 1
    assert len({result.state.epoch for result in results}) == 1


async def test_append_numbers_events_without_gaps_and_keeps_order(store: EventLog) -> None:
    epoch = await claimed(store)
    assert await store.append("s1", "t1", [(None, "a"), ("note", "b\nc")], after=0) == 2
    assert await store.append("s1", "t1", [(None, "")], after=2) == 3
    entries = await store.read("s1", 0, 100)
    assert [(e.id, e.seq, e.event, e.data, e.epoch) for e in entries] == [
        (f"{epoch}-1", 1, None, "a", epoch),
        (f"{epoch}-2", 2, "note", "b\nc", epoch),
        (f"{epoch}-3", 3, None, "", epoch),
    ]
    state = await store.state("s1")
    assert state is not None and (state.first_seq, state.last_seq, state.status) == (1, 3, "running")


async def test_unicode_and_large_batches_round_trip(store: EventLog) -> None:
    await claimed(store)
    events = [(None, f"tok {i} é 日本 🎉") for i in range(2000)]
    assert await store.append("s1", "t1", events, after=0) == 2000
    got = []
    after = 0
    while batch := await store.read("s1", after, 300):
        assert len(batch) <= 300
        got.extend(batch)
        after = batch[-1].seq
    assert [e.data for e in got] == [data for _, data in events]


async def test_read_is_exclusive_and_limited(store: EventLog) -> None:
    await claimed(store)
    await store.append("s1", "t1", [(None, str(i)) for i in range(1, 11)], after=0)
    assert [e.data for e in await store.read("s1", 4, 3)] == ["5", "6", "7"]
    assert await store.read("s1", 10, 5) == []
    assert await store.read("s1", 50, 5) == []


async def test_append_is_fenced_by_token(store: EventLog) -> None:
    await claimed(store)
    with pytest.raises(StreamFenced):
        await store.append("s1", "intruder", [(None, "x")], after=0)
    assert await store.read("s1", 0, 10) == []


async def test_append_checks_position_and_is_idempotent_for_retries(store: EventLog) -> None:
    await claimed(store)
    assert await store.append("s1", "t1", [(None, "a"), (None, "b")], after=0) == 2
    # The same append again (its reply was lost): recognised, nothing written twice.
    assert await store.append("s1", "t1", [(None, "a"), (None, "b")], after=0) == 2
    with pytest.raises(StreamFenced):
        await store.append("s1", "t1", [(None, "c")], after=5)
    assert [e.data for e in await store.read("s1", 0, 10)] == ["a", "b"]


async def test_final_append_ends_stream_and_fences_further_writes(store: EventLog) -> None:
    await claimed(store)
    await store.append("s1", "t1", [(None, "a"), ("done", '{"state":"done"}')], after=0, final="done")
    state = await store.state("s1")
    assert state is not None and state.status == "done" and state.finished and state.last_seq == 2
    last = (await store.read("s1", 1, 10))[0]
    assert last.terminal and last.event == "done"
    with pytest.raises(StreamFenced):
        await store.append("s1", "t1", [(None, "late")], after=2)
    assert await store.renew("s1", "t1", LEASE) is False
    assert await store.end("s1", "cancelled", "{}") is False
    assert not (await store.claim("s1", "t9", LEASE)).acquired


async def test_end_writes_terminal_once_and_fences_the_producer(store: EventLog) -> None:
    await claimed(store)
    await store.append("s1", "t1", [(None, "a")], after=0)
    results = await asyncio.gather(*(store.end("s1", "cancelled", '{"state":"cancelled"}') for _ in range(10)))
    assert results.count(True) == 1
    entries = await store.read("s1", 0, 10)
    assert [(e.seq, e.event) for e in entries] == [(1, None), (2, "cancelled")]
    state = await store.state("s1")
    assert state is not None and state.status == "cancelled"
    with pytest.raises(StreamFenced):
        await store.append("s1", "t1", [(None, "b")], after=1)
    with pytest.raises(StreamFenced):  # a retry of the producer's final append is not mistaken for applied
        await store.append("s1", "t1", [("done", "{}")], after=1, final="done")
    assert await store.renew("s1", "t1", LEASE) is False


async def test_end_only_if_expired_respects_the_lease(make_store: StoreFactory) -> None:
    store = await make_store()
    assert (await store.claim("short", "t1", 0.2)).acquired
    assert await store.end("short", "lost", "{}", only_if_expired=True) is False
    assert await store.renew("short", "t1", 0.2)
    await asyncio.sleep(0.4)
    assert await store.end("short", "lost", '{"state":"lost"}', only_if_expired=True) is True
    state = await store.state("short")
    assert state is not None and state.status == "lost"
    assert await store.renew("short", "t1", 5) is False


async def test_renew_keeps_a_live_producer(make_store: StoreFactory) -> None:
    store = await make_store()
    assert (await store.claim("live", "t1", 0.3)).acquired
    for _ in range(4):
        await asyncio.sleep(0.1)
        assert await store.renew("live", "t1", 0.3)
    assert await store.end("live", "lost", "{}", only_if_expired=True) is False
    assert await store.renew("live", "other", 0.3) is False


async def test_max_events_trims_oldest(make_store: StoreFactory) -> None:
    store = await make_store(max_events=5)
    await claimed(store)
    last = 0
    for i in range(1, 13):
        last = await store.append("s1", "t1", [(None, str(i))], after=last)
    state = await store.state("s1")
    assert state is not None and (state.first_seq, state.last_seq) == (8, 12)
    entries = await store.read("s1", 0, 100)
    assert [e.seq for e in entries] == [8, 9, 10, 11, 12]  # starts at the earliest retained: the gap is visible
    assert [e.seq for e in await store.read("s1", 9, 100)] == [10, 11, 12]


async def test_large_batch_is_trimmed_too(make_store: StoreFactory) -> None:
    store = await make_store(max_events=3)
    await claimed(store)
    await store.append("s1", "t1", [(None, str(i)) for i in range(1, 11)], after=0)
    assert [e.data for e in await store.read("s1", 0, 100)] == ["8", "9", "10"]


async def test_finished_stream_expires_after_ttl_and_gets_a_new_epoch(make_store: StoreFactory) -> None:
    store = await make_store(ttl=0.3)
    epoch = await claimed(store)
    await store.append("s1", "t1", [("done", "{}")], after=0, final="done")
    assert (await store.state("s1")) is not None
    await asyncio.sleep(0.6)
    assert await store.state("s1") is None
    with pytest.raises(StreamNotFound):
        await store.read("s1", 0, 10)
    again = await store.claim("s1", "t2", LEASE)
    assert again.acquired and again.state.epoch != epoch and again.state.last_seq == 0


async def test_running_stream_does_not_expire_while_its_lease_is_renewed(make_store: StoreFactory) -> None:
    store = await make_store(ttl=0.3)
    await store.claim("s1", "t1", 0.3)
    for _ in range(6):
        await asyncio.sleep(0.1)
        assert await store.renew("s1", "t1", 0.3)
    assert await store.state("s1") is not None


async def test_wait_returns_at_once_when_entries_exist(store: EventLog) -> None:
    await claimed(store)
    await store.append("s1", "t1", [(None, "a"), (None, "b")], after=0)
    started = time.monotonic()
    assert [e.data for e in await store.wait("s1", 0, 10, 5.0)] == ["a", "b"]
    assert time.monotonic() - started < 1.0


async def test_wait_times_out_with_nothing(store: EventLog) -> None:
    await claimed(store)
    started = time.monotonic()
    assert await store.wait("s1", 0, 10, 0.2) == []
    assert 0.15 <= time.monotonic() - started < 2.0


async def test_wait_wakes_on_append(store: EventLog) -> None:
    await claimed(store)
    waiter = asyncio.ensure_future(store.wait("s1", 0, 10, 10.0))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    started = time.monotonic()
    await store.append("s1", "t1", [(None, "x")], after=0)
    entries = await asyncio.wait_for(waiter, 5)
    assert [e.data for e in entries] == ["x"]
    assert time.monotonic() - started < 1.0


async def test_wait_wakes_on_end(store: EventLog) -> None:
    await claimed(store)
    waiter = asyncio.ensure_future(store.wait("s1", 0, 10, 10.0))
    await asyncio.sleep(0.1)
    await store.end("s1", "cancelled", '{"state":"cancelled"}')
    entries = await asyncio.wait_for(waiter, 5)
    assert [e.event for e in entries] == ["cancelled"]


async def test_many_waiters_all_wake(store: EventLog) -> None:
    await claimed(store)
    waiters = [asyncio.ensure_future(store.wait("s1", 0, 10, 10.0)) for _ in range(20)]
    await asyncio.sleep(0.1)
    await store.append("s1", "t1", [(None, "x")], after=0)
    results = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert all([e.data for e in r] == ["x"] for r in results)


async def test_streams_are_independent(store: EventLog) -> None:
    await claimed(store, "a", "ta")
    await claimed(store, "b", "tb")
    await store.append("a", "ta", [(None, "a1")], after=0)
    await store.append("b", "tb", [(None, "b1"), (None, "b2")], after=0)
    with pytest.raises(StreamFenced):
        await store.append("a", "tb", [(None, "x")], after=1)
    assert [e.data for e in await store.read("a", 0, 10)] == ["a1"]
    assert [e.data for e in await store.read("b", 0, 10)] == ["b1", "b2"]


async def test_stream_ids_with_every_allowed_character(store: EventLog) -> None:
    sid = "Az09._:-" * 16  # 128 characters, the longest allowed
    await claimed(store, sid, "t")
    await store.append(sid, "t", [(None, "ok")], after=0)
    assert [e.data for e in await store.read(sid, 0, 10)] == ["ok"]
