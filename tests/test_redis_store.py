"""RedisStore beyond the shared contract: agreement with the memory store, layout, expiry, errors, group commit."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as ClusterClient

from resumable_sse import Entry, MemoryStore, Page, RedisStore, StoreUnavailable, Streamer, StreamFenced
from resumable_sse.stores import from_url

from .helpers import end_if_expired, read_entries, renew_one
from .redis_servers import RedisServer, require_server_binary, shared_cluster, shared_server, unique_prefix

pytestmark = pytest.mark.redis

LEASE = 30.0


@pytest.fixture
async def client() -> AsyncIterator[redis.asyncio.Redis]:
    """A raw client on the shared private server, to look at what the store wrote."""
    raw = redis.asyncio.Redis.from_url(shared_server().url)
    yield raw
    await raw.aclose()


def _rows(entries: list[Entry]) -> list[tuple[int, str | None, str]]:
    return [(entry.seq, entry.event, entry.data) for entry in entries]


@pytest.mark.parametrize("max_events", [1, 3, 50, 10_000])
async def test_agrees_with_the_memory_store_on_random_appends_trims_and_reads(max_events: int) -> None:
    """Appends of random sizes, reads from every position with random limits: same entries as the memory store.

    Entries are stored one per append, so trimming and reads from the middle of an append must cut it exactly.
    """
    rng = random.Random(max_events)
    memory = MemoryStore(max_events=max_events)
    store = RedisStore.from_url(shared_server().url, key_prefix=unique_prefix(), max_events=max_events)
    try:
        for each in (memory, store):
            assert (await each.claim("s", "t", LEASE)).acquired
        last = 0
        texts = ["", "a", "é 世界 🎉", "line\nbreak", "x" * 300, '{"k": [1, 2]}']
        for round_ in range(40):
            batch = [
                (rng.choice([None, None, "tick", "note"]), rng.choice(texts) + str(round_))
                for _ in range(rng.choice([1, 1, 2, 5, 17]))
            ]
            final = "done" if round_ == 39 else None
            if final:
                batch.append(("done", '{"state":"done"}'))
            results = [await each.append("s", "t", batch, after=last, final=final) for each in (memory, store)]
            assert results[0] == results[1]
            last = results[0]
            mem_state, redis_state = await memory.state("s"), await store.state("s")
            assert mem_state is not None and redis_state is not None
            assert (mem_state.status, mem_state.first_seq, mem_state.last_seq) == (
                redis_state.status,
                redis_state.first_seq,
                redis_state.last_seq,
            )
            for after in {0, rng.randrange(last + 1), max(0, last - 3), last}:
                limit = rng.choice([1, 2, 7, 1000])
                assert _rows(await read_entries(store, "s", after, limit)) == _rows(
                    await read_entries(memory, "s", after, limit)
                )
    finally:
        await store.close()


async def test_keys_share_one_hash_tag_and_expire(client: redis.asyncio.Redis) -> None:
    prefix = unique_prefix()
    store = RedisStore(client, key_prefix=prefix, ttl=100)
    await store.claim("job-1", "t", 5)
    await store.append("job-1", "t", [(None, "a")], after=0)
    keys = sorted(key.decode() for key in await client.keys(f"{{{prefix}:job-1}}*"))
    assert keys == [f"{{{prefix}:job-1}}:e", f"{{{prefix}:job-1}}:m"]
    # A running stream expires lease + ttl after its last renewal if nobody ends it (its producer vanished).
    for key in keys:
        assert 100_000 < await client.pttl(key) <= 105_000
    await store.append("job-1", "t", [("done", "{}")], after=1, final="done")
    for key in keys:
        assert 95_000 < await client.pttl(key) <= 100_000
    await store.close()
    assert await client.ping()  # an injected client stays open: it belongs to the caller


async def test_decode_responses_does_not_matter() -> None:
    url = shared_server().url
    prefix = unique_prefix()
    texts = [(None, "plain"), ("tick", "é 世界 🎉\nline 2"), (None, ""), ("x", "\x00 nul")]
    for decode in (False, True):
        client = redis.asyncio.Redis.from_url(url, decode_responses=decode)
        store = RedisStore(client, key_prefix=f"{prefix}-{decode}")
        await store.claim("s", "t", LEASE)
        await store.append("s", "t", texts, after=0)
        assert [(e.event, e.data) for e in await read_entries(store, "s", 0, 10)] == texts
        assert await _pushed(store, texts) == texts
        await client.aclose()


async def _pushed(store: RedisStore, texts: list[tuple[str | None, str]]) -> list[tuple[str | None, str]]:
    """What a watch reports of an append of ``texts`` after the 4 events already in stream ``s``."""
    changes: list[Page | None] = []
    watch = store.watch(lambda _sid, page: changes.append(page))
    watch.follow("s")
    await _until(lambda: None in changes)  # the subscription is effective
    await store.append("s", "t", texts, after=4)
    await _until(lambda: changes[-1] is not None)
    page = changes[-1]
    await watch.close()
    assert page is not None
    return [(e.event, e.data) for e in page.entries]


async def test_a_stale_producer_cannot_append_after_losing_its_claim() -> None:
    store = RedisStore.from_url(shared_server().url, key_prefix=unique_prefix())
    await store.claim("s", "old", 0.05)
    assert await store.append("s", "old", [(None, "1")], after=0) == 1
    await asyncio.sleep(0.1)
    assert await end_if_expired(store, "s", '{"state":"lost"}')
    with pytest.raises(StreamFenced):
        await store.append("s", "old", [(None, "2")], after=1)
    assert await renew_one(store, "s", "old", LEASE) is False
    assert [(e.event, e.data) for e in await read_entries(store, "s", 0, 10)] == [
        (None, "1"),
        ("lost", '{"state":"lost"}'),
    ]
    await store.close()


async def test_lease_is_judged_by_the_redis_clock_not_the_callers() -> None:
    store = RedisStore.from_url(shared_server().url, key_prefix=unique_prefix())
    await store.claim("s", "t", 0.3)
    assert not await end_if_expired(store, "s", "{}")
    assert await renew_one(store, "s", "t", 0.3)
    await asyncio.sleep(0.15)
    assert not await end_if_expired(store, "s", "{}")  # renewed: not expired yet
    await asyncio.sleep(0.3)
    assert await end_if_expired(store, "s", "{}")
    await store.close()


@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster"])
async def test_appends_of_many_producers_share_round_trips(cluster: bool) -> None:
    """Group commit: 200 producers appending at once in one process take a handful of round trips, not 200."""
    url = shared_cluster().url if cluster else shared_server().url
    store = RedisStore.from_url(url, cluster=cluster, key_prefix=unique_prefix())
    streams = [f"s{i}" for i in range(200)]
    await asyncio.gather(*(store.claim(stream, "t", LEASE) for stream in streams))
    before = store.round_trips
    for round_ in range(3):
        results = await asyncio.gather(
            *(store.append(stream, "t", [(None, f"{stream}/{round_}")], after=round_) for stream in streams)
        )
        assert results == [round_ + 1] * len(streams)
    assert store.round_trips - before <= 3 * 3
    for stream in streams:
        assert [e.data for e in await read_entries(store, stream, 0, 10)] == [f"{stream}/{r}" for r in range(3)]
    await store.close()


async def test_group_commit_keeps_fencing_per_stream() -> None:
    store = RedisStore.from_url(shared_server().url, key_prefix=unique_prefix())
    for stream in ("a", "b"):
        await store.claim(stream, "t", LEASE)
    results = await asyncio.gather(
        store.append("a", "t", [(None, "ok")], after=0),
        store.append("b", "intruder", [(None, "no")], after=0),
        return_exceptions=True,
    )
    assert results[0] == 1
    assert isinstance(results[1], StreamFenced)
    assert await read_entries(store, "b", 0, 10) == []
    await store.close()


@pytest.mark.parametrize("grouped", [False, True])
async def test_scripts_are_loaded_again_after_script_flush(client: redis.asyncio.Redis, grouped: bool) -> None:
    store = RedisStore.from_url(shared_server().url, key_prefix=unique_prefix())
    await store.claim("a", "t", LEASE)
    await store.claim("b", "t", LEASE)
    await client.script_flush()
    if grouped:
        assert await asyncio.gather(
            store.append("a", "t", [(None, "1")], after=0), store.append("b", "t", [(None, "1")], after=0)
        ) == [1, 1]
    else:
        assert await store.append("a", "t", [(None, "1")], after=0) == 1
    await client.script_flush()
    assert [e.data for e in await read_entries(store, "a", 0, 10)] == ["1"]
    await store.close()


async def test_unreachable_redis_raises_store_unavailable_with_the_cause() -> None:
    with RedisServer(require_server_binary()) as server:
        store = RedisStore.from_url(server.url, key_prefix=unique_prefix())
        await store.claim("s", "t", LEASE)
    # The server is gone now.
    for call in (
        store.state("s"),
        store.claim("x", "t", LEASE),
        store.append("s", "t", [(None, "a")], after=0),
        read_entries(store, "s", 0, 10),
        store.audit(["s"], "{}"),
        renew_one(store, "s", "t", LEASE),
        store.end("s", "cancelled", "{}"),
    ):
        with pytest.raises(StoreUnavailable) as caught:
            await call
        assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)
    await store.close()


async def test_from_url_unix_socket_and_the_stores_from_url() -> None:
    server = RedisServer(require_server_binary())
    socket_path = f"{server.dir}/redis.sock"
    server_args = server._args
    server._args = lambda: [*server_args(), "--unixsocket", socket_path]  # type: ignore[method-assign]
    with server:
        store = from_url(f"unix://{socket_path}", key_prefix=unique_prefix(), max_events=5)
        assert isinstance(store, RedisStore) and store.max_events == 5
        assert (await store.claim("s", "t", LEASE)).acquired
        assert await store.append("s", "t", [(None, "via unix socket")], after=0) == 1
        assert [e.data for e in await read_entries(store, "s", 0, 1)] == ["via unix socket"]
        await store.close()


async def test_cluster_streams_spread_over_nodes_and_each_stays_in_one_slot() -> None:
    cluster = shared_cluster()
    store = RedisStore.from_url(cluster.url, cluster=True, key_prefix=unique_prefix())
    client = store.client
    assert isinstance(client, ClusterClient)
    streams = [f"stream-{i}" for i in range(30)]
    for stream in streams:
        await store.claim(stream, "t", LEASE)
        await store.append(stream, "t", [(None, stream)], after=0)
    nodes = set()
    for stream in streams:
        meta, *others = store.keys(stream)
        assert {client.keyslot(key) for key in others} == {client.keyslot(meta)}
        nodes.add(client.get_node_from_key(meta).name)
        assert [e.data for e in await read_entries(store, stream, 0, 10)] == [stream]
    assert len(nodes) == 3
    await store.close()


def test_bad_options_are_refused() -> None:
    client = redis.asyncio.Redis()
    with pytest.raises(ValueError, match="max_events"):
        RedisStore(client, max_events=0)
    with pytest.raises(ValueError, match="ttl"):
        RedisStore(client, ttl=0)
    with pytest.raises(ValueError, match="braces"):
        RedisStore(client, key_prefix="a{b}")


async def test_after_a_redis_restart_the_next_calls_succeed_on_fresh_connections() -> None:
    """Pooled connections broken by the restart are replaced at once: no call fails once Redis is back."""
    with RedisServer(require_server_binary(), persistent=True) as server:
        store = RedisStore.from_url(server.url, key_prefix=unique_prefix())
        await store.claim("s", "t", LEASE)
        # Several pooled connections, all of which the restart breaks.
        await asyncio.gather(*(read_entries(store, "s", 0, 10) for _ in range(5)))
        assert await store.append("s", "t", [(None, "before")], after=0) == 1
        await asyncio.to_thread(server.restart)
        state = await store.state("s")
        assert state is not None and state.last_seq == 1
        assert await store.append("s", "t", [(None, "after")], after=1) == 2
        assert [e.data for e in await read_entries(store, "s", 0, 10)] == ["before", "after"]
        assert await renew_one(store, "s", "t", LEASE)
        await store.close()


async def test_after_a_redis_restart_a_cancel_from_another_process_still_stops_the_producer_at_once() -> None:
    """The producer follows its own stream; a restart must not leave it deaf to a remote cancel until its next
    lease renewal (lease / 3 = 10 s here)."""
    with RedisServer(require_server_binary(), persistent=True) as server:
        prefix = unique_prefix()
        here = Streamer(RedisStore.from_url(server.url, key_prefix=prefix), lease=LEASE)
        elsewhere = Streamer(RedisStore.from_url(server.url, key_prefix=prefix), lease=LEASE)
        stopped = asyncio.Event()

        async def quiet() -> AsyncIterator[str]:
            try:
                yield "hello"
                await asyncio.sleep(60)
            finally:
                stopped.set()

        producer = await here.start("q", quiet)
        assert producer is not None
        while (state := await elsewhere.status("q")) is None or state.last_seq < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.to_thread(server.restart)  # breaks the producer's live tail (XREAD BLOCK) mid-wait
        await asyncio.sleep(1.5)  # longer than the tail's longest retry delay: it is following again
        cancelled_at = asyncio.get_running_loop().time()
        assert await elsewhere.cancel("q")
        await asyncio.wait_for(stopped.wait(), 5)
        assert asyncio.get_running_loop().time() - cancelled_at < 0.5
        assert await producer.wait() == "cancelled"
        await here.close()
        await elsewhere.close()


async def test_a_redis_that_stops_answering_fails_calls_instead_of_hanging_them() -> None:
    # A listener that never accepts: the TCP handshake succeeds, then no reply ever comes (a host gone silent).
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        default = RedisStore.from_url(url)
        kwargs = default.client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (10.0, 5.0)
        await default.close()
        store = RedisStore.from_url(url, socket_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.state("s")
        assert time.monotonic() - started < 3
        await store.close()


async def test_a_quiet_watch_outlives_the_socket_timeout() -> None:
    # The watch connection has no socket timeout of its own (it pings): a quiet stream is still followed after
    # many socket timeouts of the store's other connections.
    store = RedisStore.from_url(shared_server().url, key_prefix=unique_prefix(), socket_timeout=0.4)
    await store.claim("s", "t", LEASE)
    changes: list[Page | None] = []
    watch = store.watch(lambda _sid, page: changes.append(page))
    watch.follow("s")
    await _until(lambda: None in changes)
    await asyncio.sleep(1.5)
    await store.append("s", "t", [(None, "late")], after=0)
    await _until(lambda: changes[-1] is not None)
    page = changes[-1]
    assert page is not None and [e.data for e in page.entries] == ["late"]
    await store.close()


async def test_a_watch_connection_that_stops_answering_is_replaced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Its reads have no timeout (a timer per message is most of their cost): the silence is judged apart, every
    # ping interval. A Redis that stops answering (SIGSTOP: its sockets stay open) is pinged, then given up on; once
    # it answers again the watch reconnects, says the stream must be read again, and follows it as before.
    monkeypatch.setattr("resumable_sse._compat_redis._PING_EVERY", 0.2)
    with RedisServer(require_server_binary()) as server:
        store = RedisStore.from_url(server.url, key_prefix=unique_prefix())
        await store.claim("s", "t", LEASE)
        changes: list[Page | None] = []
        watch = store.watch(lambda _sid, page: changes.append(page))
        watch.follow("s")
        await _until(lambda: None in changes)
        server.pause()
        try:
            await _until(lambda: any("interrupted" in r.getMessage() for r in caplog.records))
        finally:
            server.resume()
        changes.clear()
        await _until(lambda: None in changes)  # followed again: read what may have been missed
        await store.append("s", "t", [(None, "after")], after=0)
        await _until(lambda: bool(changes) and changes[-1] is not None)
        page = changes[-1]
        assert page is not None and [e.data for e in page.entries] == ["after"]
        await store.close()


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_cluster_watch_follows_streams_of_many_slots_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """Followed together, streams of one node but of different slots are each subscribed: a cluster refuses one
    SSUBSCRIBE naming channels of several slots (CROSSSLOT), after which the watch reconnected and was refused again,
    for good, hearing nothing (found by benchmarks/scale_out.py's cluster row)."""
    cluster = shared_cluster()
    prefix = unique_prefix()
    reader = RedisStore.from_url(cluster.url, cluster=True, key_prefix=prefix)
    writer = RedisStore.from_url(cluster.url, cluster=True, key_prefix=prefix)
    streams = [f"slots-{i}" for i in range(30)]
    for stream in streams:
        assert (await writer.claim(stream, "t", LEASE)).acquired
    announced: set[str] = set()
    heard: set[str] = set()
    all_announced, all_heard = asyncio.Event(), asyncio.Event()

    def on_change(stream_id: str, page: Page | None) -> None:
        if page is None:
            announced.add(stream_id)  # the subscription took effect
        elif page.entries:
            heard.add(stream_id)
        if len(announced) == len(streams):
            all_announced.set()
        if len(heard) == len(streams):
            all_heard.set()

    await reader.state(streams[0])  # the cluster client learns the slots (a Streamer's first call does the same)
    watch = reader.watch(on_change)
    for stream in streams:  # all before the listeners run: their subscriptions go out together
        watch.follow(stream)
    await asyncio.wait_for(all_announced.wait(), 10)
    for stream in streams:
        await writer.append(stream, "t", [(None, "x")], after=0)
    await asyncio.wait_for(all_heard.wait(), 10)
    assert not [r for r in caplog.records if "interrupted" in r.getMessage()]
    await watch.close()
    await reader.close()
    await writer.close()


async def test_a_burst_of_requests_shares_a_few_connections_to_redis(client: redis.asyncio.Redis) -> None:
    # 400 streams started and subscribed at once (a reconnect storm after a deploy, say): every call succeeds, on a
    # pool of at most 64 connections, not one connection per request in flight.
    name = f"burst-{unique_prefix()}"
    store = RedisStore.from_url(shared_server().url, key_prefix=unique_prefix(), client_name=name)

    async def one_token() -> AsyncIterator[str]:
        yield "t"

    async def open_one(i: int) -> list[str]:
        await streamer.start(f"s{i}", one_token)
        subscription = await streamer.subscribe(f"s{i}")
        return [entry.data async for entry in subscription if not entry.terminal]

    async with Streamer(store) as streamer:
        results = await asyncio.gather(*(open_one(i) for i in range(400)))
        clients = [c for c in await client.client_list() if c.get("name") == name]
    assert results == [["t"]] * 400
    assert 1 <= len(clients) <= 64 + 1  # the pool, and the pub/sub connection of the live tail
