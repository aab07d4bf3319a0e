"""Observability: every Prometheus metric of issue 14 counted exactly, in known scenarios, on every store.

Each test runs a scenario whose counts follow from the protocol (how many streams start and how they end, how many
events are written, how each request is answered, how a reader's batches fall) and asserts each value. Store calls
are compared with a store wrapper that counts what the engine really called, so the ``store_seconds`` counts are
exact even for calls whose number depends on timing (audits that coalesce, reads the live window spared).
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from resumable_sse import (
    REQUEST_OUTCOMES,
    STORE_OPERATIONS,
    EventLog,
    MemoryStore,
    Observer,
    StoreUnavailable,
    Streamer,
    StreamFenced,
    StreamNotFound,
    resumable_handler,
    setup,
)
from resumable_sse._event import Status
from resumable_sse._readers import terminal_data
from resumable_sse.prometheus import PrometheusMetrics

from .conftest import StoreFactory
from .helpers import Gate, parse, until

# a string: TestClient is generic only from aiohttp 3.11 (the lowest env runs an older one)
Client: TypeAlias = "TestClient[web.Request, web.Application]"
ClientFactory = Callable[[web.Application], Awaitable[Client]]

ISSUE_METRICS = [
    "resumable_sse_streams_started_total",
    "resumable_sse_streams_ended_total",
    "resumable_sse_streams_running",
    "resumable_sse_events_appended_total",
    "resumable_sse_readers_active",
    "resumable_sse_requests_total",
    "resumable_sse_store_seconds",
    "resumable_sse_store_errors_total",
    "resumable_sse_reader_lag_events",
]


class CountingLog:
    """The real store, with every completed call counted per operation (and the failed ones apart): what the
    engine really asked of its store, to hold the metrics against. Not a fake: every call goes to the store."""

    def __init__(self, store: EventLog) -> None:
        self.store = store
        self.calls: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)
        if name not in STORE_OPERATIONS:
            return method

        async def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                result = await method(*args, **kwargs)
            except (StreamFenced, StreamNotFound):
                self.calls[name] += 1
                raise
            except Exception:
                self.calls[name] += 1
                self.errors[name] += 1
                raise
            self.calls[name] += 1
            return result

        return counted


class Metrics:
    """A PrometheusMetrics on a registry of its own, and its values read back."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.observer = PrometheusMetrics(self.registry)

    def __call__(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        assert value is not None, f"no sample {name}{labels}"
        return value

    def store_calls(self) -> tuple[dict[str, int], dict[str, int]]:
        """Per operation: calls timed, and calls counted as errors (operations never called left out)."""
        timed = {op: int(self("resumable_sse_store_seconds_count", operation=op)) for op in STORE_OPERATIONS}
        errors = {op: int(self("resumable_sse_store_errors_total", operation=op)) for op in STORE_OPERATIONS}
        return {op: n for op, n in timed.items() if n}, {op: n for op, n in errors.items() if n}


async def hello(_request: web.Request | None = None) -> AsyncIterator[str]:
    for token in ["Hello", ", ", "world"]:
        yield token


def refuse_secret(_request: web.Request, stream_id: str) -> bool:
    return stream_id != "secret"


# -- requests, streams, events, readers, store calls: one HTTP scenario --------------------------------------------


async def test_every_request_outcome_and_stream_fact_is_counted_once(
    aiohttp_client: ClientFactory, make_store: StoreFactory
) -> None:
    metrics = Metrics()
    log = CountingLog(await make_store())
    app = web.Application()
    # A long lease: no lease renewal and no timed audit runs during the test (their counts would still match).
    streamer = setup(app, Streamer(log, observer=metrics.observer, lease=60.0))  # type: ignore[arg-type]
    handler = resumable_handler(hello, authorize=refuse_secret)
    app.router.add_get("/stream/{stream_id}", handler)
    app.router.add_route("*", "/any/{stream_id}", handler)  # every method reaches the handler
    client = await aiohttp_client(app)

    first = await client.get("/stream/s1")  # new: starts the producer
    assert first.status == 200
    events = parse(await first.read())
    assert [e.data for e in events[:3]] == ["Hello", ", ", "world"]
    ids = [e.id for e in events]
    await until(lambda: metrics("resumable_sse_streams_ended_total", status="done") == 1, "the producer ended")

    answers = [
        (await client.get("/stream/s1", headers={"Last-Event-ID": ids[1]}), 200),  # resumed
        (await client.get("/stream/s1", headers={"Last-Event-ID": ids[3]}), 204),  # no_content: the terminal
        (await client.get("/stream/s1", headers={"Last-Event-ID": "0123456789abcdef-2"}), 200),  # reset: epoch
        (await client.get("/stream/s1", params={"last_event_id": ids[0].split("-")[0] + "-99"}), 200),  # reset
        (await client.get("/stream/s1"), 200),  # new: a second reader from the first event, nothing started
        (await client.get("/stream/nope", headers={"Last-Event-ID": "abc-1"}), 410),  # gone
        (await client.get("/stream/bad$id"), 400),  # bad_request: the stream id
        (await client.get("/stream/s2", headers={"Last-Event-ID": "garbage"}), 400),  # bad_request: the position
        (await client.get("/stream/secret"), 403),  # forbidden
        (await client.post("/any/s1"), 405),  # method_not_allowed
        (await client.post("/stream/s1"), 405),  # the router's own answer: it never reaches the handler
        (await client.head("/stream/s1"), 200),  # a HEAD reads nothing: not counted
    ]
    for response, status in answers:
        assert response.status == status, await response.text()
        await response.read()
    streamer.end_readers()  # shutting down: unavailable
    assert (await client.get("/stream/s3")).status == 503

    expected = {
        "new": 2,
        "resumed": 1,
        "reset": 2,
        "no_content": 1,
        "gone": 1,
        "bad_request": 2,
        "forbidden": 1,
        "unavailable": 1,
        "method_not_allowed": 1,
        "error": 0,
    }
    assert {o: metrics("resumable_sse_requests_total", outcome=o) for o in REQUEST_OUTCOMES} == expected
    assert metrics("resumable_sse_streams_started_total") == 1
    assert {
        s: metrics("resumable_sse_streams_ended_total", status=s) for s in ("done", "error", "cancelled", "lost")
    } == {
        "done": 1,
        "error": 0,
        "cancelled": 0,
        "lost": 0,
    }
    assert metrics("resumable_sse_streams_running") == 0
    assert metrics("resumable_sse_events_appended_total") == 3
    assert metrics("resumable_sse_readers_active") == 0
    # Five responses were served (the first, resumed, two resets, the second reader): each batch of each is observed.
    assert metrics("resumable_sse_reader_lag_events_count") >= 5
    timed, errors = metrics.store_calls()
    assert timed == dict(log.calls)
    assert errors == {} == dict(log.errors)
    assert timed["claim"] == 2  # each request without a position tries to claim; the first one did
    assert metrics("resumable_sse_store_seconds_sum", operation="claim") > 0


# -- how streams end --------------------------------------------------------------------------------------------------


async def test_streams_started_ended_by_status_running_and_events_appended(make_store: StoreFactory) -> None:
    metrics = Metrics()
    store = await make_store()
    streamer = Streamer(store, observer=metrics.observer, lease=60.0)

    async def done() -> AsyncIterator[str]:
        yield "a"
        yield "b"

    async def fails() -> AsyncIterator[str]:
        yield "a"
        raise RuntimeError("the model broke")

    cancelled, lost = Gate(["1", "2"]), Gate(["1", "2"])
    runs = {}
    for name, gate in (("cancelled", cancelled), ("lost", lost)):
        runs[name] = await streamer.start(name, gate.produce)
        gate.release()
    assert metrics("resumable_sse_streams_started_total") == 2
    assert metrics("resumable_sse_streams_running") == 2
    # Counted when the producer has the store's confirmation (a state read may see the event a moment earlier).
    await until(lambda: metrics("resumable_sse_events_appended_total") >= 2, "both first events appended")
    for name in ("cancelled", "lost"):
        state = await streamer.status(name)
        assert state is not None and state.last_seq == 1
    assert metrics("resumable_sse_events_appended_total") == 2

    runs["done"] = await streamer.start("done", done)
    runs["error"] = await streamer.start("error", fails)
    assert await streamer.cancel("cancelled")
    # Another process declared the stream lost (as an audit does when a lease ran out): the producer hears of it.
    assert await store.end("lost", "lost", terminal_data("lost", "the producer stopped responding"))
    lost.release()  # its next event is refused (fenced) and not counted
    results = {}
    for name, run in runs.items():
        assert run is not None
        results[name] = await run.wait()
    assert results == {"done": "done", "error": "error", "cancelled": "cancelled", "lost": "lost"}

    assert metrics("resumable_sse_streams_started_total") == 4
    for status in ("done", "error", "cancelled", "lost"):
        assert metrics("resumable_sse_streams_ended_total", status=status) == 1, status
    assert metrics("resumable_sse_streams_running") == 0
    assert metrics("resumable_sse_events_appended_total") == 2 + 2 + 1  # the gates' first, done's two, error's one
    assert await streamer.start("done", done) is None  # the stream exists: nothing started
    assert metrics("resumable_sse_streams_started_total") == 4
    await streamer.close()


# -- readers and their lag ---------------------------------------------------------------------------------------------


async def test_reader_lag_and_readers_active_follow_the_batches(make_store: StoreFactory) -> None:
    metrics = Metrics()
    streamer = Streamer(await make_store(), observer=metrics.observer, batch_size=4, window=4, lease=60.0)

    async def ten() -> AsyncIterator[str]:
        for index in range(10):
            yield str(index)

    run = await streamer.start("ten", ten)
    assert run is not None
    assert await run.wait() == "done"  # 11 entries: 10 events and the terminal

    subscription = await streamer.subscribe("ten")
    sizes = []
    async for batch in subscription.batches():
        sizes.append(len(batch))
        assert metrics("resumable_sse_readers_active") == 1
    assert sizes == [4, 4, 3]
    assert metrics("resumable_sse_readers_active") == 0
    # After each batch the head was 7, 3 and 0 events ahead.
    assert metrics("resumable_sse_reader_lag_events_count") == 3
    assert metrics("resumable_sse_reader_lag_events_sum") == 10
    assert metrics("resumable_sse_reader_lag_events_bucket", le="0.0") == 1
    assert metrics("resumable_sse_reader_lag_events_bucket", le="5.0") == 2
    assert metrics("resumable_sse_reader_lag_events_bucket", le="10.0") == 3

    state = await streamer.status("ten")
    assert state is not None
    resumed = await streamer.subscribe("ten", state.id_of(5))
    assert [len(batch) async for batch in resumed.batches()] == [4, 2]  # 6-9 (2 behind), then 10 and the terminal
    assert metrics("resumable_sse_reader_lag_events_count") == 5
    assert metrics("resumable_sse_reader_lag_events_sum") == 12

    # A live reader, given each event as it is written: never behind.
    gate = Gate(["a", "b", "c"])
    live = await streamer.start("live", gate.produce)
    assert live is not None
    subscription = await streamer.subscribe("live")
    batches = subscription.batches()
    gate.release()
    assert [e.data for e in await anext(batches)] == ["a"]  # type: ignore[union-attr]
    assert metrics("resumable_sse_readers_active") == 1
    gate.release()
    assert [e.data for e in await anext(batches)] == ["b"]  # type: ignore[union-attr]
    assert metrics("resumable_sse_reader_lag_events_count") == 7
    assert metrics("resumable_sse_reader_lag_events_sum") == 12
    await batches.aclose()
    assert metrics("resumable_sse_readers_active") == 0
    gate.release()
    assert await live.wait() == "done"
    await streamer.close()


# -- store failures ----------------------------------------------------------------------------------------------------


class FailingMemoryStore(MemoryStore):
    """A memory store whose server is down while ``down`` is set: each call raises StoreUnavailable, as a Redis
    store's calls do when Redis does not answer."""

    down = False

    async def claim(self, stream_id: str, token: str, lease: float) -> Any:
        if self.down:
            raise StoreUnavailable("the store is down")
        return await super().claim(stream_id, token, lease)

    async def state(self, stream_id: str) -> Any:
        if self.down:
            raise StoreUnavailable("the store is down")
        return await super().state(stream_id)

    async def read(self, stream_id: str, after: int, limit: int, *, epoch: str | None = None) -> Any:
        if self.down:
            raise StoreUnavailable("the store is down")
        return await super().read(stream_id, after, limit, epoch=epoch)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def unreachable_store(request: pytest.FixtureRequest) -> AsyncIterator[EventLog]:
    """A store whose server does not answer: a memory store set down, or a Redis store on a port nobody listens on."""
    if request.param == "memory":
        store: EventLog = FailingMemoryStore()
        store.down = True  # type: ignore[attr-defined]
    else:
        from resumable_sse.stores.redis import RedisStore

        store = RedisStore.from_url(f"redis://127.0.0.1:{_closed_port()}/0", socket_connect_timeout=1.0)
    yield store
    await store.close()


async def test_store_errors_and_the_requests_they_refuse_are_counted(
    aiohttp_client: ClientFactory, unreachable_store: EventLog
) -> None:
    metrics = Metrics()
    log = CountingLog(unreachable_store)
    app = web.Application()
    setup(app, Streamer(log, observer=metrics.observer))  # type: ignore[arg-type]
    app.router.add_get("/stream/{stream_id}", resumable_handler(hello))
    client = await aiohttp_client(app)

    assert (await client.get("/stream/a")).status == 503  # the claim fails
    assert (await client.get("/stream/a", headers={"Last-Event-ID": "abc-1"})).status == 503  # the first read fails
    assert (await client.get("/stream/b")).status == 503

    assert metrics("resumable_sse_requests_total", outcome="unavailable") == 3
    timed, errors = metrics.store_calls()
    assert timed == {"claim": 2, "read": 1} == dict(log.calls)
    assert errors == {"claim": 2, "read": 1} == dict(log.errors)
    assert metrics("resumable_sse_streams_started_total") == 0


# -- the exposition and the default ------------------------------------------------------------------------------------


async def test_a_scrape_shows_every_metric_and_every_label_value_from_the_start() -> None:
    metrics = Metrics()
    text = generate_latest(metrics.registry).decode()
    samples = {sample.name for family in metrics.registry.collect() for sample in family.samples}
    for name in ISSUE_METRICS:
        assert name in samples or f"{name}_bucket" in samples, name
    for outcome in REQUEST_OUTCOMES:
        assert f'resumable_sse_requests_total{{outcome="{outcome}"}} 0.0' in text
    for status in ("done", "error", "cancelled", "lost"):
        assert f'resumable_sse_streams_ended_total{{status="{status}"}} 0.0' in text
    for operation in STORE_OPERATIONS:
        assert f'resumable_sse_store_errors_total{{operation="{operation}"}} 0.0' in text
        assert f'resumable_sse_store_seconds_count{{operation="{operation}"}} 0.0' in text


def test_the_default_registry_is_prometheus_clients_own() -> None:
    metrics = PrometheusMetrics()
    try:
        assert metrics.registry is REGISTRY
        assert REGISTRY.get_sample_value("resumable_sse_streams_running") == 0
        with pytest.raises(ValueError, match="Duplicated"):
            PrometheusMetrics()  # one set of metrics per registry
    finally:
        for collector in (
            metrics.streams_started,
            metrics.streams_ended,
            metrics.streams_running,
            metrics.events,
            metrics.readers_active,
            metrics.requests,
            metrics.store_seconds,
            metrics.store_errors,
            metrics.reader_lag,
        ):
            REGISTRY.unregister(collector)


async def test_without_an_observer_the_store_is_called_directly() -> None:
    store = MemoryStore()
    plain = Streamer(store)
    assert plain.observer is None
    assert plain.log is store  # nothing is timed, nothing wraps the store
    observed = Streamer(store, observer=Observer())
    assert observed.log is not store
    # The base observer does nothing: a stream runs the same under it.
    run = await observed.start("s", hello)
    assert run is not None
    assert await run.wait() == "done"
    assert [e.data async for e in await observed.subscribe("s")][:3] == ["Hello", ", ", "world"]  # type: ignore[union-attr]
    await observed.close()


async def test_when_wait_returns_the_observer_has_seen_the_end_even_of_a_producer_that_ended_before() -> None:
    ended: list[tuple[str, str]] = []

    class Ends(Observer):
        def stream_ended(self, stream_id: str, status: Status) -> None:
            ended.append((stream_id, status))

    streamer = Streamer(MemoryStore(), observer=Ends())

    async def quick() -> AsyncIterator[str]:
        yield "a"

    producer = await streamer.start("s", quick)
    assert producer is not None
    # Step by step until the task has ended: its done callbacks are then scheduled, not yet run (an Event would be
    # set by one of them, which is the moment this must come before).
    while not producer.done():  # noqa: ASYNC110
        await asyncio.sleep(0)
    assert await producer.wait() == "done"
    assert ended == [("s", "done")]
    await streamer.close()
