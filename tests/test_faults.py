"""Fault injection with real processes: two aiohttp server processes (tests/redis_app.py) on one private Redis, a
paced producer (``count.N.MS``: about 33 tokens/s), and readers in the test, some on each server, that follow the
live tail and reconnect with ``Last-Event-ID`` like a browser (after EOF or an error, 0.1 s later; on a refused
connection they fail over to the other server, as a load balancer would).

One test per fault: a Redis restart with persistence (AOF), a restart without persistence (the stream is gone), a
restart from an older RDB snapshot (a rewind), ``FLUSHDB``, a network fault between one server and Redis (a TCP
proxy the test steers: drop every connection, stall, slow), ``SIGKILL`` of the producer's server process, and
``SIGSTOP``/``SIGCONT`` of Redis for longer than the store's socket timeout.

For each the test asserts:

- every reader's sequence is exactly-once-in-order, or ends honestly in-band: a ``reset`` followed by a correct
  replay, a terminal ``done``/``lost``/``error``/``cancelled`` with the next id, a ``lost`` without id (the stream is
  gone), ``410`` on a reconnect for a stream that is gone; every reader that saw an id saw the same data for it;
- the readers end (or, where the stream survives, get the next event) within ``BOUND`` seconds of the fault's end:
  the lease (``LEASE``, 2 s here) plus a few seconds;
- nothing spins afterwards: over ``IDLE`` quiet seconds each server process uses at most ``MAX_IDLE_CPU`` seconds of
  CPU (from /proc/<pid>/stat) and Redis processes at most ``MAX_IDLE_COMMANDS`` commands (``total_commands_processed``
  delta, which counts our own ``INFO``);
- the failure is logged by the ``resumable_sse`` logger with the stream id (``extra``), at most once per stream for
  the producer's own failure (``the store lost it``), read back from the servers' stderr (JSON lines);
- each surviving server serves a new stream afterwards, without a restart.

The figures measured in each test are printed (``pytest -s``). On the 2-core development machine, every test:
idle server CPU 0.00-0.01 s over 3 s per process, 2 Redis commands over 3 s (the second INFO: nothing else runs);
readers end or get the next event within 0.01-2.2 s of the fault's end (SIGKILL: lost 2.1 s after the kill with a
2 s lease; FLUSHDB: 0.02 s on the producer's server, 1.1 s elsewhere, the half-lease audit). The suite takes about
a minute.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from ._app_process import AppProcess
from ._live_server import FaultProxy
from .helpers import SSE, parse
from .redis_servers import RedisServer, require_server_binary, unique_prefix

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TERMINAL = {"done", "error", "cancelled", "lost"}
LEASE = 2.0
"""The app's lease (the library's default is 5 s): a lost producer is noticed within about 1.5 leases."""
BOUND = LEASE + 4.0
"""Seconds after the fault ends (Redis back, network healed, process killed) within which every reader has either
its next event or its honest end."""
IDLE = 3.0
MAX_IDLE_CPU = 0.15
"""CPU seconds of one server process over IDLE quiet seconds (5%): heartbeats of no one, a pub/sub ping at most."""
MAX_IDLE_COMMANDS = 40
"""Redis commands over IDLE quiet seconds, all servers together (the measurement's own INFO included)."""
STREAM = "count.200.30"  # 200 events about 30 ms apart: 6 s of live tail
COUNT = 200
DEADLINE = 40.0


# -- processes ------------------------------------------------------------------------------------------------------


class Fleet:
    """Two app processes on one Redis; stops whatever it started, even when the test fails."""

    def __init__(self, server: RedisServer, tmp_path: Path) -> None:
        self.server = server
        self.tmp_path = tmp_path
        self.prefix = unique_prefix()
        self.apps: list[AppProcess] = []

    def start(
        self, count: int = 2, urls: list[str] | None = None, lease: float = LEASE, **options: Any
    ) -> list[AppProcess]:
        for index in range(count):
            url = urls[index] if urls else self.server.url
            opts = {"marks_url": self.server.url, **options}
            log = self.tmp_path / f"app{index}.log"
            self.apps.append(AppProcess(url, self.prefix, lease, log=log, options={"log": "json", **opts}))
        return self.apps

    def close(self) -> None:
        for app in self.apps:
            app.stop()


@pytest.fixture
def binary() -> str:
    return require_server_binary()


@pytest.fixture
def aof_server(binary: str) -> Iterator[RedisServer]:
    with RedisServer(binary, persistent=True) as server:
        yield server


@pytest.fixture
def plain_server(binary: str) -> Iterator[RedisServer]:
    """No appendonly, no save points: a restart starts empty, unless a dump.rdb was put in place."""
    with RedisServer(binary, persistent=False) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=10)  # heartbeats come every second
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


# -- readers --------------------------------------------------------------------------------------------------------


@dataclass
class Reader:
    """A browser-like reader of one stream: records every event with its arrival time and every response."""

    name: str
    bases: list[str]  # its own server first; the next on a refused connection (a load balancer's failover)
    stream: str
    events: list[tuple[float, SSE]] = field(default_factory=list)
    responses: list[tuple[float, int | str]] = field(default_factory=list)  # HTTP status, or an exception's name
    end: str | None = None  # "done"/"lost"/... (the terminal event), "204", "410"
    ended_at: float | None = None

    @property
    def position(self) -> str | None:
        for _, event in reversed(self.events):
            if event.id is not None:
                return event.id
        return None

    def seen(self) -> list[SSE]:
        return [event for _, event in self.events]

    async def run(self, http: aiohttp.ClientSession) -> None:
        base = 0
        while self.end is None:
            position = self.position
            headers = {"Last-Event-ID": position} if position else {}
            url = f"{self.bases[base]}/stream/{self.stream}"
            try:
                async with http.get(url, headers=headers) as response:
                    self.responses.append((time.monotonic(), response.status))
                    if response.status in (204, 410):
                        self._finish(str(response.status))
                    elif response.status == 200:
                        buffer = b""
                        async for chunk in response.content.iter_any():
                            buffer += chunk
                            complete, _, buffer = buffer.rpartition(b"\n\n")
                            if complete:
                                now = time.monotonic()
                                for event in parse(complete + b"\n\n"):
                                    self.events.append((now, event))
                                    if event.event in TERMINAL:
                                        self._finish(event.event)
                    elif response.status != 503:
                        self._finish(f"http {response.status}: {await response.text()}")
            except aiohttp.ClientConnectorError as exc:
                self.responses.append((time.monotonic(), type(exc).__name__))
                base = (base + 1) % len(self.bases)
            except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError) as exc:
                self.responses.append((time.monotonic(), type(exc).__name__))
            if self.end is None:
                await asyncio.sleep(0.1)

    def _finish(self, how: str) -> None:
        if self.end is None:
            self.end, self.ended_at = how, time.monotonic()


def split(event_id: str) -> tuple[str, int]:
    epoch, _, seq = event_id.rpartition("-")
    return epoch, int(seq)


@dataclass
class Verdict:
    resets: list[str]  # the reasons, in order
    epochs: list[str]
    last_seq: int  # of the last segment
    end: str | None


def verify(reader: Reader) -> Verdict:
    """Exactly once, in order, or an honest in-band end; raises AssertionError with the reader's history if not."""
    events = reader.seen()
    history = f"{reader.name}: end={reader.end} responses={reader.responses[-8:]} events (last 12)={events[-12:]}"
    resets: list[str] = []
    epochs: list[str] = []
    last: tuple[str, int] | None = None
    expect_first: str | None = None
    for index, event in enumerate(events):
        final = index == len(events) - 1
        if event.event == "reset":
            assert event.id is None, history
            data = json.loads(event.data)
            assert data["reason"] in {"epoch", "trimmed", "position"}, history
            resets.append(data["reason"])
            expect_first, last = data["first_id"], None
            continue
        if event.id is None:  # the stream is gone: a lost without id, the last thing this reader gets
            assert event.event == "lost" and final, history
            continue
        epoch, seq = split(event.id)
        if last is None:
            if expect_first is not None:
                assert event.id == expect_first, history
            else:
                assert seq == 1, history  # a reader that started with no position gets the first event
            if epoch not in epochs:
                epochs.append(epoch)
        else:
            assert (epoch, seq) == (last[0], last[1] + 1), history  # no gap, no duplicate, one epoch
        last = (epoch, seq)
        if event.event in TERMINAL:
            assert final, history  # nothing after a terminal event
            assert json.loads(event.data)["state"] == event.event, history
        else:
            assert event.event is None and event.data == f"event {seq - 1}", history
    if reader.end in TERMINAL:
        assert events and events[-1].event == reader.end, history
    return Verdict(resets, epochs, last[1] if last else 0, reader.end)


def agree(readers: list[Reader]) -> None:
    """Every reader that saw an id saw the same event for it."""
    by_id: dict[str, tuple[str | None, str]] = {}
    for reader in readers:
        for event in reader.seen():
            if event.id is not None:
                assert by_id.setdefault(event.id, (event.event, event.data)) == (event.event, event.data), event


async def start_readers(
    http: aiohttp.ClientSession, apps: list[AppProcess], stream: str, per_app: int = 2
) -> tuple[list[Reader], list[asyncio.Task[None]]]:
    """The first reader, on apps[0], starts the producer there; then ``per_app`` readers on each app follow."""
    readers: list[Reader] = []
    tasks: list[asyncio.Task[None]] = []
    for index in range(per_app * len(apps)):
        app = index % len(apps)
        bases = [apps[(app + k) % len(apps)].base for k in range(len(apps))]
        reader = Reader(f"r{index}@app{app}", bases, stream)
        readers.append(reader)
        tasks.append(asyncio.ensure_future(reader.run(http)))
        if index == 0:
            await wait_for(lambda first=reader: len(first.events) >= 1, 10, "the first event")
    return readers, tasks


async def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def finish(readers: list[Reader], tasks: list[asyncio.Task[None]], timeout: float = DEADLINE) -> None:
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(
            "readers did not end: " + "; ".join(f"{r.name} end={r.end} last={r.seen()[-3:]}" for r in readers)
        ) from None
    finally:
        for task in tasks:
            task.cancel()


def first_event_after(reader: Reader, moment: float) -> float | None:
    for at, _ in reader.events:
        if at > moment:
            return at
    return None


# -- what is measured after the fault -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def idle_figures(apps: list[AppProcess], server: RedisServer) -> tuple[list[float], int, dict[str, int]]:
    """CPU seconds of each app process and Redis commands over IDLE quiet seconds, and the commands by name."""
    cpu_before = [cpu_seconds(app.pid) for app in apps]
    stats_before = await asyncio.to_thread(server.info, "commandstats")
    total_before = (await asyncio.to_thread(server.info, "stats"))["total_commands_processed"]
    await asyncio.sleep(IDLE)
    total_after = (await asyncio.to_thread(server.info, "stats"))["total_commands_processed"]
    stats_after = await asyncio.to_thread(server.info, "commandstats")
    cpu = [cpu_seconds(app.pid) - before for app, before in zip(apps, cpu_before, strict=True)]
    by_name = {
        name: value["calls"] - stats_before.get(name, {"calls": 0})["calls"]
        for name, value in stats_after.items()
        if value["calls"] != stats_before.get(name, {"calls": 0})["calls"]
    }
    return cpu, total_after - total_before, by_name


async def assert_idle(apps: list[AppProcess], server: RedisServer, label: str) -> None:
    cpu, commands, by_name = await idle_figures(apps, server)
    print(f"\n[{label}] idle {IDLE} s: server CPU {[round(c, 3) for c in cpu]} s, Redis commands {commands} {by_name}")
    assert all(c <= MAX_IDLE_CPU for c in cpu), (cpu, MAX_IDLE_CPU)
    assert commands <= MAX_IDLE_COMMANDS, (commands, by_name)


async def assert_serves_new_streams(http: aiohttp.ClientSession, apps: list[AppProcess], tag: str) -> None:
    for index, app in enumerate(apps):
        stream = f"count.5.0.{tag}{index}"  # count.N.MS: the trailing part only makes the id new
        async with http.get(f"{app.base}/stream/{stream}") as response:
            assert response.status == 200, (app.base, response.status, await response.text())
            events = parse(await response.read())
        assert [e.data for e in events[:-1]] == [f"event {i}" for i in range(5)]
        assert events[-1].event == "done"


def failures(apps: list[AppProcess], stream: str) -> list[dict[str, Any]]:
    """Warnings and errors of the resumable_sse logger that name ``stream`` (by extra or in the message)."""
    return [
        record
        for app in apps
        for record in app.records()
        if record["level"] in {"WARNING", "ERROR", "CRITICAL"}
        and (record["stream_id"] == stream or repr(stream) in record["message"])
    ]


def producer_lost_logs(apps: list[AppProcess], stream: str) -> list[dict[str, Any]]:
    return [
        record
        for app in apps
        for record in app.records()
        if record["stream_id"] == stream and "its producer stops" in record["message"]
    ]


def assert_logged_once(logged: list[dict[str, Any]], stream: str) -> None:
    """README: "A producer whose stream was lost or rewound under it stops and its stream ends lost; the failure is
    logged once by the resumable_sse logger with the stream id": one ERROR record whose ``extra`` names it."""
    errors = [r for r in logged if r["level"] == "ERROR" and r["stream_id"] == stream]
    assert len(errors) == 1, f"the producer's stream ended lost; ERROR records with its stream_id: {errors}; {logged}"


async def fresh_readers(http: aiohttp.ClientSession, apps: list[AppProcess], stream: str) -> list[Reader]:
    """A reader with no position on each server, after the fault: the whole retained stream, checked like the others
    (a finished stream answers at once)."""
    fresh = []
    for index, app in enumerate(apps):
        reader = Reader(f"fresh@app{index}", [app.base], stream)
        await asyncio.wait_for(reader.run(http), 10)
        verify(reader)
        fresh.append(reader)
    return fresh


def report(label: str, readers: list[Reader], fault_end: float, check_ids: bool = True) -> list[Verdict]:
    verdicts = [verify(reader) for reader in readers]
    if check_ids:
        agree(readers)
    for reader, verdict in zip(readers, verdicts, strict=True):
        after = first_event_after(reader, fault_end)
        print(
            f"[{label}] {reader.name}: {len(reader.events)} events, resets {verdict.resets}, end {verdict.end}"
            f" at +{(reader.ended_at or fault_end) - fault_end:.2f} s, next event at"
            f" +{(after - fault_end) if after else float('nan'):.2f} s,"
            f" statuses {sorted({str(status) for _, status in reader.responses})}"
        )
    return verdicts


# -- the faults ------------------------------------------------------------------------------------------------------


async def reading(
    http: aiohttp.ClientSession, fleet: Fleet, **options: Any
) -> tuple[list[AppProcess], list[Reader], list[asyncio.Task[None]]]:
    """The fleet started (``options`` as :meth:`Fleet.start` takes them), its readers following STREAM, each with 30
    events: the moment a fault is injected."""
    apps = fleet.start(**options)
    readers, tasks = await start_readers(http, apps, STREAM)
    await wait_for(lambda: all(len(r.events) >= 30 for r in readers), 15, "30 events each")
    return apps, readers, tasks


async def assert_gone_and_logged_once(
    http: aiohttp.ClientSession, apps: list[AppProcess], position: str | None
) -> None:
    """The stream is gone from the store: a reconnect with the last position gets 410 on every server, and the
    producer's process logged its loss exactly once (it notices at its next append, its retries backing off from
    50 ms: waited for, bounded)."""
    for app in apps:
        async with http.get(f"{app.base}/stream/{STREAM}", headers={"Last-Event-ID": position or ""}) as response:
            assert response.status == 410
    await wait_for(lambda: producer_lost_logs(apps, STREAM), BOUND, "the producer's error record")
    assert len(producer_lost_logs(apps, STREAM)) == 1, failures(apps, STREAM)
    for index, app in enumerate(apps):
        print(f"[app{index}] logged: {[(r['level'], r['message'], r['stream_id']) for r in failures([app], STREAM)]}")


async def assert_recovered(
    http: aiohttp.ClientSession, apps: list[AppProcess], server: RedisServer, label: str
) -> None:
    """After the fault: nothing spins (idle CPU and Redis commands bounded) and every server serves new streams."""
    await assert_idle(apps, server, label)
    await assert_serves_new_streams(http, apps, label)


async def test_a_redis_restart_with_persistence(
    aof_server: RedisServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """AOF (fsync always), Redis down 0.5 s. Every reader, live or reconnecting, gets all 200 events once, in order,
    and ``done``; the next event reaches them within about 1 s of the restart."""
    fleet = Fleet(aof_server, tmp_path)
    try:
        apps, readers, tasks = await reading(http, fleet, store={"socket_timeout": 1.0})
        await asyncio.to_thread(aof_server.stop)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(aof_server.start)
        back = time.monotonic()
        await finish(readers, tasks)
        verdicts = report("a", readers, back)
        for reader, verdict in zip(readers, verdicts, strict=True):
            assert verdict.resets == [] and verdict.end == "done" and verdict.last_seq == COUNT + 1, reader.name
            after = first_event_after(reader, back)
            assert after is not None and after - back < BOUND
        assert producer_lost_logs(apps, STREAM) == []
        agree(readers + await fresh_readers(http, apps, STREAM))  # a newcomer sees the same stream
        await assert_recovered(http, apps, aof_server, "a")
    finally:
        fleet.close()


async def test_b_redis_restart_without_persistence(
    plain_server: RedisServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Redis restarts empty: the stream is gone. Live readers get ``lost`` without an id (or, when their connection
    broke with the restart, a reconnect gets ``410``); the producer stops and says so once."""
    fleet = Fleet(plain_server, tmp_path)
    try:
        apps, readers, tasks = await reading(http, fleet, store={"socket_timeout": 1.0})
        await asyncio.to_thread(plain_server.restart)
        back = time.monotonic()
        await finish(readers, tasks)
        verdicts = report("b", readers, back)
        for reader, verdict in zip(readers, verdicts, strict=True):
            gone_in_band = verdict.end == "lost" and reader.seen()[-1].id is None
            assert gone_in_band or verdict.end == "410", (reader.name, verdict)
            assert verdict.resets == []
            assert reader.ended_at is not None and reader.ended_at - back < BOUND
        await assert_gone_and_logged_once(http, apps, readers[0].position)
        await assert_recovered(http, apps, plain_server, "b")
    finally:
        fleet.close()


async def test_c_redis_restored_from_an_older_snapshot(
    plain_server: RedisServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """SAVE at about event 30, 30 more events, then Redis restarts from that dump.rdb: the stream is rewound below
    every reader. The producer can no longer append after the events it wrote: it ends the stream as a new epoch
    holding only ``lost`` (ending it in place would give the terminal entry an id readers hold for another event).
    Each reader gets a ``reset`` (``position``: the retained events again from the first) if it read the rewound
    stream before that, then a ``reset`` (``epoch``) and ``lost``."""
    fleet = Fleet(plain_server, tmp_path)
    try:
        apps, readers, tasks = await reading(http, fleet, store={"socket_timeout": 1.0})
        snapshot = await asyncio.to_thread(plain_server.snapshot)
        saved = await asyncio.to_thread(last_seq_in_redis, plain_server, fleet.prefix, STREAM)
        await wait_for(lambda: all(len(r.events) >= saved + 30 for r in readers), 15, "30 more events each")
        await asyncio.to_thread(plain_server.restore, snapshot)
        back = time.monotonic()
        await finish(readers, tasks)
        verdicts = report("c", readers, back, check_ids=False)  # checked last, below
        for reader, verdict in zip(readers, verdicts, strict=True):
            assert verdict.resets in (["position", "epoch"], ["epoch"]) and verdict.end == "lost", (
                reader.name,
                verdict,
            )
            assert len(verdict.epochs) == 2 and verdict.last_seq == 1, (reader.name, verdict)  # the new epoch: lost
            assert reader.seen()[-1].id == f"{verdict.epochs[-1]}-1"
            assert reader.ended_at is not None and reader.ended_at - back < BOUND
        logged = failures(apps, STREAM)
        print(f"[c] logged: {[(r['level'], r['message']) for r in logged]}")
        fresh = await fresh_readers(http, apps, STREAM)  # a newcomer: checked with the others at the end
        await assert_recovered(http, apps, plain_server, "c")
        # The terminal event written after the rewind must not reuse an id that readers already received for
        # another event before the rewind: a client whose position is that id would otherwise get 204 ("you have
        # it all") and never learn that the stream was lost, nor that its copy of that event is not the store's.
        before = readers[0].seen()
        old_epoch = verdicts[0].epochs[0]
        reused = next(e for e in before if e.id == f"{old_epoch}-{saved + 1}" and e.event is None)
        async with http.get(f"{apps[1].base}/stream/{STREAM}", headers={"Last-Event-ID": reused.id or ""}) as resp:
            status, body = resp.status, await resp.read()
        print(f"[c] a reconnect at the reused id {reused.id} ({reused.data!r} before the rewind): {status} {body!r}")
        assert_logged_once(logged, STREAM)
        agree(readers + fresh)
        assert status != 204, "a client that holds the pre-rewind event at that id is told the stream is complete"
    finally:
        fleet.close()


def last_seq_in_redis(server: RedisServer, prefix: str, stream: str) -> int:
    """The last sequence number of the stream in Redis (from its state hash)."""
    with redis.Redis(port=server.port) as client:
        state = client.hgetall(f"{{{prefix}:{stream}}}:m")
    assert state, "the stream has no state hash"
    return int(state[b"n"])  # the hash's field for the last sequence number (stores/lua/append.lua)


async def test_d_flushdb(plain_server: RedisServer, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """FLUSHDB under running readers: no connection breaks, so every live reader must hear of it in-band (``lost``
    without id, within half a lease of the next audit) and a reconnect gets ``410``."""
    fleet = Fleet(plain_server, tmp_path)
    try:
        apps, readers, tasks = await reading(http, fleet, store={"socket_timeout": 1.0})
        with redis.Redis(port=plain_server.port) as client:
            await asyncio.to_thread(client.flushdb)
        flushed = time.monotonic()
        await finish(readers, tasks)
        verdicts = report("d", readers, flushed)
        for reader, verdict in zip(readers, verdicts, strict=True):
            assert verdict.end == "lost" and reader.seen()[-1].id is None, (reader.name, verdict)
            assert reader.ended_at is not None and reader.ended_at - flushed < BOUND
            assert {status for _, status in reader.responses} == {200}  # nothing broke: it was told in-band
        await assert_gone_and_logged_once(http, apps, readers[0].position)
        await assert_recovered(http, apps, plain_server, "d")
    finally:
        fleet.close()


def assert_continued_or_lost(readers: list[Reader], verdicts: list[Verdict], fault_end: float, label: str) -> str:
    """A fault the stream may survive: every reader got all events once and ``done``, or all ended ``lost`` (a
    producer that could not renew in time is fenced, everywhere alike). Returns which."""
    ends = {verdict.end for verdict in verdicts}
    assert len(ends) == 1, f"[{label}] readers ended differently: {ends}"
    for reader, verdict in zip(readers, verdicts, strict=True):
        if verdict.end == "done":
            assert verdict.resets == [] and verdict.last_seq == COUNT + 1, (reader.name, verdict)
            after = first_event_after(reader, fault_end)
            assert after is not None and after - fault_end < BOUND, (reader.name, after)
        else:
            assert verdict.end == "lost", (reader.name, verdict)
            assert reader.ended_at is not None and reader.ended_at - fault_end < BOUND
    return ends.pop() or ""


async def test_e_network_faults_between_the_producers_server_and_redis(
    plain_server: RedisServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """app0 (which runs the producer) reaches Redis through a proxy: every connection dropped (RST), then 1.5 s of
    stall (three times the 0.5 s socket timeout), then 2 s at 50 ms per chunk each way; app1 talks to Redis
    directly. Here the lease is the library's default, 5 s: no renewal gap of this fault reaches it (at most about
    0.3 + 1.5 + one 1.7 s renewal period + timeouts, under 4.5 s), so the stream must survive: every reader gets
    all events exactly once and ``done``, the next event within BOUND of the heal. (With a 2 s lease the same fault
    sometimes ends the stream ``lost``: that is honest, but not a promise a deterministic test can hold.)"""
    fleet = Fleet(plain_server, tmp_path)
    async with FaultProxy(plain_server.port) as proxy:
        try:
            apps, readers, tasks = await reading(
                http, fleet, urls=[proxy.url, plain_server.url], lease=5.0, store={"socket_timeout": 0.5}
            )
            proxy.cut()
            await asyncio.sleep(0.3)
            proxy.stall()
            await asyncio.sleep(1.5)
            proxy.flow()
            proxy.slow(0.05)
            await asyncio.sleep(2.0)
            proxy.slow(0)
            healed = time.monotonic()
            await finish(readers, tasks)
            verdicts = report("e", readers, healed)
            for reader, verdict in zip(readers, verdicts, strict=True):
                assert verdict.resets == [] and verdict.end == "done" and verdict.last_seq == COUNT + 1, reader.name
                after = first_event_after(reader, healed)
                assert after is not None and after - healed < BOUND
            logged = failures(apps, STREAM)
            print(f"[e] proxy connections {proxy.connections}; logged {[r['message'] for r in logged]}")
            assert producer_lost_logs(apps, STREAM) == [], logged
            agree(readers + await fresh_readers(http, apps, STREAM))  # a newcomer sees the same stream
            await assert_recovered(http, apps, plain_server, "e")
        finally:
            fleet.close()


async def test_f_sigkill_of_the_producers_server(
    plain_server: RedisServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """SIGKILL of app0 mid-stream. Readers on app1 get ``lost`` (with the next id) within about 1.5 leases; readers
    on app0 see their connection reset, reconnect with Last-Event-ID, are refused and fail over to app1, which
    gives them the rest and the same ``lost``."""
    fleet = Fleet(plain_server, tmp_path)
    try:
        apps, readers, tasks = await reading(http, fleet)
        apps[0].process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await finish(readers, tasks)
        verdicts = report("f", readers, killed)
        for reader, verdict in zip(readers, verdicts, strict=True):
            assert verdict.end == "lost" and verdict.resets == [], (reader.name, verdict)
            assert reader.seen()[-1].id is not None
            assert reader.ended_at is not None and reader.ended_at - killed < LEASE * 1.5 + 1.0
        survivor = apps[1:]
        async with http.get(
            f"{survivor[0].base}/stream/{STREAM}", headers={"Last-Event-ID": readers[0].position or ""}
        ) as response:
            assert response.status == 204  # the position is the terminal event
        print(f"[f] app1 logged: {[(r['level'], r['message']) for r in failures(survivor, STREAM)]}")
        agree(readers + await fresh_readers(http, survivor, STREAM))  # a newcomer sees the same stream
        await assert_recovered(http, survivor, plain_server, "f")
    finally:
        fleet.close()


async def test_g_redis_stopped_longer_than_the_socket_timeout(
    plain_server: RedisServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """SIGSTOP of Redis for 3 s (socket timeout 0.5 s, lease 2 s), then SIGCONT. Connections stay open but nothing
    answers; the stream goes on exactly once to ``done``, or ends ``lost`` for every reader alike."""
    fleet = Fleet(plain_server, tmp_path)
    try:
        apps, readers, tasks = await reading(http, fleet, store={"socket_timeout": 0.5})
        plain_server.pause()
        try:
            await asyncio.sleep(3.0)
        finally:
            plain_server.resume()
        resumed = time.monotonic()
        await finish(readers, tasks)
        verdicts = report("g", readers, resumed)
        how = assert_continued_or_lost(readers, verdicts, resumed, "g")
        logged = failures(apps, STREAM)
        print(f"[g] ended {how}; logged {[(r['level'], r['message']) for r in logged]}")
        assert len(producer_lost_logs(apps, STREAM)) <= 1, logged
        agree(readers + await fresh_readers(http, apps, STREAM))  # a newcomer sees the same stream
        await assert_recovered(http, apps, plain_server, "g")
        if how == "lost":  # the producer, alive, was fenced: its stream ended lost under it
            # it hears of it at its next append, after a retry delay: wait, bounded, for its record
            await wait_for(lambda: producer_lost_logs(apps, STREAM), BOUND, "the producer's error record")
            assert_logged_once(failures(apps, STREAM), STREAM)
    finally:
        fleet.close()


async def test_g_redis_stopped_longer_than_the_socket_timeout_but_within_the_lease(
    plain_server: RedisServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """SIGSTOP of Redis for 1.2 s: more than twice the 0.5 s socket timeout, well within the default 5 s lease.
    Calls time out and are retried; nothing may be lost: every reader gets all events once and ``done``."""
    fleet = Fleet(plain_server, tmp_path)
    try:
        apps, readers, tasks = await reading(http, fleet, lease=5.0, store={"socket_timeout": 0.5})
        plain_server.pause()
        try:
            await asyncio.sleep(1.2)
        finally:
            plain_server.resume()
        resumed = time.monotonic()
        await finish(readers, tasks)
        verdicts = report("g2", readers, resumed)
        for reader, verdict in zip(readers, verdicts, strict=True):
            assert verdict.resets == [] and verdict.end == "done" and verdict.last_seq == COUNT + 1, reader.name
            after = first_event_after(reader, resumed)
            assert after is not None and after - resumed < BOUND
        logged = failures(apps, STREAM)
        print(f"[g2] logged {[(r['level'], r['message']) for r in logged]}")
        assert producer_lost_logs(apps, STREAM) == [], logged
        agree(readers + await fresh_readers(http, apps, STREAM))
        await assert_recovered(http, apps, plain_server, "g2")
    finally:
        fleet.close()
