"""One producer, 100,000 small tokens, one reader over a real loopback socket in another process.

Rows (all measured in the same run, on the same server process):
  baseline   plain aiohttp-sse: one ``send`` per event, no log (the reference the ratios are taken against)
  memory     resumable_handler on the embedded memory store
  (more rows: see ROWS below; each row is a route on the one server)

The last lines compare the SyncStreamer row with the memory row (a blocking producer against an async one), and
each store's row with Prometheus metrics on (``resumable_sse.prometheus``, the ``prometheus`` extra) with the same row
without them: what the metrics cost (``--only memory`` runs just the two memory rows).

For each row it prints events/s (first byte of the request to the terminal event) and the first-event latency,
median of ``--repeat`` runs, and the ratio to the baseline.

    python benchmarks/single_stream.py [--events 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp_sse import sse_response

from resumable_sse import MemoryStore, Observer, Streamer, SyncStreamer, resumable_handler

TOKEN = "tok "


@dataclass
class Row:
    """A benchmark row: a label, the route prefix it is served under, and how to add that route to the app."""

    label: str
    prefix: str
    install: Callable[[web.Application, int], Awaitable[None]]


async def _install_baseline(app: web.Application, events: int) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        async with sse_response(request) as response:
            for _ in range(events):
                await response.send(TOKEN)
            await response.send("{}", event="done")
        return response

    app.router.add_get("/baseline/{stream_id}", handler)


def _tokens(events: int) -> Callable[[web.Request], AsyncIterator[str]]:
    async def produce(_request: web.Request) -> AsyncIterator[str]:
        for _ in range(events):
            yield TOKEN

    return produce


def _metrics() -> Observer:
    """Prometheus metrics on a registry of their own (needs the prometheus extra)."""
    from prometheus_client import CollectorRegistry

    from resumable_sse.prometheus import PrometheusMetrics

    return PrometheusMetrics(CollectorRegistry())


async def _install_memory(app: web.Application, events: int, *, metrics: bool = False) -> None:
    streamer = Streamer(MemoryStore(max_events=events + 10), observer=_metrics() if metrics else None)
    prefix = "/memory-metrics" if metrics else "/memory"
    app.router.add_get(prefix + "/{stream_id}", resumable_handler(_tokens(events), streamer=streamer))
    app.on_cleanup.append(lambda _app: streamer.close())


async def _install_sync(app: web.Application, events: int) -> None:
    """SyncStreamer.publish of a plain generator, run in a thread; readers served by the same handler."""
    streamer = Streamer(MemoryStore(max_events=events + 10))
    sync = SyncStreamer(streamer)  # made on the server's loop: shares it
    loop = asyncio.get_running_loop()

    def not_claimed(_request: web.Request) -> AsyncIterator[str]:
        raise AssertionError("the stream should have been claimed by SyncStreamer.publish")

    serve = resumable_handler(not_claimed, streamer=streamer)

    async def handler(request: web.Request) -> web.StreamResponse:
        claimed = asyncio.Event()

        def tokens() -> Iterator[str]:
            loop.call_soon_threadsafe(claimed.set)  # the first next() comes after the claim
            for _ in range(events):
                yield TOKEN

        threading.Thread(target=sync.publish, args=(request.match_info["stream_id"], tokens()), daemon=True).start()
        await claimed.wait()
        return await serve(request)

    app.router.add_get("/sync/{stream_id}", handler)
    app.on_cleanup.append(lambda _app: streamer.close())


_TESTS = str(Path(__file__).resolve().parent.parent / "tests")  # for tests/redis_servers.py


async def _install_redis(app: web.Application, events: int, *, metrics: bool = False) -> None:
    """The Redis store on a private redis-server (started here on a free port, stopped at cleanup)."""
    sys.path.insert(0, _TESTS)
    from redis_servers import RedisServer, find_server_binary
    from resumable_sse import RedisStore

    binary = find_server_binary()
    if binary is None:
        raise SystemExit(
            "the redis row needs a redis-server binary (or RESUMABLE_SSE_REDIS_SERVER); use --only to skip it"
        )
    server = RedisServer(binary).start()
    streamer = Streamer(
        RedisStore.from_url(server.url, max_events=events + 10), observer=_metrics() if metrics else None
    )
    prefix = "/redis-metrics" if metrics else "/redis"
    app.router.add_get(prefix + "/{stream_id}", resumable_handler(_tokens(events), streamer=streamer))

    async def cleanup(_app: web.Application) -> None:
        await streamer.close()
        server.close()

    app.on_cleanup.append(cleanup)


ROWS: list[Row] = [
    Row("baseline: aiohttp-sse, send per event, no log", "/baseline", _install_baseline),
    Row("resumable-sse, memory store", "/memory", _install_memory),
    Row("SyncStreamer.publish, plain generator, memory", "/sync", _install_sync),
    Row("resumable-sse, Redis store (private redis-server)", "/redis", _install_redis),
    Row("resumable-sse, memory store, Prometheus metrics", "/memory-metrics", partial(_install_memory, metrics=True)),
    Row("resumable-sse, Redis store, Prometheus metrics", "/redis-metrics", partial(_install_redis, metrics=True)),
]


# -- the reader (runs in its own process) ------------------------------------------------------------------------


def read_stream(url: str) -> dict[str, float]:
    """Read one stream to its terminal event over a plain blocking socket (so the reader is never the bottleneck).

    Events are counted by their ``data:`` lines (every token is one line); chunked-encoding framing never splits an
    event because each server write is one chunk of whole events.
    """
    parts = urlsplit(url)
    count = 0
    first_at = 0.0
    tail = b""
    started = time.perf_counter()
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        status_line, _, body = head.partition(b"\r\n")
        if b" 200 " not in status_line:
            raise SystemExit(f"unexpected response: {status_line!r}")
        chunk = body.partition(b"\r\n\r\n")[2]
        while True:
            window = tail + chunk
            found = window.count(b"data: ") - tail.count(b"data: ")  # one wholly in the tail was counted before
            if found and not first_at:
                first_at = time.perf_counter()
            count += found
            if b"event: done" in window:
                break
            tail = window[-10:]
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise SystemExit("connection closed before the terminal event")
    elapsed = time.perf_counter() - started
    return {"events": count - 1, "seconds": elapsed, "first_event_ms": (first_at - started) * 1000}


def reader_main(url: str) -> None:
    print(json.dumps(read_stream(url)))


# -- the driver -----------------------------------------------------------------------------------------------------


def run_reader(url: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--reader", url], check=True, capture_output=True, text=True, timeout=900
    )
    return dict(json.loads(out.stdout))


async def main(events: int, repeat: int, only: list[str] | None) -> None:
    app = web.Application()
    rows = [row for row in ROWS if not only or any(word in row.prefix for word in only)]
    for row in rows:
        await row.install(app, events)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"{events} events per stream, {repeat} runs per row, median; Python {sys.version.split()[0]}")
    rates: dict[str, list[float]] = {row.prefix: [] for row in rows}
    firsts: dict[str, list[float]] = {row.prefix: [] for row in rows}
    cpus: dict[str, list[float]] = {row.prefix: [] for row in rows}  # server CPU µs per event: steadier than the
    # rate on a machine others load, since it counts only what this process did
    try:
        # Rows take turns, run after run: each run leaves its stream in memory (the stores keep finished streams for
        # their ttl), so a row measured after all the runs of another would work on a larger heap (slower garbage
        # collection) and lose for that alone.
        for run in range(repeat):
            for row in rows:
                url = f"http://127.0.0.1:{port}{row.prefix}/bench-{run}-{time.monotonic_ns()}"
                gc.collect()  # every run starts from a collected heap, not from the garbage of the one before
                cpu = time.process_time()
                result = await asyncio.to_thread(run_reader, url)
                cpus[row.prefix].append((time.process_time() - cpu) / events * 1e6)
                if result["events"] != events:
                    raise SystemExit(f"{row.label}: reader saw {result['events']} events, expected {events}")
                rates[row.prefix].append(events / result["seconds"])
                firsts[row.prefix].append(result["first_event_ms"])
    finally:
        await runner.cleanup()
    results = {
        prefix: (statistics.median(rates[prefix]), statistics.median(firsts[prefix]), statistics.median(cpus[prefix]))
        for prefix in rates
    }
    base = results.get("/baseline", (0.0, 0.0, 0.0))[0]
    print(f"{'row':50} {'events/s':>12} {'first event':>12} {'vs baseline':>12} {'server CPU/event':>17}")
    for row in rows:
        rate, first, cpu = results[row.prefix]
        ratio = f"{rate / base:.2f}x" if base else "-"
        print(f"{row.label:50} {rate:12,.0f} {first:10.2f}ms {ratio:>12} {cpu:15.2f}µs")
    if "/sync" in results and "/memory" in results:  # the blocking producer against the async one, same store
        print(f"SyncStreamer.publish / async producer (memory): {results['/sync'][0] / results['/memory'][0]:.0%}")
    for store in ("memory", "redis"):  # what the Prometheus metrics cost
        on, off = results.get(f"/{store}-metrics"), results.get(f"/{store}")
        if on and off:
            print(
                f"metrics on / off ({store}): events/s {on[0] / off[0]:.0%}, server CPU per event {on[2] / off[2]:.0%}"
                f" ({on[2]:.2f} / {off[2]:.2f} µs), first event {on[1]:.2f} / {off[1]:.2f} ms"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="run only rows whose route prefix contains one of these words")
    parser.add_argument("--reader", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        reader_main(args.reader)
    else:
        asyncio.run(main(args.events, args.repeat, args.only), debug=False)
