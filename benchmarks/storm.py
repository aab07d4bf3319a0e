"""The reconnect storm of a rolling deploy: a server process holding S live chats is stopped, and every one of its
clients resumes on another process at once, each with its ``Last-Event-ID``.

Four processes and a private redis-server (never 6379): server A and server B (``--serve``, ``web.run_app`` with
``setup(app, Streamer(RedisStore.from_url(url), grace_period=...))`` and one ``resumable_handler``, as a deployment
runs them), the readers (``--client``, one process holding every connection) and this driver.

1. The readers open S streams on A (the first request of each starts its producer). Each producer yields ``ready``,
   then, after the driver's go, one token every ``1/--rate`` s (default 20/s) for ``--tokens`` tokens on an absolute
   schedule, starts spread over ``--stagger`` s. A token's data is ``tok <index> <time.time_ns() at the yield>``: the
   readers check every index arrives exactly once (duplicates, gaps) and take the yield-to-receipt latency.
2. Steady state, ``--steady`` s: token latency on A, A's CPU and RSS, Redis commands per second.
3. The driver sends A SIGTERM. A's open responses end (``setup``'s shutdown), its producers go on through the grace
   period (set long enough for every answer to finish) and A exits. Every reader whose response ended reconnects to B
   at once (a lockstep storm: the worst case; ``--spread MS`` spreads the reconnects uniformly over MS instead, as
   clients that jitter their ``retry:`` wait would) with ``Last-Event-ID``, and reads to the terminal event.

Figures, per S in ``--streams``, beside the same run's steady state:
  reconnect      time from the SIGTERM to each reader's first event on B (a missed or a live one): p50, p99, max
  dups, gaps     tokens received twice, tokens never received (both must be 0)
  B p99          token latency on B while the storm lasts (SIGTERM to the last reader's first event on B: it holds the
                 replayed tokens, yielded while their reader was away) and after it; ``recovered`` is the time from
                 the storm's end until every later half second's p99 is under 50 ms
  B RSS, CPU     B's peak RSS (sampled every 50 ms) from its RSS before the storm; B's CPU during the storm
  cmds/reader    the commands B sent to Redis from the SIGTERM to the storm's end, per resumed reader (B runs no
                 producer, so this is all the resumes' cost; a script call counts one), by name; beside it Redis's own
                 count (INFO commandstats, commands run inside scripts too) beyond the steady state's rate
  ends           the terminal events readers got (every producer on A must end ``done``) and A's exit code
  overflows      the kernel's ListenOverflows during the storm (machine-wide: other processes count too)

The baseline is the steady state of the same run: the ratios are B's token p99 during and after the storm / the
steady p99 on A, and B's peak RSS / A's steady RSS. Goals (issue 26): S = 1,000 reconnect p99 <= 1 s, S = 2,000
p99 <= 2 s, 0 duplicates, 0 gaps, every producer ``done``, B's p99 under 50 ms within 2 s of the storm, <= 3 Redis
commands per resumed reader.

    python benchmarks/storm.py [--streams 1000 2000] [--tokens 300] [--steady 3] [--backlog 4096] [--spread 0]

Each row also splits the reconnect into its parts (connected to B, B's response head, the first event) and names its
slowest readers; ``--profile FILE`` records B with py-spy from the SIGTERM on (collapsed stacks). Every process
shares the machine: on a loaded one the steady state is already slow, and the storm's figures say more beside it
than alone.

``--json`` prints every figure as one JSON document on stdout (the table then goes to stderr). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
import time
from array import array
from collections.abc import AsyncIterator
from typing import Any

import _bench
from _bench import percentile
from fleet import Proc, stdin_lines

TERMINALS = ("done", "error", "cancelled", "lost")
# What a resume can make Redis run (the state read, the read script and what it runs, the watch's subscriptions, a
# script loaded again); the excess of the others (the producers' renewals, say) is the steady rate's noise.
READER_COMMANDS = frozenset(
    ("hmget", "evalsha", "xrange", "subscribe", "unsubscribe", "ssubscribe", "sunsubscribe", "script|load")
)
GOAL_P99_S = {1000: 1.0, 2000: 2.0}  # reconnect p99 goals by S
RECOVERED_MS = 50.0  # B's token p99 is back under this
BUCKET_NS = 500_000_000  # B's token latency is taken per half second after the SIGTERM
WARM = 0.5  # seconds after the last producer's start before the steady window opens


# -- the server processes -------------------------------------------------------------------------------------------


def serve(args: Any) -> None:
    """One server: prints ``PORT <n>``, serves ``/s/{stream_id}`` until SIGTERM (``web.run_app``'s handling)."""
    from aiohttp import web

    from resumable_sse import RedisStore, Streamer, resumable_handler, setup

    _bench.raise_fd_limit()
    go = asyncio.Event()
    start = [0.0]
    streams, tokens, rate, stagger = args.streams[0], args.tokens, args.rate, args.stagger

    async def paced(request: web.Request) -> AsyncIterator[str]:
        index = int(request.match_info["stream_id"].rpartition("-")[2])
        yield "ready"
        await go.wait()
        loop = asyncio.get_running_loop()
        begin = start[0] + stagger * index / streams
        for i in range(tokens):
            delay = begin + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield f"tok {i} {time.time_ns()}"

    async def start_tokens(_request: web.Request) -> web.Response:
        start[0] = asyncio.get_running_loop().time()
        go.set()
        return web.json_response({"start_ns": time.time_ns()})

    from redis.asyncio import Connection

    sent: dict[str, int] = {}

    class Counting(Connection):
        """Counts the commands this process sends to Redis, by name (a pipeline's one by one; a script call is one)."""

        def pack_command(self, *args: Any) -> list[bytes]:
            head = args[0]
            name = (head.decode() if isinstance(head, bytes | bytearray) else str(head)).split()[0].lower()
            sent[name] = sent.get(name, 0) + 1
            return super().pack_command(*args)

    async def commands(_request: web.Request) -> web.Response:
        return web.json_response(sent)

    app = web.Application()
    store = RedisStore.from_url(args.redis_url, connection_class=Counting)
    setup(app, Streamer(store, grace_period=args.grace))
    app.router.add_get("/s/{stream_id}", resumable_handler(paced))
    app.router.add_post("/control/go", start_tokens)
    app.router.add_get("/control/commands", commands)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    web.run_app(app, sock=sock, backlog=args.backlog, print=None, shutdown_timeout=args.grace)


# -- the reader process ---------------------------------------------------------------------------------------------


class Stream:
    """One stream as its reader sees it across its connections (to A, then to B)."""

    __slots__ = (
        "b_attempt_ns",
        "b_connected_ns",
        "b_head_ns",
        "dropped_ns",
        "dups",
        "end",
        "first_b_ns",
        "first_b_token",
        "gaps",
        "index",
        "last_id",
        "next",
        "on_b",
        "ready",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.last_id = b""
        self.next = 0  # the token index expected next
        self.dups = 0
        self.gaps = 0
        self.dropped_ns = 0  # when the response from A ended
        self.first_b_ns = 0  # when the first event arrived from B
        self.end = ""  # the terminal event's type
        self.ready = False
        self.on_b = False
        self.b_attempt_ns = 0  # the reader began to connect to B (after its spread wait, if any)
        self.b_connected_ns = 0  # B accepted the connection (of the last try)
        self.b_head_ns = 0  # B's response head arrived
        self.first_b_token = -1  # the index of the first token B sent (-1: none, the first event was another)


class Readers:
    def __init__(self, args: Any) -> None:
        self.args = args
        self.streams = [Stream(index) for index in range(args.streams[0])]
        self.recv_ns = array("q")  # every token: when it arrived, its latency, and whether B sent it
        self.latency_ns = array("q")
        self.from_b = array("b")
        self.ready = 0
        self.failed = 0  # a connection refused or answered with another status than 200
        self.connect_errors = 0  # reconnects to B that failed and were tried again
        self.drops_on_b = 0  # responses from B that ended before their terminal event
        self.other_events: dict[str, int] = {}  # events neither a token nor a terminal (a reset would be one)
        self.resumed = 0  # readers with a first event on B
        self.over = 0  # readers with a terminal event, or failed
        self.all_ready = asyncio.Event()
        self.stormed = asyncio.Event()
        self.all_over = asyncio.Event()

    def count(self) -> None:
        size = len(self.streams)
        if self.ready + self.failed >= size:
            self.all_ready.set()
        if self.resumed + self.failed >= size:
            self.stormed.set()
        if self.over >= size:
            self.all_over.set()

    def connect(self, stream: Stream, port: int, delay: float = 0.0) -> None:
        asyncio.get_running_loop().create_task(self._connect(stream, port, delay))

    async def _connect(self, stream: Stream, port: int, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        if stream.on_b and not stream.b_attempt_ns:
            stream.b_attempt_ns = time.time_ns()
        loop = asyncio.get_running_loop()
        for _attempt in range(100):
            try:
                await loop.create_connection(lambda: Connection(self, stream), "127.0.0.1", port)
                return
            except OSError:
                self.connect_errors += 1
                await asyncio.sleep(0.1)
        self.failed += 1
        self.over += 1
        self.count()

    def block(self, stream: Stream, on_b: bool, block: bytes, now: int) -> None:
        """One event block (the lines between two blank lines; chunk framing lines are ignored)."""
        event_id = b""
        for line in block.split(b"\n"):
            if line.startswith(b"id: "):
                event_id = line[4:]
                continue
            if line.startswith(b"data: tok "):
                _, index_text, yielded = line.split(b" ", 3)[1:]
                index = int(index_text)
                if on_b and not stream.first_b_ns:
                    stream.first_b_token = index
                if index < stream.next:
                    stream.dups += 1
                else:
                    stream.gaps += index - stream.next
                    stream.next = index + 1
                self.recv_ns.append(now)
                self.latency_ns.append(now - int(yielded))
                self.from_b.append(on_b)
            elif line.startswith(b"data: ready"):
                if not stream.ready:
                    stream.ready = True
                    self.ready += 1
                    self.count()
            elif line.startswith(b"event: "):
                kind = line[7:].decode()
                if kind not in TERMINALS:
                    self.other_events[kind] = self.other_events.get(kind, 0) + 1
                elif not stream.end:
                    stream.end = kind
                    self.over += 1
                    self.count()
            else:
                continue
            if on_b and not stream.first_b_ns:
                stream.first_b_ns = now
                self.resumed += 1
                self.count()
        if event_id:
            stream.last_id = event_id

    def ended(self, stream: Stream, on_b: bool) -> None:
        """A response ended before its terminal event: resume on B."""
        if stream.end:
            return
        if on_b:
            self.drops_on_b += 1
        else:
            stream.dropped_ns = time.time_ns()
        stream.on_b = True
        spread = self.args.spread / 1000
        self.connect(stream, self.args.b_port, random.uniform(0, spread) if spread else 0.0)


class Connection(asyncio.Protocol):
    """One SSE response, read with a bare protocol (cheap: the reader process must not be the bottleneck)."""

    def __init__(self, readers: Readers, stream: Stream) -> None:
        self.readers = readers
        self.stream = stream
        self.on_b = stream.on_b
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.tail = b""
        self.open = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        resume = f"Last-Event-ID: {self.stream.last_id.decode()}\r\n" if self.stream.last_id else ""
        path = f"/s/{self.readers.args.prefix}-{self.stream.index}"
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{resume}\r\n"
        transport.write(request.encode())
        if self.on_b:
            self.stream.b_connected_ns = time.time_ns()

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if not self.open:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 200 "):
                self.readers.failed += 1
                self.readers.over += 1
                self.readers.count()
                self.close(resume=False)
                return
            data, self.head, self.open = self.head[end + 4 :], b"", True
            if self.on_b:
                self.stream.b_head_ns = now
        # Whole event blocks only; a block is never split by the chunked framing (each server write is one chunk of
        # whole events), whose size lines the block parser ignores.
        buffer = self.tail + data
        cut = buffer.rfind(b"\n\n") + 2
        if cut < 2:
            self.tail = buffer
        else:
            self.tail = buffer[cut:]
            for block in buffer[:cut].split(b"\n\n"):
                if block:
                    self.readers.block(self.stream, self.on_b, block, now)
        if b"\n0\r\n\r\n" in buffer or self.stream.end:  # the last chunk: the response is over
            self.close(resume=True)

    def close(self, resume: bool) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        if resume:
            self.readers.ended(self.stream, self.on_b)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(resume=True)


def _p(values: list[int], fraction: float) -> float:
    return percentile(values, fraction) / 1e6


def _latency(values: list[int]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_ms": _p(ordered, 0.5), "p99_ms": _p(ordered, 0.99), "max_ms": _p(ordered, 1.0), "n": len(ordered)}


def report(readers: Readers, sigterm_ns: int, steady_from_ns: int) -> dict[str, Any]:
    """Every figure the readers can give, from what they recorded."""
    streams = readers.streams
    storm_end = max((s.first_b_ns for s in streams), default=0)
    steady, during, after = [], [], []
    buckets: dict[int, list[int]] = {}
    for recv, latency, on_b in zip(readers.recv_ns, readers.latency_ns, readers.from_b, strict=True):
        if not on_b:
            if steady_from_ns <= recv < sigterm_ns:
                steady.append(latency)
            continue
        (during if recv <= storm_end else after).append(latency)
        buckets.setdefault((recv - sigterm_ns) // BUCKET_NS, []).append(latency)
    slow = [b for b, values in buckets.items() if _p(sorted(values), 0.99) > RECOVERED_MS]
    # None: B's last half second of tokens was still slow (not recovered before the answers ended)
    recovered_ns: int | None = max(0, (max(slow) + 1) * BUCKET_NS + sigterm_ns - storm_end) if slow else 0
    if slow and max(slow) == max(buckets):
        recovered_ns = None
    reconnect = sorted(s.first_b_ns - sigterm_ns for s in streams if s.first_b_ns)
    served = sorted(s.first_b_ns - s.b_attempt_ns for s in streams if s.first_b_ns and s.b_attempt_ns)
    connected = sorted(s.b_connected_ns - sigterm_ns for s in streams if s.b_connected_ns)
    heads = sorted(s.b_head_ns - s.b_connected_ns for s in streams if s.b_head_ns)
    firsts = sorted(s.first_b_ns - s.b_head_ns for s in streams if s.first_b_ns and s.b_head_ns)
    slowest = sorted((s for s in streams if s.first_b_ns), key=lambda s: s.first_b_ns)[-5:]
    ends: dict[str, int] = {}
    for s in streams:
        ends[s.end or "none"] = ends.get(s.end or "none", 0) + 1
    return {
        "ready": readers.ready,
        "failed": readers.failed,
        "resumed": len(reconnect),
        "connect_errors": readers.connect_errors,
        "drops_on_b": readers.drops_on_b,
        "reconnect_p50_s": _p(reconnect, 0.5) / 1000,
        "reconnect_p99_s": _p(reconnect, 0.99) / 1000,
        "reconnect_max_s": _p(reconnect, 1.0) / 1000,
        # the reconnect's parts: connected to B (from the SIGTERM), B's response head (from the connection), the
        # first event (from the head): p99 of each, seconds
        # from the reader's first try to connect to B to its first event (equal to reconnect without --spread)
        "served_p50_s": _p(served, 0.5) / 1000,
        "served_p99_s": _p(served, 0.99) / 1000,
        "connected_p99_s": _p(connected, 0.99) / 1000,
        "head_p99_s": _p(heads, 0.99) / 1000,
        "first_after_head_p99_s": _p(firsts, 0.99) / 1000,
        "slowest": [
            {
                "reconnect_s": (s.first_b_ns - sigterm_ns) / 1e9,
                "connected_s": (s.b_connected_ns - sigterm_ns) / 1e9,
                "head_s": (s.b_head_ns - sigterm_ns) / 1e9,
                "first_token": s.first_b_token,
                "next_token": s.next,
                "end": s.end,
            }
            for s in slowest
        ],
        "dropped_max_s": max((s.dropped_ns - sigterm_ns for s in streams if s.dropped_ns), default=0) / 1e9,
        "storm_s": max(0, storm_end - sigterm_ns) / 1e9,
        "duplicates": sum(s.dups for s in streams),
        # tokens skipped, and the tokens missing at the end of a stream that ended done (one that ended otherwise is
        # counted in ends: its producer was stopped before its last token)
        "gaps": sum(s.gaps + (readers.args.tokens - s.next if s.end == "done" else 0) for s in streams),
        "ends": ends,
        "other_events": readers.other_events,
        "steady": _latency(steady),
        "during": _latency(during),
        "after": _latency(after),
        "recovered_s": None if recovered_ns is None else recovered_ns / 1e9,
        "buckets_p99_ms": {str(b * BUCKET_NS / 1e9): _p(sorted(v), 0.99) for b, v in sorted(buckets.items())},
        "cpu_s": sum(os.times()[:2]),
    }


async def client(args: Any) -> None:
    """Open every stream on A, print ``CONNECTED``; on ``STORM <sigterm ns> <steady from ns> <deadline ns>`` print
    ``STORMED <ns>`` once every reader has its first event on B, then the JSON report once every stream ended."""
    _bench.raise_fd_limit()
    loop = asyncio.get_running_loop()
    commands = stdin_lines(loop)
    readers = Readers(args)
    gate = asyncio.Semaphore(256)  # connects in flight while the streams open on A (not during the storm)

    async def open_one(stream: Stream) -> None:
        async with gate:
            await readers._connect(stream, args.a_port, 0.0)

    opened = time.monotonic()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(open_one(s) for s in readers.streams)), args.connect_timeout)
        await asyncio.wait_for(readers.all_ready.wait(), args.connect_timeout)
    print(f"CONNECTED {readers.ready} {readers.failed} {time.monotonic() - opened:.2f}", flush=True)
    command = (await commands.get()).split()
    if not command:
        return
    sigterm_ns, steady_from_ns, deadline_ns = map(int, command[1:4])
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(readers.stormed.wait(), max(0.0, (deadline_ns - time.time_ns()) / 1e9))
    print(f"STORMED {time.time_ns() if readers.stormed.is_set() else 0} {sum(os.times()[:2])}", flush=True)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(readers.all_over.wait(), max(0.0, (deadline_ns - time.time_ns()) / 1e9))
    print(json.dumps(report(readers, sigterm_ns, steady_from_ns)), flush=True)


# -- the driver -----------------------------------------------------------------------------------------------------


def command_counts(port: int) -> dict[str, int]:
    """Calls per command so far (INFO commandstats; commands inside Lua scripts counted), bookkeeping left out."""
    import redis

    with redis.Redis(port=port, socket_timeout=10) as client:
        stats = client.info("commandstats")
    return {name[8:]: stat["calls"] for name, stat in stats.items() if name not in _bench.IGNORED_COMMANDS}


def listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full (machine-wide)."""
    with open("/proc/net/netstat") as netstat:
        names, values = [line.split() for line in netstat if line.startswith("TcpExt:")][:2]
    return int(values[names.index("ListenOverflows")])


class Sampler:
    """A process's RSS, sampled every 50 ms while it runs: the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = _bench.rss_bytes(pid)
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            while True:
                self.peak = max(self.peak, _bench.rss_bytes(self.pid))
                await asyncio.sleep(0.05)

    async def stop(self) -> int:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        return self.peak


async def start(name: str, *args: str) -> Proc:
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    return Proc(process, name)


async def finish(proc: Proc, timeout: float) -> int | None:
    """The exit code of a process that was told to stop, once it has exited (None: it did not within ``timeout``)."""
    try:
        return await asyncio.wait_for(proc.process.wait(), timeout)
    except asyncio.TimeoutError:
        return None


async def stop(proc: Proc, timeout: float) -> int:
    """SIGTERM (if it still runs), then wait ``timeout`` s, then kill: its exit code."""
    if proc.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.process.wait(), timeout)
    except asyncio.TimeoutError:
        proc.process.kill()
        return await proc.process.wait()


async def storm(args: Any, redis: Any, size: int, run: int) -> dict[str, Any]:
    """One run at S = ``size``: steady state on A, SIGTERM, the storm on B, to every stream's end."""
    from aiohttp import ClientSession

    await asyncio.to_thread(flush, redis.port)
    common = [
        *("--streams", str(size), "--tokens", str(args.tokens), "--rate", str(args.rate)),
        *("--stagger", str(args.stagger), "--redis-url", redis.url),
        *("--grace", str(grace(args)), "--backlog", str(args.backlog)),
    ]
    procs: list[Proc] = []
    try:
        servers = []
        for name in ("A", "B"):
            procs.append(await start(f"server {name}", "--serve", *common))
            line = await procs[-1].line(30)
            if not line.startswith("PORT "):
                raise SystemExit(f"server {name}: unexpected {line!r}")
            servers.append(int(line.split()[1]))
        a, b = procs
        connect_timeout = 30 + size / 50
        reader = await start(
            "readers", "--client", *common, "--a-port", str(servers[0]), "--b-port", str(servers[1]),
            "--prefix", f"s{run}", "--spread", str(args.spread), "--connect-timeout", str(connect_timeout),
        )  # fmt: skip
        procs.append(reader)
        connected = (await reader.line(2 * connect_timeout + 30)).split()
        if connected[0] != "CONNECTED" or int(connected[1]) < size:
            raise SystemExit(f"readers: not all connected to A: {connected}")
        async with ClientSession() as session, session.post(f"http://127.0.0.1:{servers[0]}/control/go") as reply:
            start_ns = (await reply.json())["start_ns"]
        await asyncio.sleep(max(0.0, (start_ns - time.time_ns()) / 1e9 + args.stagger + WARM))
        steady_from_ns, wall0 = time.time_ns(), time.monotonic()
        counts0, a_cpu0 = await asyncio.to_thread(command_counts, redis.port), _bench.cpu_seconds(a.process.pid)
        await asyncio.sleep(args.steady)
        counts1, wall1 = await asyncio.to_thread(command_counts, redis.port), time.monotonic()
        a_cpu1, a_rss = _bench.cpu_seconds(a.process.pid), _bench.rss_bytes(a.process.pid)
        b_rss0, b_cpu0 = _bench.rss_bytes(b.process.pid), _bench.cpu_seconds(b.process.pid)
        overflows0 = listen_overflows()
        sampler = Sampler(b.process.pid)
        profiler = None
        if args.profile:  # py-spy on B through the storm (a diagnosis: it costs B some CPU)
            command = ["py-spy", "record", "-p", str(b.process.pid), "-o", args.profile, "--format", "raw"]
            profiler = await asyncio.create_subprocess_exec(*command, "-d", "20", stderr=asyncio.subprocess.DEVNULL)
        b_sent0 = await sent_by(servers[1])
        client_cpu0, redis_cpu0 = _bench.cpu_seconds(reader.process.pid), _bench.cpu_seconds(redis.pid)
        sigterm_ns, wall2 = time.time_ns(), time.monotonic()
        a.process.send_signal(signal.SIGTERM)
        left = args.tokens / args.rate + args.stagger + 30
        await reader.send(f"STORM {sigterm_ns} {steady_from_ns} {sigterm_ns + int(left * 1e9)}")
        stormed_line = (await reader.line(left + 10)).split()
        stormed, client_cpu1 = int(stormed_line[1]), float(stormed_line[2])
        counts2, wall3 = await asyncio.to_thread(command_counts, redis.port), time.monotonic()
        b_cpu1, overflows1 = _bench.cpu_seconds(b.process.pid), listen_overflows()
        redis_cpu1 = _bench.cpu_seconds(redis.pid)
        b_sent1 = await sent_by(servers[1])
        out = json.loads(await reader.line(left + 10))
        wall4, b_cpu2 = time.monotonic(), _bench.cpu_seconds(b.process.pid)
        b_peak = await sampler.stop()
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            await profiler.wait()
        a_exit = await finish(a, grace(args) + 30)
    finally:
        for proc in reversed(procs):
            await stop(proc, 10)
    steady_rate = {name: (counts1.get(name, 0) - counts0.get(name, 0)) / (wall1 - wall0) for name in counts1}
    excess = {
        name: calls - counts1.get(name, 0) - steady_rate.get(name, 0.0) * (wall3 - wall2)
        for name, calls in counts2.items()
    }
    excess = {name: round(value / size, 2) for name, value in excess.items() if value / size >= 0.05}
    storm_s = max(1e-3, wall3 - wall2) if stormed else None
    b_sent = {name: round((calls - b_sent0.get(name, 0)) / size, 2) for name, calls in b_sent1.items()}
    b_sent = {name: per for name, per in b_sent.items() if per >= 0.01}
    return {
        "streams": size,
        **{key: value for key, value in out.items() if key != "cpu_s"},
        "stormed": bool(stormed),
        "a_exit": a_exit,
        "a_steady_cpu_pct": 100 * (a_cpu1 - a_cpu0) / (wall1 - wall0),
        "a_steady_rss_mb": a_rss / 2**20,
        "steady_commands_per_s": sum(steady_rate.values()),
        "b_rss_before_mb": b_rss0 / 2**20,
        "b_rss_peak_mb": b_peak / 2**20,
        "b_storm_cpu_pct": None if storm_s is None else 100 * (b_cpu1 - b_cpu0) / storm_s,
        # the readers' process and Redis in the storm: near 100 % would make them, not B, the bottleneck
        "client_storm_cpu_pct": None if storm_s is None else 100 * (client_cpu1 - client_cpu0) / storm_s,
        "redis_storm_cpu_pct": None if storm_s is None else 100 * (redis_cpu1 - redis_cpu0) / storm_s,
        "b_after_cpu_pct": 100 * (b_cpu2 - b_cpu1) / max(1e-3, wall4 - wall3),
        # what B sent to Redis in the storm (B runs no producer: all of it is the resumes' cost), per resumed reader
        "commands_per_reader": round(sum(b_sent.values()), 2),
        "commands_per_reader_by_name": dict(sorted(b_sent.items(), key=lambda item: -item[1])),
        # Redis's own count beyond the steady state's rate (commands inside scripts included; the producers' appends
        # use the same commands, so this is approximate when the storm lasts long)
        "redis_counted_per_reader": round(sum(v for name, v in excess.items() if name in READER_COMMANDS), 2),
        "redis_counted_per_reader_by_name": dict(sorted(excess.items(), key=lambda item: -item[1])),
        "listen_overflows": overflows1 - overflows0,
        "during_vs_steady": _ratio(out["during"]["p99_ms"], out["steady"]["p99_ms"]),
        "after_vs_steady": _ratio(out["after"]["p99_ms"], out["steady"]["p99_ms"]),
        "rss_vs_steady": b_peak / a_rss,
    }


async def sent_by(port: int) -> dict[str, int]:
    """The commands a server process sent to Redis so far, by name."""
    from aiohttp import ClientSession

    async with ClientSession() as session, session.get(f"http://127.0.0.1:{port}/control/commands") as reply:
        return dict(await reply.json())


def _ratio(value: float, base: float) -> float | None:
    return value / base if base else None


def flush(port: int) -> None:
    import redis

    with redis.Redis(port=port, socket_timeout=10) as client:
        client.flushall()


def grace(args: Any) -> float:
    """The producers' grace period on A: long enough for every answer to finish."""
    return args.tokens / args.rate + args.stagger + 20


def verdict(row: dict[str, Any]) -> str:
    clean = row["duplicates"] == 0 and row["gaps"] == 0 and row["ends"] == {"done": row["streams"]}
    goal = GOAL_P99_S.get(row["streams"])
    timely = goal is None or (row["stormed"] and row["reconnect_p99_s"] <= goal)
    recovered = row["recovered_s"] is not None and row["recovered_s"] <= 2
    return _bench.verdict(clean and timely and recovered and row["commands_per_reader"] <= 3)


def print_rows(rows: list[dict[str, Any]], out: Any) -> None:
    print(
        f"{'S':>6} {'reconnect p50/p99/max s':>24} {'dups':>5} {'gaps':>5} {'steady p99':>10} {'B p99 storm':>11} "
        f"{'after':>8} {'recovered':>9} {'B RSS MB':>12} {'B CPU':>6} {'cmds/rdr':>8} {'overfl':>6} {'goals':>6}",
        file=out,
    )
    for r in rows:
        reconnect = f"{r['reconnect_p50_s']:.2f}/{r['reconnect_p99_s']:.2f}/{r['reconnect_max_s']:.2f}"
        cpu = "-" if r["b_storm_cpu_pct"] is None else f"{r['b_storm_cpu_pct']:.0f}%"
        print(
            f"{r['streams']:>6} {reconnect:>24} {r['duplicates']:>5} {r['gaps']:>5} {r['steady']['p99_ms']:8.1f}ms "
            f"{r['during']['p99_ms']:9.0f}ms {r['after']['p99_ms']:6.1f}ms {_s(r['recovered_s']):>9} "
            f"{r['b_rss_before_mb']:5.0f}->{r['b_rss_peak_mb']:<5.0f} {cpu:>6} {r['commands_per_reader']:8.2f} "
            f"{r['listen_overflows']:>6} {verdict(r):>6}",
            file=out,
        )
    for r in rows:
        by_name = ", ".join(f"{name} {calls}" for name, calls in r["commands_per_reader_by_name"].items())
        counted = ", ".join(f"{name} {calls}" for name, calls in r["redis_counted_per_reader_by_name"].items())
        lines = [
            f"ends {r['ends']}, A's exit code {r['a_exit']}; {r['resumed']} readers resumed on B, "
            f"{r['connect_errors']} connects retried, {r['failed']} failed, {r['drops_on_b']} dropped by B",
            f"A ended its responses within {r['dropped_max_s']:.2f} s of the SIGTERM; reconnect p99 in parts: "
            f"connected {r['connected_p99_s']:.2f} s after the SIGTERM, head {r['head_p99_s']:.2f} s after connecting, "
            f"first event {r['first_after_head_p99_s']:.2f} s after the head; from the first try to connect to B to "
            f"the first event p50 {r['served_p50_s']:.2f} s, p99 {r['served_p99_s']:.2f} s",
            f"steady state: A {r['a_steady_cpu_pct']:.0f}% CPU, {r['a_steady_rss_mb']:.0f} MB; Redis "
            f"{r['steady_commands_per_s']:.0f} commands/s; B after the storm {r['b_after_cpu_pct']:.0f}% CPU",
            f"in the storm: the readers' process {_pct(r['client_storm_cpu_pct'])} CPU, "
            f"Redis {_pct(r['redis_storm_cpu_pct'])}",
            f"B p99 / steady p99: storm {_x(r['during_vs_steady'])}, after {_x(r['after_vs_steady'])}; "
            f"B peak RSS / A steady RSS {r['rss_vs_steady']:.2f}x",
            f"commands B sent to Redis per resumed reader: {by_name or 'none'}; Redis's count beyond the steady "
            f"rate (inside scripts too): {counted}",
        ]
        for line in lines:
            print(f"  S={r['streams']}: {line}", file=out)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f}s"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.1f}x"


async def main(args: Any) -> None:
    limit = _bench.raise_fd_limit()
    if max(args.streams) * 2 + 500 > limit:
        raise SystemExit(f"{max(args.streams)} streams need more file descriptors than the limit ({limit})")
    if args.tokens / args.rate < args.stagger + WARM + args.steady + 3:
        raise SystemExit("--tokens too few: the answers must run at least 3 s past the steady window")
    output = _bench.Output(args.json)
    output.print(
        f"storm: {args.tokens} tokens at {args.rate:g}/s, starts over {args.stagger:g} s, steady {args.steady:g} s, "
        f"backlog {args.backlog}, reconnects {'at once' if not args.spread else f'spread over {args.spread} ms'}; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    redis = _bench.start_redis()
    rows = []
    try:
        for run, size in enumerate(args.streams):
            output.print(f"  running S={size} ...")
            rows.append(await storm(args, redis, size, run))
    finally:
        redis.close()
    for row in rows:
        row["verdict"] = verdict(row)
    print_rows(rows, output.table)
    output.done(
        "storm",
        {
            "tokens": args.tokens,
            "rate": args.rate,
            "stagger": args.stagger,
            "steady": args.steady,
            "backlog": args.backlog,
            "spread_ms": args.spread,
            "results": rows,
        },
    )


if __name__ == "__main__":
    parser = _bench.parser(__doc__)
    parser.add_argument("--streams", type=int, nargs="+", default=[1000], help="live chats on A (default 1000)")
    parser.add_argument("--tokens", type=int, default=300, help="tokens per answer (default 300: 15 s)")
    parser.add_argument("--rate", type=float, default=20.0, help="tokens per second per stream")
    parser.add_argument("--stagger", type=float, default=1.0, help="seconds over which the producers start")
    parser.add_argument("--steady", type=float, default=3.0, help="seconds of steady state measured before SIGTERM")
    parser.add_argument("--backlog", type=int, default=4096, help="the servers' listen backlog (aiohttp's is 128)")
    parser.add_argument("--spread", type=int, default=0, help="ms over which readers spread their reconnects")
    parser.add_argument("--profile", help="py-spy record B from the SIGTERM on, to this file (collapsed stacks)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--grace", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--a-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--b-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="s", help=argparse.SUPPRESS)
    parser.add_argument("--connect-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve:
        serve(arguments)
    elif arguments.client:
        asyncio.run(client(arguments))
    else:
        asyncio.run(main(arguments))
