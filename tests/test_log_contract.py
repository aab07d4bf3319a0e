"""The event log contract (resumable_sse.EventLog), run unchanged against every store in STORE_FACTORIES."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from resumable_sse import EventLog, Page, StreamFenced, StreamNotFound
from resumable_sse._event import EventId

from .conftest import StoreFactory
from .helpers import end_if_expired, read_entries, renew_one

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
    assert await read_entries(store, "s1", 0, 100) == []


async def test_unknown_stream(store: EventLog) -> None:
    assert await store.state("nope") is None
    with pytest.raises(StreamNotFound):
        await read_entries(store, "nope", 0, 10)
    assert await store.audit(["nope"], "{}") == [None]
    assert await renew_one(store, "nope", "t", LEASE) is False
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
    entries = await read_entries(store, "s1", 0, 100)
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
    while batch := await read_entries(store, "s1", after, 300):
        assert len(batch) <= 300
        got.extend(batch)
        after = batch[-1].seq
    assert [e.data for e in got] == [data for _, data in events]


async def test_read_is_exclusive_and_limited(store: EventLog) -> None:
    await claimed(store)
    await store.append("s1", "t1", [(None, str(i)) for i in range(1, 11)], after=0)
    assert [e.data for e in await read_entries(store, "s1", 4, 3)] == ["5", "6", "7"]
    assert await read_entries(store, "s1", 10, 5) == []
    # beyond the end: the store went back in time under the caller, who gets the earliest retained to replay
    assert [e.data for e in await read_entries(store, "s1", 50, 5)] == ["1", "2", "3", "4", "5"]


async def test_append_is_fenced_by_token(store: EventLog) -> None:
    await claimed(store)
    with pytest.raises(StreamFenced):
        await store.append("s1", "intruder", [(None, "x")], after=0)
    assert await read_entries(store, "s1", 0, 10) == []


async def test_append_checks_position_and_is_idempotent_for_retries(store: EventLog) -> None:
    await claimed(store)
    assert await store.append("s1", "t1", [(None, "a"), (None, "b")], after=0) == 2
    # The same append again (its reply was lost): recognised, nothing written twice.
    assert await store.append("s1", "t1", [(None, "a"), (None, "b")], after=0) == 2
    with pytest.raises(StreamFenced):
        await store.append("s1", "t1", [(None, "c")], after=5)
    assert [e.data for e in await read_entries(store, "s1", 0, 10)] == ["a", "b"]


async def test_final_append_ends_stream_and_fences_further_writes(store: EventLog) -> None:
    await claimed(store)
    await store.append("s1", "t1", [(None, "a"), ("done", '{"state":"done"}')], after=0, final="done")
    state = await store.state("s1")
    assert state is not None and state.status == "done" and state.finished and state.last_seq == 2
    last = (await read_entries(store, "s1", 1, 10))[0]
    assert last.terminal and last.event == "done"
    with pytest.raises(StreamFenced):
        await store.append("s1", "t1", [(None, "late")], after=2)
    assert await renew_one(store, "s1", "t1", LEASE) is False
    assert await store.end("s1", "cancelled", "{}") is False
    assert not (await store.claim("s1", "t9", LEASE)).acquired


async def test_end_writes_terminal_once_and_fences_the_producer(store: EventLog) -> None:
    await claimed(store)
    await store.append("s1", "t1", [(None, "a")], after=0)
    results = await asyncio.gather(*(store.end("s1", "cancelled", '{"state":"cancelled"}') for _ in range(10)))
    assert results.count(True) == 1
    entries = await read_entries(store, "s1", 0, 10)
    assert [(e.seq, e.event) for e in entries] == [(1, None), (2, "cancelled")]
    state = await store.state("s1")
    assert state is not None and state.status == "cancelled"
    with pytest.raises(StreamFenced):
        await store.append("s1", "t1", [(None, "b")], after=1)
    with pytest.raises(StreamFenced):  # a retry of the producer's final append is not mistaken for applied
        await store.append("s1", "t1", [("done", "{}")], after=1, final="done")
    assert await renew_one(store, "s1", "t1", LEASE) is False


async def test_end_only_if_expired_respects_the_lease(make_store: StoreFactory) -> None:
    store = await make_store()
    assert (await store.claim("short", "t1", 0.2)).acquired
    assert await end_if_expired(store, "short", "{}") is False
    assert await renew_one(store, "short", "t1", 0.2)
    await asyncio.sleep(0.4)
    assert await end_if_expired(store, "short", '{"state":"lost"}') is True
    state = await store.state("short")
    assert state is not None and state.status == "lost"
    assert await renew_one(store, "short", "t1", 5) is False


async def test_one_audit_of_many_streams_answers_each_and_ends_only_the_dead(make_store: StoreFactory) -> None:
    # A process audits the streams it follows together (a reconnect storm starts following thousands at once): each
    # gets its own answer, in order, and only a running stream whose producer's lease ran out is ended lost, once.
    store = await make_store()
    assert (await store.claim("dead", "t1", 0.2)).acquired
    assert (await store.claim("live", "t2", 30)).acquired
    assert (await store.claim("done", "t3", 30)).acquired
    await store.append("done", "t3", [(None, "a"), ("done", "{}")], after=0, final="done")
    await asyncio.sleep(0.4)
    lost = '{"state":"lost"}'
    dead, unknown, live, done = await store.audit(["dead", "nope", "live", "done"], lost)
    assert unknown is None
    assert dead is not None and (dead.stream_id, dead.status, dead.last_seq) == ("dead", "lost", 1)
    assert live is not None and (live.stream_id, live.status, live.last_seq) == ("live", "running", 0)
    assert done is not None and (done.stream_id, done.status, done.last_seq) == ("done", "done", 2)
    assert [(entry.event, entry.data) for entry in await read_entries(store, "dead")] == [("lost", lost)]
    again = await store.audit(["dead", "live"], lost)
    assert again == [dead, live]  # nothing written twice
    assert await renew_one(store, "live", "t2", 30)


async def test_renew_keeps_a_live_producer(make_store: StoreFactory) -> None:
    store = await make_store()
    assert (await store.claim("live", "t1", 0.3)).acquired
    for _ in range(4):
        await asyncio.sleep(0.1)
        assert await renew_one(store, "live", "t1", 0.3)
    assert await end_if_expired(store, "live", "{}") is False
    assert await renew_one(store, "live", "other", 0.3) is False


async def test_max_events_trims_oldest(make_store: StoreFactory) -> None:
    store = await make_store(max_events=5)
    await claimed(store)
    last = 0
    for i in range(1, 13):
        last = await store.append("s1", "t1", [(None, str(i))], after=last)
    state = await store.state("s1")
    assert state is not None and (state.first_seq, state.last_seq) == (8, 12)
    entries = await read_entries(store, "s1", 0, 100)
    assert [e.seq for e in entries] == [8, 9, 10, 11, 12]  # starts at the earliest retained: the gap is visible
    assert [e.seq for e in await read_entries(store, "s1", 9, 100)] == [10, 11, 12]


async def test_large_batch_is_trimmed_too(make_store: StoreFactory) -> None:
    store = await make_store(max_events=3)
    await claimed(store)
    await store.append("s1", "t1", [(None, str(i)) for i in range(1, 11)], after=0)
    assert [e.data for e in await read_entries(store, "s1", 0, 100)] == ["8", "9", "10"]


async def test_finished_stream_expires_after_ttl_and_gets_a_new_epoch(make_store: StoreFactory) -> None:
    store = await make_store(ttl=0.3)
    epoch = await claimed(store)
    await store.append("s1", "t1", [("done", "{}")], after=0, final="done")
    assert (await store.state("s1")) is not None
    await asyncio.sleep(0.6)
    assert await store.state("s1") is None
    with pytest.raises(StreamNotFound):
        await read_entries(store, "s1", 0, 10)
    again = await store.claim("s1", "t2", LEASE)
    assert again.acquired and again.state.epoch != epoch and again.state.last_seq == 0


async def test_running_stream_does_not_expire_while_its_lease_is_renewed(make_store: StoreFactory) -> None:
    store = await make_store(ttl=0.3)
    await store.claim("s1", "t1", 0.3)
    for _ in range(6):
        await asyncio.sleep(0.1)
        assert await renew_one(store, "s1", "t1", 0.3)
    assert await store.state("s1") is not None


class Recorder:
    """An ``on_change`` that keeps what a watch reports; ``None`` reports (read again) are counted apart."""

    def __init__(self) -> None:
        self.pages: list[tuple[str, Page]] = []
        self.resyncs: list[str] = []
        self.event = asyncio.Event()

    def __call__(self, stream_id: str, page: Page | None) -> None:
        if page is None:
            self.resyncs.append(stream_id)
        elif not any(
            sid == stream_id and (seen.state.epoch, seen.state.last_seq) == (page.state.epoch, page.state.last_seq)
            for sid, seen in self.pages
        ):  # a change made through this store may be reported twice: at once, and again by the server
            self.pages.append((stream_id, page))
        self.event.set()

    async def settled(self, stream_id: str) -> None:
        """Wait until a follow is effective: announced (a store that may have missed changes) or 0.3 s passed."""
        deadline = time.monotonic() + 0.3
        while stream_id not in self.resyncs and time.monotonic() < deadline:
            self.event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.event.wait(), 0.05)

    async def wait_for(self, count: int) -> list[tuple[str, Page]]:
        deadline = time.monotonic() + 5
        while len(self.pages) < count:
            assert time.monotonic() < deadline, f"{len(self.pages)} of {count} changes reported"
            self.event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.event.wait(), 0.5)
        return self.pages


async def test_watch_reports_appends_with_their_entries_and_the_new_shape(store: EventLog) -> None:
    epoch = await claimed(store)
    recorder = Recorder()
    watch = store.watch(recorder)
    watch.follow("s1")
    await recorder.settled("s1")
    await store.append("s1", "t1", [(None, "a"), ("note", "b")], after=0)
    await store.append("s1", "t1", [(None, "c"), ("done", "{}")], after=2, final="done")
    (sid1, first), (sid2, second) = await recorder.wait_for(2)
    assert (sid1, sid2) == ("s1", "s1")
    assert (first.state.epoch, first.state.status, first.state.first_seq, first.state.last_seq) == (
        epoch,
        "running",
        1,
        2,
    )
    assert [(e.seq, e.event, e.data) for e in first.entries] == [(1, None, "a"), (2, "note", "b")]
    assert (second.state.status, second.state.last_seq) == ("done", 4)
    assert [(e.id, e.data) for e in second.entries] == [(f"{epoch}-3", "c"), (f"{epoch}-4", "{}")]
    await watch.close()


async def test_watch_reports_ends_and_new_epochs_and_only_followed_streams(store: EventLog) -> None:
    await claimed(store, "a", "ta")
    await claimed(store, "other", "to")
    recorder = Recorder()
    watch = store.watch(recorder)
    watch.follow("a")
    await recorder.settled("a")
    await store.append("other", "to", [(None, "not followed")], after=0)
    assert await store.end("a", "cancelled", '{"state":"cancelled"}')
    [(_, ended)] = await recorder.wait_for(1)
    assert ended.state.status == "cancelled" and [e.event for e in ended.entries] == ["cancelled"]
    watch.unfollow("a")
    watch.follow("b")
    await recorder.settled("b")
    claim = await store.claim("b", "tb", LEASE)
    [_, (sid, created)] = await recorder.wait_for(2)
    assert sid == "b" and created.state == claim.state and list(created.entries) == []
    await store.append("other", "to", [(None, "still not")], after=1)
    await asyncio.sleep(0.2)
    assert [sid for sid, _ in recorder.pages] == ["a", "b"]
    await watch.close()


async def test_many_watches_each_get_every_change(store: EventLog) -> None:
    await claimed(store)
    recorders = [Recorder() for _ in range(3)]
    watches = [store.watch(recorder) for recorder in recorders]
    for watch, recorder in zip(watches, recorders, strict=True):
        watch.follow("s1")
        await recorder.settled("s1")
    await store.append("s1", "t1", [(None, "x")], after=0)
    for recorder in recorders:
        [(_, page)] = await recorder.wait_for(1)
        assert [e.data for e in page.entries] == ["x"]
    for watch in watches:
        await watch.close()


async def test_read_answers_with_the_shape_and_restarts_at_the_first_retained_on_a_discontinuity(
    make_store: StoreFactory,
) -> None:
    store = await make_store(max_events=5)
    epoch = await claimed(store)
    await store.append("s1", "t1", [(None, str(i)) for i in range(1, 9)], after=0)
    page = await store.read("s1", 5, 2)
    assert page is not None
    assert (page.state.epoch, page.state.first_seq, page.state.last_seq) == (epoch, 4, 8)
    assert [e.seq for e in page.entries] == [6, 7]
    trimmed = await store.read("s1", 1, 10)  # trimmed away: from the earliest retained
    assert trimmed is not None and [e.seq for e in trimmed.entries] == [4, 5, 6, 7, 8]
    beyond = await store.read("s1", 20, 10)  # beyond the end (a rewound store): from the earliest retained
    assert beyond is not None and [e.seq for e in beyond.entries] == [4, 5, 6, 7, 8]
    other = await store.read("s1", 6, 10, epoch="0123456789abcdef")  # another epoch: from the earliest retained
    assert other is not None and [e.seq for e in other.entries] == [4, 5, 6, 7, 8]
    same = await store.read("s1", 6, 10, epoch=epoch)
    assert same is not None and [e.seq for e in same.entries] == [7, 8]
    at_end = await store.read("s1", 8, 10)
    assert at_end is not None and list(at_end.entries) == [] and at_end.state.last_seq == 8
    assert await store.read("nope", 0, 10) is None


async def test_renew_many_at_once(store: EventLog) -> None:
    await claimed(store, "a", "ta")
    await claimed(store, "b", "tb")
    await store.append("b", "tb", [(None, "x"), (None, "y")], after=0)
    assert await store.renew([("a", "ta"), ("b", "tb"), ("b", "wrong"), ("nope", "t")], LEASE) == [0, 2, -1, -1]
    assert await store.renew([], LEASE) == []


async def test_renew_many_tells_each_token_apart_whatever_its_text(store: EventLog) -> None:
    tokens = {"a": "tok é 世界", "b": "line\nbreak", "c": "t", "d": "tt"}
    for stream_id, token in tokens.items():
        await claimed(store, stream_id, token)
    leases = [*tokens.items(), ("c", "tt"), ("d", "t"), ("a", "tok é")]
    assert await store.renew(leases, LEASE) == [0, 0, 0, 0, -1, -1, -1]


async def test_streams_are_independent(store: EventLog) -> None:
    await claimed(store, "a", "ta")
    await claimed(store, "b", "tb")
    await store.append("a", "ta", [(None, "a1")], after=0)
    await store.append("b", "tb", [(None, "b1"), (None, "b2")], after=0)
    with pytest.raises(StreamFenced):
        await store.append("a", "tb", [(None, "x")], after=1)
    assert [e.data for e in await read_entries(store, "a", 0, 10)] == ["a1"]
    assert [e.data for e in await read_entries(store, "b", 0, 10)] == ["b1", "b2"]


async def test_stream_ids_with_every_allowed_character(store: EventLog) -> None:
    sid = "Az09._:-" * 16  # 128 characters, the longest allowed
    await claimed(store, sid, "t")
    await store.append(sid, "t", [(None, "ok")], after=0)
    assert [e.data for e in await read_entries(store, sid, 0, 10)] == ["ok"]


async def test_abandon_makes_a_new_epoch_holding_only_lost(store: EventLog) -> None:
    epoch = await claimed(store)
    await store.append("s1", "t1", [(None, "a"), (None, "b")], after=0)
    assert await store.abandon("s1", "other", '{"state":"lost"}') is None  # only the producer may
    state = await store.abandon("s1", "t1", '{"state":"lost"}')
    assert state is not None and state.epoch != epoch
    assert (state.status, state.first_seq, state.last_seq) == ("lost", 1, 1)
    assert await store.state("s1") == state
    assert [(e.id, e.event) for e in await read_entries(store, "s1")] == [(f"{state.epoch}-1", "lost")]
    with pytest.raises(StreamFenced):
        await store.append("s1", "t1", [(None, "c")], after=2)
    assert await store.abandon("s1", "t1", "{}") is None  # finished: nothing to give up
