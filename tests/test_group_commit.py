"""Group commit: a steady trickle of appends goes one group at a time; a burst goes as several groups in flight,
and a stream's appends still reach Redis in the order they were submitted."""

from __future__ import annotations

import asyncio

import pytest

from resumable_sse import RedisStore
from resumable_sse.stores._redis_commit import GROUP_SIZE, SENDERS, GroupCommit
from resumable_sse.stores._redis_format import Pending

from .helpers import read_entries
from .redis_servers import shared_cluster, shared_server, unique_prefix

LEASE = 30.0


class Recorder:
    """A ``send`` that holds each group until released, and records what was in flight together."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate = asyncio.Event()

    async def send(self, group: list[Pending]) -> None:
        self.groups.append([item.stream_id for item in group])
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        for item in group:
            item.future.set_result(0)


def pending(stream_id: str) -> Pending:
    return Pending(stream_id, [(None, "x")], None, (b"m", b"e", b"c"), b"")


async def settle(commit: GroupCommit, recorder: Recorder) -> None:
    recorder.gate.set()
    await asyncio.wait_for(commit.close(), 5)
    assert not commit.senders and not commit.in_flight and not commit.queue


async def test_a_trickle_goes_one_group_at_a_time_with_what_queued_meanwhile() -> None:
    recorder = Recorder()
    commit = GroupCommit(recorder.send)
    for i in range(30):
        commit.add(pending(f"s{i}"))
    await asyncio.sleep(0)
    for i in range(30, 90):  # arrive while the first group is in flight
        commit.add(pending(f"s{i}"))
    await asyncio.sleep(0.01)
    assert recorder.most_in_flight == 1
    await settle(commit, recorder)
    assert [len(group) for group in recorder.groups] == [30, 60]
    assert commit.round_trips == 2


async def test_a_burst_goes_as_several_groups_in_flight_at_once() -> None:
    recorder = Recorder()
    commit = GroupCommit(recorder.send)
    items = [pending(f"s{i}") for i in range(GROUP_SIZE * (SENDERS + 2))]
    for item in items:
        commit.add(item)
    await asyncio.sleep(0.01)
    assert recorder.most_in_flight == SENDERS
    assert all(len(group) == GROUP_SIZE for group in recorder.groups)
    await settle(commit, recorder)
    sent = [stream_id for group in recorder.groups for stream_id in group]
    assert sorted(sent) == sorted(item.stream_id for item in items)  # each once
    assert all(item.future.done() for item in items)


async def test_a_streams_later_append_waits_while_an_earlier_one_is_in_another_group() -> None:
    recorder = Recorder()
    commit = GroupCommit(recorder.send)
    first = pending("a")
    commit.add(first)
    await asyncio.sleep(0)  # "a" is in flight in the first sender's group
    later = [pending("a"), pending("a")]
    burst = [pending(f"s{i}") for i in range(GROUP_SIZE * 2)]
    commit.add(later[0])
    for item in burst:
        commit.add(item)
    commit.add(later[1])
    await asyncio.sleep(0.01)
    in_flight_now = [stream_id for group in recorder.groups for stream_id in group]
    assert in_flight_now.count("a") == 1  # the other senders took the burst, not "a"'s later appends
    assert recorder.most_in_flight > 1
    await settle(commit, recorder)
    groups_with_a = [index for index, group in enumerate(recorder.groups) if "a" in group]
    assert len(groups_with_a) == 2 and recorder.groups[groups_with_a[1]].count("a") == 2
    assert [stream_id for stream_id in recorder.groups[groups_with_a[1]] if stream_id == "a"] == ["a", "a"]
    assert all(item.future.done() for item in [first, *later, *burst])


async def test_a_sender_cancelled_before_it_ran_does_not_stop_later_appends() -> None:
    recorder = Recorder()
    recorder.gate.set()
    commit = GroupCommit(recorder.send)
    commit.add(pending("a"))
    (sender,) = commit.senders
    sender.cancel()  # (a loop shutting down) before its first step
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not commit.senders
    item = pending("b")
    commit.add(item)  # a sender again, which takes "a" (still queued) too
    assert await asyncio.wait_for(item.future, 5) == 0
    assert recorder.groups == [["a", "b"]]


async def test_a_failing_send_releases_its_streams() -> None:
    async def failing(group: list[Pending]) -> None:
        raise RuntimeError("boom")

    commit = GroupCommit(failing)
    commit.add(pending("a"))
    await asyncio.sleep(0.01)
    assert not commit.in_flight and not commit.senders


@pytest.mark.redis
@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster"])
async def test_a_burst_of_appends_from_many_streams_lands_complete_and_in_order(cluster: bool) -> None:
    """2,000 streams append at once, twice in a row without waiting (the second append submitted right behind the
    first): several groups travel at once, and every stream has both entries in order."""
    url = shared_cluster().url if cluster else shared_server().url
    store = RedisStore.from_url(url, cluster=cluster, key_prefix=unique_prefix())
    streams = [f"s{i}" for i in range(2000)]
    try:
        await asyncio.gather(*(store.claim(stream, "t", LEASE) for stream in streams))
        before = store.round_trips
        firsts = [store.submit_append(stream, "t", [(None, f"{stream}/0")], after=0) for stream in streams]
        seconds = [store.submit_append(stream, "t", [(None, f"{stream}/1")], after=1) for stream in streams]
        assert await asyncio.gather(*firsts) == [1] * len(streams)
        assert await asyncio.gather(*seconds) == [2] * len(streams)
        assert store.round_trips - before >= 2 * len(streams) // GROUP_SIZE
        for stream in streams[:: len(streams) // 50]:
            assert [e.data for e in await read_entries(store, stream, 0, 10)] == [f"{stream}/0", f"{stream}/1"]
    finally:
        await store.close()
