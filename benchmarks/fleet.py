"""Many concurrent chats: S paced token streams at once, one reader each, over HTTP from another process.

This is the workload the library exists for (many LLM chats at once). Each stream's producer yields one token every
``1/--rate`` seconds (default 20 tokens/s) for ``--tokens`` tokens (default 200, so 10 s), on an absolute schedule
(``start + i/rate``), so a producer that falls behind shows up as lag instead of quietly slowing down. Each token's
data is ``tok <time.time_ns() when the producer yielded it>``; the reader (same machine, same clock) takes the
yield-to-client latency of every token from it.

Rows (each measured on a fresh server process, in the same run):
  baseline   plain aiohttp-sse (``sse_response``): the handler runs the same paced generator itself and sends each
             token (no log, no resume); the reference the ratios are taken against
  memory     ``resumable_handler(gen)`` with ``setup(app, Streamer(MemoryStore()))``
  redis      the same on ``RedisStore.from_url(url)``, a private redis-server on a free port (never 6379)
  rs-python  resumable-stream 0.2 (Python, PyPI) on the same redis-server, on aiohttp (only when named in ``--only``
             or with ``--peers``; see ``_fleet_peers.py``)
  rs-node    resumable-stream 2.x (Node, npm) on the same redis-server, on node's http server (``rs_node/server.js``;
             the same; needs node and npm: ``npm ci`` runs in ``rs_node/`` when its packages are missing)
             The peers keep the tokens in the producer's memory and send Redis a few commands per stream, none per
             token, where the other rows write every token to the log; they serve the same wire data, so the same
             readers measure them
  memory-metrics, redis-metrics (only when named in ``--only``)
             the same with Prometheus metrics on (``Streamer(observer=PrometheusMetrics(...))``, the ``prometheus``
             extra); a last line compares each with its row without metrics: what the metrics cost

Three processes: this driver, the server (``--serve``, one per row and size) and the readers (``--client``, one
process holding every connection). Every reader opens its connection and receives a first ``ready`` event before
measuring starts; then the producers start, spread evenly over ``--stagger`` seconds (default 1), and the readers
count tokens until every stream has its terminal event or the deadline (run length + stagger + 5 s) passes.

For each row and each S in ``--streams`` it prints:
  p50/p99/max     yield-to-client latency of the delivered tokens, ms
  delivered       tokens received by the deadline / S x tokens
  srv CPU         server process CPU (utime + stime from /proc) over the run / wall time of the run
  us/tok          server CPU microseconds per delivered token
  redis           redis-server CPU over the run (the redis row only): part of what the redis row costs
  client          the reader process's CPU: near 100 % means the reader, not the server, set the latency
  lag max         how far behind its schedule the latest producer woke (ms): small means producers kept pace
  p99 x, us x     the row's p99 latency and CPU per token / the baseline's at the same S

    python benchmarks/fleet.py [--streams 100 1000] [--tokens 200] [--rate 20] [--only baseline memory redis]
    python benchmarks/fleet.py --streams 1000 --only memory memory-metrics     # what the metrics cost
    python benchmarks/fleet.py --streams 1000 --peers                          # beside the peers (issue 26's table)

``--idle`` measures the other side of the same workload: S streams (default 10,000) that are running but quiet
(each producer yields one token, then waits without yielding until the end), one reader each. After every reader has
its token it takes the server's CPU % over a quiet ``--window`` (default 15 s: every connection sends exactly one
heartbeat, the default 15 s one, so the figure does not depend on where the window falls) and the server's RSS per
connection (RSS after all connected minus RSS of the fresh server, / S). The baseline holds plain aiohttp-sse
connections open with a handler that sends one token, then sleeps.

    python benchmarks/fleet.py --idle [--streams 10000] [--window 15]

After the table it prints each row's capacity among the sizes run: the largest S at which p99 <= 50 ms, every token
was delivered and producers kept their pace (lag p99 under one period); the goal is the baseline's capacity.

``--shared`` (idle): every reader reads the same quiet stream instead of one each.

``--gc-threshold N [N N]`` runs every Python server (each row's, the baseline's included; not rs-node's) with
``gc.set_threshold(...)`` set at its start: what a deployment that tunes the garbage collector gets. With the
defaults (700, 10, 10), a thousand concurrent streams hold a few hundred thousand objects, and the full collections
that walk all of them pause the event loop for 50 to 150 ms: those pauses, not the library's work, decide the p99
there.

    python benchmarks/fleet.py --streams 1000 1250 --gc-threshold 20000 50 50

``--profile DIR`` records each Python server with py-spy (``--native``) through its run, into ``DIR/ROW-S.txt``
(collapsed stacks): where its CPU per token goes. The sampling costs the server CPU: profile, then measure apart.

``--json`` prints every figure as one JSON document on stdout (the table then goes to stderr). Linux only (/proc).
One reader process holds all S connections, so S is bounded by its file descriptor limit (raised to the hard limit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _bench import cpu_seconds, raise_fd_limit, rss_bytes
from _fleet_peers import PEERS, node_command, rs_python
from aiohttp import ClientSession, web
from aiohttp_sse import sse_response

from resumable_sse import MemoryStore, RedisStore, Streamer, resumable_handler, setup

ROWS = ("baseline", "memory", "redis", "memory-metrics", "redis-metrics", *PEERS)
DEFAULT_ROWS = ("baseline", "memory", "redis")
REDIS_ROWS = {"redis", "redis-metrics", *PEERS}  # rows served on the private redis-server
TESTS = str(Path(__file__).resolve().parent.parent / "tests")  # for tests/redis_servers.py
TOKEN_RE = re.compile(rb"data: tok (\d+)")
TERMINAL_RE = re.compile(rb"^event: (done|error|cancelled|lost)", re.MULTILINE)
LAST_CHUNK_RE = re.compile(rb"(?:^|\n)0\r\n\r\n")  # the response is over (the connection may stay open)
CAPACITY_P99_MS = 50.0  # a row holds S streams at p99 <= this (with every token delivered, producers at pace)
GRACE = 5.0  # seconds after the last scheduled token that readers keep counting
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def percentile(ordered: list[int], fraction: float) -> int:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0


def stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str]:
    """Lines from stdin (the driver's commands); an empty string at end of file (the driver is gone)."""
    lines: asyncio.Queue[str] = asyncio.Queue()

    def pump() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.strip())
        loop.call_soon_threadsafe(lines.put_nowait, "")

    threading.Thread(target=pump, daemon=True).start()
    return lines


# -- the server process ---------------------------------------------------------------------------------------------


class Fleet:
    """What every producer in the server shares: the start signal, the schedule and the lags observed."""

    def __init__(self, streams: int, tokens: int, rate: float, stagger: float) -> None:
        self.streams = streams
        self.tokens = tokens
        self.rate = rate
        self.stagger = stagger
        self.go = asyncio.Event()
        self.stop = asyncio.Event()
        self.start = 0.0  # loop time of the first stream's first token
        self.lags: list[float] = []  # seconds each token was yielded after its scheduled time
        self.gc_pauses: list[tuple[int, float]] = []  # (generation, seconds) of each garbage collection
        self._gc_began = 0.0

    def track_gc(self, phase: str, info: dict[str, int]) -> None:
        """A ``gc.callbacks`` hook: every collection's generation and length (a pause of the whole event loop)."""
        if phase == "start":
            self._gc_began = time.perf_counter()
        else:
            self.gc_pauses.append((info["generation"], time.perf_counter() - self._gc_began))

    def offset(self, request: web.Request) -> float:
        index = int(request.match_info["stream_id"].rpartition("-")[2])
        return self.stagger * index / self.streams

    async def paced(self, request: web.Request) -> AsyncIterator[str]:
        """``ready``, then after go one token every 1/rate s on an absolute schedule, this stream's offset in."""
        yield "ready"
        await self.go.wait()
        loop = asyncio.get_running_loop()
        start = self.start + self.offset(request)
        lags = self.lags
        for i in range(self.tokens):
            due = start + i / self.rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stop.is_set():
                return
            lags.append(loop.time() - due)
            yield f"tok {time.time_ns()}"

    async def quiet(self, _request: web.Request) -> AsyncIterator[str]:
        """One token, then nothing until the benchmark ends (a running, silent stream)."""
        yield f"tok {time.time_ns()}"
        await self.stop.wait()

    def stats(self) -> dict[str, float | int]:
        lags = sorted(self.lags)
        return {
            "lag_max_ms": lags[-1] * 1000 if lags else 0.0,
            "lag_p99_ms": lags[min(len(lags) - 1, int(0.99 * len(lags)))] * 1000 if lags else 0.0,
            "late_tokens": sum(1 for lag in lags if lag > 1 / self.rate),  # a whole period or more behind
            "yielded": len(lags),
            "gc_collections": len(self.gc_pauses),
            "gc_full": sum(1 for generation, _ in self.gc_pauses if generation == 2),
            "gc_max_ms": max((pause for _, pause in self.gc_pauses), default=0.0) * 1000,
            "gc_total_ms": sum(pause for _, pause in self.gc_pauses) * 1000,
        }


def _baseline(source: Callable[[web.Request], AsyncIterator[str]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        async with sse_response(request) as response:
            with contextlib.suppress(ConnectionResetError):  # the reader went away (the benchmark is over)
                async for data in source(request):
                    await response.send(data)
                await response.send("{}", event="done")
        return response

    return handler


async def serve(
    row: str,
    idle: bool,
    streams: int,
    tokens: int,
    rate: float,
    stagger: float,
    redis_url: str,
    cluster: bool = False,
    gc_threshold: list[int] | None = None,
) -> None:
    """The server: prints ``PORT <n>``, serves ``/s/{stream_id}``, ends when stdin closes (or after a bound)."""
    raise_fd_limit()
    if gc_threshold:
        gc.set_threshold(*gc_threshold)
    loop = asyncio.get_running_loop()
    fleet = Fleet(streams, tokens, rate, stagger)
    source = fleet.quiet if idle else fleet.paced
    app = web.Application()
    if row == "baseline":
        app.router.add_get("/s/{stream_id}", _baseline(source))
    elif row == "rs-python":
        rs_python(app, source, redis_url, streams)
    else:
        if row.startswith("memory"):
            store: MemoryStore | RedisStore = MemoryStore(max_streams=max(10_000, streams + 10))
        else:
            store = RedisStore.from_url(redis_url, cluster=cluster)
        observer = None
        if row.endswith("-metrics"):
            from prometheus_client import CollectorRegistry

            from resumable_sse.prometheus import PrometheusMetrics

            observer = PrometheusMetrics(CollectorRegistry())
        setup(app, Streamer(store, observer=observer))
        app.router.add_get("/s/{stream_id}", resumable_handler(source))

    async def go(_request: web.Request) -> web.Response:
        lead = 0.1  # the driver tells the readers the deadline before the first token is due
        fleet.start = loop.time() + lead
        gc.callbacks.append(fleet.track_gc)
        fleet.go.set()
        return web.json_response({"start_ns": time.time_ns() + int(lead * 1e9)})

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(fleet.stats())

    app.router.add_post("/control/go", go)
    app.router.add_get("/control/stats", stats)
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"PORT {port}", flush=True)
    commands = stdin_lines(loop)
    try:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(commands.get(), 3600)  # any line or EOF ends the server
    finally:
        fleet.stop.set()  # paced producers return at their next token, quiet ones at once
        fleet.go.set()
        await runner.cleanup()


# -- the reader process ---------------------------------------------------------------------------------------------


class Readers:
    """Every connection of the reader process, and what they saw."""

    def __init__(self, streams: int) -> None:
        self.streams = streams
        self.ready = 0  # got the 200 and a first event
        self.failed = 0  # no 200, or closed before a first event
        self.done = 0  # terminal event (any)
        self.bad_ends = 0  # a terminal event other than done
        self.end_types: dict[str, int] = {}  # terminal events by type
        self.lost = 0  # ended after the first event, before a terminal one
        self.measuring = False
        self.latencies: list[int] = []  # ns, every token received while measuring
        self.pings = 0
        self.all_ready = asyncio.Event()
        self.all_over = asyncio.Event()
        self.open: set[Reader] = set()

    def check(self) -> None:
        if self.ready + self.failed >= self.streams:
            self.all_ready.set()
        if self.done + self.lost + self.failed >= self.streams:
            self.all_over.set()

    def seen(self, reader: Reader, body: bytes, now: int) -> None:
        if reader.state == "open" and b"data: " in body:
            reader.state = "ready"
            self.ready += 1
            self.check()
        if self.measuring:
            latencies = self.latencies
            for match in TOKEN_RE.finditer(body):
                latencies.append(now - int(match.group(1)))
            if b": ping" in body:
                self.pings += body.count(b": ping")
        if b"event: " in body:
            terminal = TERMINAL_RE.search(body)
            if terminal is not None:
                self.done += 1
                self.bad_ends += terminal.group(1) != b"done"
                end_type = terminal.group(1).decode()
                self.end_types[end_type] = self.end_types.get(end_type, 0) + 1
                reader.finish("done")
        if b"0\r\n\r\n" in body and LAST_CHUNK_RE.search(body):
            reader.finish("lost")  # ended without a terminal event (a no-op after one)

    def ended(self, reader: Reader, state: str) -> None:
        if state == "failed":
            self.failed += 1
        elif state == "lost":
            self.lost += 1
        self.check()


class Reader(asyncio.Protocol):
    """One SSE connection, read with a bare protocol (cheap: the reader process must not be the bottleneck)."""

    def __init__(self, readers: Readers, path: str) -> None:
        self.readers = readers
        self.path = path
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.tail = b""
        self.state = "connecting"  # then open (200 seen), ready (first event), and done, failed or lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.readers.open.add(self)
        transport.write(f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if self.state == "connecting":
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 200 "):
                self.finish("failed")
                return
            data, self.head, self.state = self.head[end + 4 :], b"", "open"
        # Whole lines only (chunked framing never splits an event: each server write is one chunk of whole events).
        buffer = self.tail + data
        cut = buffer.rfind(b"\n") + 1
        self.tail = buffer[cut:]
        if cut:
            self.readers.seen(self, buffer[:cut], now)

    def finish(self, state: str) -> None:
        if self.state in ("done", "failed", "lost"):
            return
        if state == "lost" and self.state != "ready":
            state = "failed"
        self.state = state
        self.readers.ended(self, state)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.readers.open.discard(self)
        self.finish("lost")


async def _open_all(readers: Readers, port: int, prefix: str, shared: bool = False) -> None:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(256)  # connects in flight (the server's accept backlog is 4096)

    async def open_one(index: int) -> None:
        reader = Reader(readers, f"/s/{prefix}-{0 if shared else index}")
        async with gate:
            for _attempt in range(5):
                try:
                    await loop.create_connection(lambda: reader, "127.0.0.1", port)
                    return
                except OSError:
                    await asyncio.sleep(0.2)
        reader.finish("failed")

    await asyncio.gather(*(open_one(index) for index in range(readers.streams)))


async def client(
    port: int, prefix: str, streams: int, idle: bool, connect_timeout: float, shared: bool = False
) -> None:
    """Open every connection, print ``CONNECTED``; then follow the driver's commands on stdin, report JSON."""
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    commands = stdin_lines(loop)
    readers = Readers(streams)
    opened_at = time.monotonic()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(_open_all(readers, port, prefix, shared), connect_timeout)
        await asyncio.wait_for(readers.all_ready.wait(), max(1.0, connect_timeout - (time.monotonic() - opened_at)))
    connect_s = time.monotonic() - opened_at
    print(f"CONNECTED {readers.ready} {readers.failed} {connect_s:.2f}", flush=True)
    command = await asyncio.wait_for(commands.get(), 600)  # GO <deadline ns> or MARK
    if not command:  # the driver is gone
        return
    cpu_before = os.times()
    readers.measuring = True
    done_before = readers.done
    if command.startswith("GO "):
        deadline = int(command.split()[1])
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(readers.all_over.wait(), max(0.0, (deadline - time.time_ns()) / 1e9))
    else:
        await asyncio.wait_for(commands.get(), 600)  # STOP (or EOF)
    readers.measuring = False
    cpu_after = os.times()
    ordered = sorted(readers.latencies)
    report = {
        "ready": readers.ready,
        "failed": readers.failed,
        "connect_s": connect_s,
        "tokens": len(ordered),
        "done": readers.done - done_before,
        "ended": readers.done,  # terminal events since connecting
        "bad_ends": readers.bad_ends,
        "end_types": readers.end_types,
        "lost": readers.lost,  # since connecting
        "held": sum(1 for reader in readers.open if reader.state == "ready"),  # still streaming at the end
        "pings": readers.pings,
        "p50_ms": percentile(ordered, 0.50) / 1e6,
        "p99_ms": percentile(ordered, 0.99) / 1e6,
        "max_ms": (ordered[-1] if ordered else 0) / 1e6,
        "cpu_s": max(0.0, cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system),
    }
    print(json.dumps(report), flush=True)
    for reader in list(readers.open):
        if reader.transport is not None:
            reader.transport.abort()


# -- the driver -----------------------------------------------------------------------------------------------------


@dataclass
class TokenResult:
    row: str
    streams: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    delivered: int
    expected: int
    server_cpu_pct: float
    cpu_us_per_token: float
    redis_cpu_pct: float | None
    client_cpu_pct: float
    lag_max_ms: float
    lag_p99_ms: float
    late_tokens: int
    wall_s: float
    connect_s: float
    failed: int
    lost: int
    bad_ends: int
    end_types: dict[str, int]
    gc_collections: int = 0
    gc_full: int = 0
    gc_max_ms: float = 0.0
    gc_total_ms: float = 0.0
    p99_vs_baseline: float | None = None
    cpu_vs_baseline: float | None = None


@dataclass
class IdleResult:
    row: str
    streams: int
    connected: int
    failed: int
    connect_s: float
    window_s: float
    server_cpu_pct: float
    redis_cpu_pct: float | None
    client_cpu_pct: float
    rss_fresh_mb: float
    rss_connected_mb: float
    rss_per_connection_kb: float
    pings: int
    held: int
    ended: int
    bad_ends: int
    end_types: dict[str, int]
    lost: int
    cpu_vs_baseline: float | None = None
    rss_vs_baseline: float | None = None


class Proc:
    """A child process of this script, talked to by lines on stdin/stdout, always ended."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name

    @classmethod
    async def start(
        cls, name: str, *args: str, command: list[str] | None = None, env: dict[str, str] | None = None
    ) -> Proc:
        """This script with ``args`` (or ``command`` with them: the rs-node server)."""
        process = await asyncio.create_subprocess_exec(
            *(command or [sys.executable, __file__]),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(process, name)

    async def line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        try:
            raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            raise SystemExit(f"{self.name}: no answer within {timeout:.0f} s") from None
        if not raw:
            raise SystemExit(f"{self.name} exited (code {await self.process.wait()})")
        return raw.decode().strip()

    async def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")
        await self.process.stdin.drain()

    async def end(self) -> None:
        """Close stdin (the child's cue to stop), then wait a while, then kill."""
        if self.process.returncode is not None:
            return
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except asyncio.TimeoutError:
            self.process.kill()
            await self.process.wait()


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.redis: Any = None  # tests/redis_servers.RedisServer
        self.runs = 0

    def start_redis(self) -> None:
        sys.path.insert(0, TESTS)
        from redis_servers import RedisServer, find_server_binary

        binary = find_server_binary()
        if binary is None:
            raise SystemExit("the redis row needs a redis-server binary (or RESUMABLE_SSE_REDIS_SERVER); use --only")
        self.redis = RedisServer(binary).start()

    def redis_cpu(self, row: str) -> float | None:
        if row not in REDIS_ROWS or self.redis is None or self.redis.process is None:
            return None
        return cpu_seconds(self.redis.process.pid)

    def flush_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(self.redis.url)
        client.flushall()
        client.close()

    async def _server(self, row: str, streams: int) -> tuple[Proc, int]:
        if row in REDIS_ROWS:
            self.flush_redis()
        args = self.args
        url = self.redis.url if self.redis is not None else ""
        if row == "rs-node":
            server = await Proc.start(
                f"{row} server", str(streams), str(args.tokens), str(args.rate), str(args.stagger),
                "1" if args.idle else "0", command=node_command(), env={**os.environ, "REDIS_URL": url},
            )  # fmt: skip
        else:
            server = await self._python_server(row, streams, url)
        line = await server.line(30)
        if not line.startswith("PORT "):
            await server.end()
            raise SystemExit(f"{row} server: unexpected {line!r}")
        return server, int(line.split()[1])

    async def _python_server(self, row: str, streams: int, url: str) -> Proc:
        args = self.args
        return await Proc.start(
            f"{row} server", "--serve", row, "--streams", str(streams), "--tokens", str(args.tokens),
            "--rate", str(args.rate), "--stagger", str(args.stagger), "--redis-url", url,
            *(["--idle"] if args.idle else []),
            *(["--gc-threshold", *map(str, args.gc_threshold)] if args.gc_threshold else []),
        )  # fmt: skip

    async def _clients(self, row: str, streams: int, port: int) -> tuple[Proc, list[str]]:
        self.runs += 1
        connect_timeout = 30 + streams / 100
        reader = await Proc.start(
            f"{row} readers", "--client", str(port), "--prefix", f"r{self.runs}", "--streams", str(streams),
            "--connect-timeout", str(connect_timeout), *(["--idle"] if self.args.idle else []),
            *(["--shared"] if self.args.shared else []),
        )  # fmt: skip
        connected = (await reader.line(connect_timeout + 30)).split()
        if connected[0] != "CONNECTED":
            raise SystemExit(f"{row} readers: unexpected {connected!r}")
        return reader, connected

    async def _profile(self, row: str, streams: int, pid: int) -> asyncio.subprocess.Process | None:
        """``--profile DIR``: py-spy records the (Python) server through the run, ``DIR/ROW-S.txt`` (collapsed
        stacks, native frames too). A diagnosis: sampling costs the server some CPU, so the run's figures are not
        the row's."""
        if not self.args.profile or row == "rs-node":
            return None
        spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        if spy is None:
            raise SystemExit("--profile needs py-spy (pip install py-spy)")
        out = os.path.join(self.args.profile, f"{row}-{streams}.txt")
        command = [spy, "record", "--native", "--format", "raw", "-p", str(pid), "-o", out]
        return await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL)

    async def tokens(self, row: str, streams: int) -> TokenResult:
        args = self.args
        server, port = await self._server(row, streams)
        reader: Proc | None = None
        try:
            reader, connected = await self._clients(row, streams, port)
            if int(connected[1]) < streams:
                log(f"  {row} S={streams}: only {connected[1]} of {streams} readers connected ({connected[2]} failed)")
            pid = server.process.pid
            profiler = await self._profile(row, streams, pid)
            cpu0, redis0, wall0 = cpu_seconds(pid), self.redis_cpu(row), time.monotonic()
            async with ClientSession() as session, session.post(f"http://127.0.0.1:{port}/control/go") as reply:
                start_ns = (await reply.json())["start_ns"]
            run_s = args.stagger + args.tokens / args.rate
            await reader.send(f"GO {start_ns + int((run_s + GRACE) * 1e9)}")
            out = json.loads(await reader.line(run_s + GRACE + 60))
            cpu1, redis1, wall1 = cpu_seconds(pid), self.redis_cpu(row), time.monotonic()
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                await profiler.wait()
            async with ClientSession() as session, session.get(f"http://127.0.0.1:{port}/control/stats") as reply:
                stats = await reply.json()
        finally:
            if reader is not None:
                await reader.end()
            await server.end()
        wall = wall1 - wall0
        delivered = out["tokens"]
        return TokenResult(
            row=row,
            streams=streams,
            p50_ms=out["p50_ms"],
            p99_ms=out["p99_ms"],
            max_ms=out["max_ms"],
            delivered=delivered,
            expected=streams * args.tokens,
            server_cpu_pct=100 * (cpu1 - cpu0) / wall,
            cpu_us_per_token=1e6 * (cpu1 - cpu0) / delivered if delivered else float("inf"),
            redis_cpu_pct=None if redis0 is None or redis1 is None else 100 * (redis1 - redis0) / wall,
            client_cpu_pct=100 * out["cpu_s"] / wall,
            lag_max_ms=stats["lag_max_ms"],
            lag_p99_ms=stats["lag_p99_ms"],
            late_tokens=stats["late_tokens"],
            wall_s=wall,
            connect_s=float(connected[3]),
            failed=out["failed"],
            lost=out["lost"],
            bad_ends=out["bad_ends"],
            end_types=out["end_types"],
            gc_collections=stats["gc_collections"],
            gc_full=stats["gc_full"],
            gc_max_ms=stats["gc_max_ms"],
            gc_total_ms=stats["gc_total_ms"],
        )

    async def idle(self, row: str, streams: int) -> IdleResult:
        args = self.args
        server, port = await self._server(row, streams)
        reader: Proc | None = None
        try:
            pid = server.process.pid
            await asyncio.sleep(0.5)
            rss0 = rss_bytes(pid)
            reader, connected = await self._clients(row, streams, port)
            await asyncio.sleep(1.0)  # let the connection burst settle
            await reader.send("MARK")
            cpu0, redis0, wall0 = cpu_seconds(pid), self.redis_cpu(row), time.monotonic()
            await asyncio.sleep(args.window)
            cpu1, redis1, wall1 = cpu_seconds(pid), self.redis_cpu(row), time.monotonic()
            rss1 = rss_bytes(pid)
            await reader.send("STOP")
            out = json.loads(await reader.line(60))
        finally:
            if reader is not None:
                await reader.end()
            await server.end()
        wall = wall1 - wall0
        ready = int(connected[1])
        return IdleResult(
            row=row,
            streams=streams,
            connected=ready,
            failed=int(connected[2]),
            connect_s=float(connected[3]),
            window_s=wall,
            server_cpu_pct=100 * (cpu1 - cpu0) / wall,
            redis_cpu_pct=None if redis0 is None or redis1 is None else 100 * (redis1 - redis0) / wall,
            client_cpu_pct=100 * out["cpu_s"] / wall,
            rss_fresh_mb=rss0 / 2**20,
            rss_connected_mb=rss1 / 2**20,
            rss_per_connection_kb=(rss1 - rss0) / max(1, ready) / 1024,
            pings=out["pings"],
            held=out["held"],
            ended=out["ended"],
            bad_ends=out["bad_ends"],
            end_types=out["end_types"],
            lost=out["lost"],
        )


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _ratio(value: float, base: float | None) -> float | None:
    return value / base if base else None


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _ends(types: dict[str, int]) -> str:
    return ", ".join(f"{name}: {count}" for name, count in sorted(types.items())) or "none"


def print_tokens(results: list[TokenResult], out: Any) -> None:
    header = (
        f"{'row':14} {'S':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'delivered':>17} {'srv CPU':>8} "
        f"{'us/tok':>7} {'redis':>6} {'client':>7} {'lag max':>9} {'p99 x':>7} {'us x':>6}"
    )
    print(header, file=out)
    for r in results:
        redis_cpu = "-" if r.redis_cpu_pct is None else f"{r.redis_cpu_pct:.0f}%"
        delivered = f"{r.delivered}/{r.expected}"
        print(
            f"{r.row:14} {r.streams:>6} {r.p50_ms:8.1f} {r.p99_ms:8.1f} {r.max_ms:8.1f} {delivered:>17} "
            f"{r.server_cpu_pct:7.0f}% {r.cpu_us_per_token:7.0f} {redis_cpu:>6} {r.client_cpu_pct:6.0f}% "
            f"{r.lag_max_ms:7.0f}ms {_x(r.p99_vs_baseline):>7} {_x(r.cpu_vs_baseline):>6}",
            file=out,
        )
    for r in results:
        print(
            f"  {r.row} S={r.streams}: {r.gc_collections} garbage collections while producing ({r.gc_full} full), "
            f"longest {r.gc_max_ms:.0f} ms, {r.gc_total_ms:.0f} ms in all",
            file=out,
        )
    odd = [r for r in results if r.failed or r.lost or r.bad_ends or r.late_tokens]
    for r in odd:
        print(
            f"  {r.row} S={r.streams}: {r.failed} readers failed to connect, {r.lost} lost mid-stream, "
            f"ends: {_ends(r.end_types)}; {r.late_tokens} tokens yielded a period or more late "
            f"(producer lag p99 {r.lag_p99_ms:.0f} ms)",
            file=out,
        )


def print_idle(results: list[IdleResult], out: Any) -> None:
    print(
        f"{'row':14} {'S':>6} {'connected':>13} {'connect s':>9} {'srv CPU':>8} {'redis':>6} {'client':>7} "
        f"{'RSS fresh':>9} {'RSS conn':>9} {'KiB/conn':>9} {'pings':>7} {'held':>6} {'lost':>5} "
        f"{'CPU x':>6} {'RSS x':>6}",
        file=out,
    )
    for r in results:
        redis_cpu = "-" if r.redis_cpu_pct is None else f"{r.redis_cpu_pct:.1f}%"
        print(
            f"{r.row:14} {r.streams:>6} {f'{r.connected}/{r.streams}':>13} {r.connect_s:9.1f} "
            f"{r.server_cpu_pct:7.1f}% {redis_cpu:>6} {r.client_cpu_pct:6.1f}% {r.rss_fresh_mb:7.0f}MB "
            f"{r.rss_connected_mb:7.0f}MB {r.rss_per_connection_kb:9.1f} {r.pings:>7} {r.held:>6} {r.lost:>5} "
            f"{_x(r.cpu_vs_baseline):>6} {_x(r.rss_vs_baseline):>6}",
            file=out,
        )
    for r in results:
        if r.failed or r.lost or r.ended or r.held != r.streams:
            print(
                f"  {r.row} S={r.streams}: {r.failed} readers were refused or ended before their first event; "
                f"of the connected, {r.ended} got a terminal event ({_ends(r.end_types)}) and {r.lost} "
                f"ended without one; {r.held} still streaming at the end of the window",
                file=out,
            )


def holds(r: TokenResult, rate: float) -> bool:
    """A row holds S streams: p99 <= 50 ms, every token delivered, no reader failed or lost, producers at pace
    (their lag p99 under one period)."""
    return (
        r.p99_ms <= CAPACITY_P99_MS
        and r.delivered == r.expected
        and not (r.failed or r.lost or r.bad_ends)
        and r.lag_p99_ms < 1000 / rate
    )


def print_capacity(results: list[TokenResult], rate: float, out: Any) -> dict[str, dict[str, Any]]:
    """Each row's capacity among the sizes run: the largest S it holds (see :func:`holds`), 0 if none."""
    capacity: dict[str, dict[str, Any]] = {}
    for row in dict.fromkeys(r.row for r in results):
        held = [r for r in results if r.row == row and holds(r, rate)]
        best = max(held, key=lambda r: r.streams, default=None)
        capacity[row] = {
            "streams": best.streams if best else 0,
            "sizes_run": sorted(r.streams for r in results if r.row == row),
            "max_ms": best.max_ms if best else None,
        }
        pause = f", max {best.max_ms:.0f} ms{' (over 50 ms)' if best.max_ms > 50 else ''}" if best else ""
        print(f"capacity {row}: {capacity[row]['streams']} streams{pause}", file=out)
    base = capacity.get("baseline", {}).get("streams")
    for row, entry in capacity.items():
        if row != "baseline" and base is not None:
            entry["vs_baseline"] = entry["streams"] / base if base else None
            entry["met"] = entry["streams"] >= base
    return capacity


async def main(args: argparse.Namespace) -> None:
    limit = raise_fd_limit()
    chosen = set(args.only or DEFAULT_ROWS) | (set(PEERS) if args.peers else set())
    rows = [row for row in ROWS if row in chosen]
    streams: list[int] = args.streams or ([10_000] if args.idle else [100, 1000])
    if max(streams) + 500 > limit:
        raise SystemExit(f"{max(streams)} connections in one reader process need more than the fd limit ({limit})")
    driver = Driver(args)
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    if "rs-node" in rows:
        node_command()  # node and its packages are there (npm ci) before the first row runs
    if REDIS_ROWS.intersection(rows):
        driver.start_redis()
    table = sys.stderr if args.json else sys.stdout
    mode = (
        f"idle: one token, then quiet; {args.window:g} s window"
        if args.idle
        else f"{args.tokens} tokens at {args.rate:g}/s, starts spread over {args.stagger:g} s"
    )
    python = sys.version.split()[0]
    tuned = f"; gc.set_threshold{tuple(args.gc_threshold)}" if args.gc_threshold else ""
    print(
        f"fleet: {mode}; rows {' '.join(rows)}; Python {python}, {os.cpu_count()} CPUs{tuned}", file=table, flush=True
    )
    token_results: list[TokenResult] = []
    idle_results: list[IdleResult] = []
    try:
        for size in streams:
            for row in rows:
                log(f"  running {row} S={size} ...")
                if args.idle:
                    idle_results.append(await driver.idle(row, size))
                else:
                    token_results.append(await driver.tokens(row, size))
    finally:
        if driver.redis is not None:
            driver.redis.close()
    for t in token_results:
        base = next((b for b in token_results if b.row == "baseline" and b.streams == t.streams), None)
        if base is not None:
            t.p99_vs_baseline = _ratio(t.p99_ms, base.p99_ms)
            t.cpu_vs_baseline = _ratio(t.cpu_us_per_token, base.cpu_us_per_token)
    for i in idle_results:
        ibase = next((b for b in idle_results if b.row == "baseline" and b.streams == i.streams), None)
        if ibase is not None:
            i.cpu_vs_baseline = _ratio(i.server_cpu_pct, ibase.server_cpu_pct)
            i.rss_vs_baseline = _ratio(i.rss_per_connection_kb, ibase.rss_per_connection_kb)
    if args.idle:
        print_idle(idle_results, table)
    else:
        print_tokens(token_results, table)
        capacity = print_capacity(token_results, args.rate, table)
        for t in token_results:  # what the Prometheus metrics cost: each row with them against the same without
            off = next((b for b in token_results if f"{b.row}-metrics" == t.row and b.streams == t.streams), None)
            if off is not None:
                on_cpu, off_cpu = t.cpu_us_per_token, off.cpu_us_per_token
                print(
                    f"metrics on / off ({off.row}, S={t.streams}): server CPU per token {_x(_ratio(on_cpu, off_cpu))}"
                    f" ({on_cpu:.1f} / {off_cpu:.1f} us), p99 {t.p99_ms:.1f} / {off.p99_ms:.1f} ms",
                    file=table,
                )
    if args.json:
        document = {
            "mode": "idle" if args.idle else "tokens",
            "tokens": args.tokens,
            "rate": args.rate,
            "stagger": args.stagger,
            "window": args.window,
            "gc_threshold": args.gc_threshold,
            "python": sys.version.split()[0],
            "results": [asdict(r) for r in (idle_results if args.idle else token_results)],
        }
        if not args.idle:
            document["capacity"] = capacity
        print(json.dumps(document, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", help="concurrent streams (default 100 1000; idle 10000)")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per stream")
    parser.add_argument("--rate", type=float, default=20.0, help="tokens per second per stream")
    parser.add_argument("--stagger", type=float, default=1.0, help="seconds over which the streams start")
    parser.add_argument("--only", nargs="+", choices=ROWS, help="rows to run")
    parser.add_argument("--profile", metavar="DIR", help="py-spy each Python server through its run into DIR")
    parser.add_argument("--peers", action="store_true", help="add the peers' rows (rs-python, rs-node) to the rows")
    parser.add_argument("--idle", action="store_true", help="quiet running streams: idle CPU and RSS per connection")
    parser.add_argument("--window", type=float, default=15.0, help="idle: seconds of quiet measured")
    parser.add_argument("--json", action="store_true", help="every figure as JSON on stdout (the table to stderr)")
    parser.add_argument("--shared", action="store_true", help="idle: every reader reads one quiet stream")
    parser.add_argument(
        "--gc-threshold", type=int, nargs="+", metavar="N", help="gc.set_threshold(...) in every server process"
    )
    parser.add_argument("--serve", choices=ROWS, help=argparse.SUPPRESS)
    parser.add_argument("--cluster", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="r", help=argparse.SUPPRESS)
    parser.add_argument("--connect-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        size = args.streams[0] if args.streams else 1
        serving = serve(
            args.serve,
            args.idle,
            size,
            args.tokens,
            args.rate,
            args.stagger,
            args.redis_url,
            args.cluster,
            args.gc_threshold,
        )
        asyncio.run(serving)
    elif args.client:
        size = args.streams[0] if args.streams else 1
        asyncio.run(client(args.client, args.prefix, size, args.idle, args.connect_timeout, args.shared))
    else:
        asyncio.run(main(args))
