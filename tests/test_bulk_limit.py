"""A Redis whose ``proto-max-bulk-len`` is below what an append needs: every argument is kept within it (a batch of
many events goes in parts, whole and in order) and an event that cannot fit ends its stream ``error`` at once, with
a message naming the limit, on a single node and on a cluster, and where CONFIG is disabled."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from resumable_sse import EventTooLarge, RedisStore, StoreUnavailable, Streamer

from .helpers import read_entries
from .redis_servers import RedisCluster, RedisServer, require_server_binary, unique_prefix

pytestmark = pytest.mark.redis

LIMIT = 1024 * 1024  # the least proto-max-bulk-len Redis allows
SMALL: dict[str, str | list[str]] = {"proto-max-bulk-len": str(LIMIT)}
LEASE = 30.0


@pytest.fixture(scope="module")
def small_server() -> Iterator[RedisServer]:
    with RedisServer(require_server_binary(), config=SMALL) as server:
        yield server


@pytest.fixture(scope="module")
def small_cluster() -> Iterator[RedisCluster]:
    with RedisCluster(require_server_binary(), config=SMALL) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def no_config_server() -> Iterator[RedisServer]:
    """CONFIG renamed away, as many managed Redis services do: the store cannot ask the limit."""
    with RedisServer(require_server_binary(), config={**SMALL, "rename-command": ["CONFIG", ""]}) as server:
        yield server


@pytest.fixture(params=["single", "cluster", "no-config"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def small_store(request: pytest.FixtureRequest, kind: str) -> AsyncIterator[RedisStore]:
    fixture = {"single": "small_server", "cluster": "small_cluster", "no-config": "no_config_server"}[kind]
    url = request.getfixturevalue(fixture).url
    store = RedisStore.from_url(url, cluster=kind == "cluster", key_prefix=unique_prefix())
    yield store
    await store.close()


async def test_an_append_larger_than_redis_takes_lands_whole_and_in_order(small_store: RedisStore, kind: str) -> None:
    """3,000 events of ~1 KB (3 MB) in one append: stored complete, in order, with their ids and types; the same
    append sent again (a retry after a broken connection) is recognised as applied, not refused as fenced.

    Where CONFIG is refused, the first try meets Redis's refusal and fails as unreachable (a producer retries it);
    the retry goes in parts that fit."""
    await small_store.claim("s", "t", LEASE)
    events = [("kind" if i % 7 == 0 else None, f"{i:05d}" + "x" * 1000) for i in range(3000)]
    if kind == "no-config":
        with pytest.raises(StoreUnavailable, match="too long"):
            await small_store.append("s", "t", events, after=0)
    assert await small_store.append("s", "t", events, after=0) == 3000
    assert await small_store.append("s", "t", events, after=0) == 3000  # a retry: nothing written twice
    entries = await read_entries(small_store, "s", 0, 5000)
    assert [(entry.seq, entry.event, entry.data) for entry in entries] == [
        (i + 1, event, data) for i, (event, data) in enumerate(events)
    ]
    assert await small_store.append("s", "t", [(None, "next")], after=3000, final="done") == 3001


async def test_an_event_redis_cannot_take_is_refused_naming_the_limit(small_store: RedisStore, kind: str) -> None:
    """Only the append with the event that cannot fit is refused; an append of another stream sent with it lands
    (where CONFIG is refused: fails as unreachable, and lands when retried), and the refused stream can go on
    (nothing of the refused append was written)."""
    await small_store.claim("big", "t", LEASE)
    await small_store.claim("other", "t", LEASE)
    refused = small_store.submit_append("big", "t", [(None, "a"), (None, "x" * (LIMIT + 10))], after=0)
    landed = small_store.submit_append("other", "t", [(None, "fine")], after=0)
    with pytest.raises(EventTooLarge, match=str(LIMIT)):
        await refused
    if kind == "no-config":
        with pytest.raises(StoreUnavailable):
            await landed
        landed = small_store.submit_append("other", "t", [(None, "fine")], after=0)
    assert await landed == 1
    assert await small_store.append("big", "t", [(None, "b")], after=0) == 1
    assert [entry.data for entry in await read_entries(small_store, "big")] == ["b"]


async def test_a_stream_with_an_event_redis_cannot_take_ends_error_within_a_second(small_store: RedisStore) -> None:
    """``max_event_bytes`` allows the event, Redis does not take it: the stream ends ``error`` (its terminal entry
    written, readers told) within a second, with a message naming the limit; what came before it is there."""
    streamer = Streamer(small_store, max_event_bytes=2 * LIMIT, max_batch_bytes=4 * LIMIT)
    yielded: list[float] = []

    async def produce() -> AsyncIterator[str]:
        for i in range(20):
            yield f"small {i}"
            await asyncio.sleep(0.001)
        yielded.append(time.monotonic())
        yield "y" * (LIMIT + 100)
        await asyncio.sleep(0.001)
        yield "never"

    async with streamer:
        producer = await streamer.start("s", produce)
        assert producer is not None
        subscription = await streamer.subscribe("s")
        items = []

        async def read() -> None:
            async for item in subscription:
                items.append(item)

        await asyncio.wait_for(read(), 10)
        ended = time.monotonic()
        assert await asyncio.wait_for(producer.wait(), 5) == "error"
    assert ended - yielded[0] < 1.0
    *events, terminal = items
    assert [event.data for event in events] == [f"small {i}" for i in range(20)]
    assert terminal.event == "error"
    message = json.loads(terminal.data)["message"]
    assert str(LIMIT) in message and "proto-max-bulk-len" in message
    state = await small_store.state("s")
    assert state is not None and state.status == "error"


async def test_a_fast_producer_whose_batches_exceed_the_limit_is_written_whole(small_store: RedisStore) -> None:
    """A producer that never waits, 4,000 events of 2 KB (its appends of up to 4 MB each): every event arrives, in
    order, and the stream ends ``done``."""
    streamer = Streamer(small_store, max_batch_bytes=4 * LIMIT)

    async def produce() -> AsyncIterator[str]:
        for i in range(4000):
            yield f"{i:05d}" + "z" * 2000

    async with streamer:
        producer = await streamer.start("s", produce)
        assert producer is not None
        assert await asyncio.wait_for(producer.wait(), 30) == "done"
        subscription = await streamer.subscribe("s")
        items = [item async for item in subscription]
    assert [item.data for item in items[:-1]] == [f"{i:05d}" + "z" * 2000 for i in range(4000)]
    assert items[-1].event == "done"


async def test_renewing_leases_whose_tokens_exceed_the_limit_renews_every_one(small_server: RedisServer) -> None:
    """The tokens of a renewal travel as one argument on a single node: 600 leases of 2 KB tokens (1.2 MB) go in
    calls that fit, and every lease is renewed."""
    store = RedisStore.from_url(small_server.url, key_prefix=unique_prefix())
    try:
        leases = [(f"s{i}", f"{i:05d}" + "k" * 2000) for i in range(600)]
        claims = await asyncio.gather(*(store.claim(stream, token, LEASE) for stream, token in leases))
        assert all(claim.acquired for claim in claims)
        assert await store.renew(leases, LEASE) == [0] * 600  # (each stream's last seq: kept)
        assert await store.renew([("s0", "not the token")], LEASE) == [-1]
    finally:
        await store.close()


async def test_where_the_limit_is_assumed_a_connection_broken_while_a_long_argument_was_sent_is_its_refusal() -> None:
    """Redis may close the connection before its "invalid bulk length" is read (the client is still writing the
    argument), so the store sees a broken connection, not the refusal. Where CONFIG is refused (the limit assumed),
    that break is taken as the refusal: the limit becomes 1 MiB at once (not asked again, not assumed 512 MiB again,
    which would send the same argument for ever), an append that fits in parts fails as unreachable so that its
    retry goes split, and one whose event cannot fit 1 MiB is refused. A break with no long argument on its way is an
    outage: the limit is asked again."""
    from redis.exceptions import ResponseError

    from resumable_sse.stores._redis_bulk import BulkLimit
    from resumable_sse.stores._redis_format import LEAST_BULK_LEN, Pending

    def pending(size: int) -> Pending:
        return Pending("s", [(None, "x")], None, (b"k",), b"t\n0\n\n1\n1\n" + b"x" * size)

    bulk = BulkLimit((ConnectionError,), ResponseError)
    bulk.value, bulk.assumed = 512 * 1024 * 1024, True
    splittable, whole = pending(3 * LEAST_BULK_LEN), pending(LEAST_BULK_LEN)
    splittable.args = (b"\xff".join([b"x" * 1000] * 3000),)  # (its parts are what split() makes of .arg)
    splittable.arg = b"t\n0\n\n3000\n3000\n" + splittable.args[0]
    bulk.failed(StoreUnavailable("Redis is unreachable: Connection reset by peer"), [splittable, whole])
    assert bulk.value == LEAST_BULK_LEN
    with pytest.raises(StoreUnavailable, match="too long"):
        await splittable.future
    with pytest.raises(EventTooLarge, match=str(LEAST_BULK_LEN)):
        await whole.future

    small = pending(10)
    bulk.failed(StoreUnavailable("Redis is unreachable: Connection reset by peer"), [small])
    assert bulk.value is None  # an outage: asked again before the next append
    with pytest.raises(StoreUnavailable, match="unreachable"):
        await small.future
