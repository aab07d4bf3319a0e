"""One stream, many concurrent readers over HTTP in another process: delivered events/s and Redis commands per event.

Rows (measured in the same run, on the same server process):
  baseline   plain aiohttp-sse: every response sends the tokens itself (no log, no shared producer, no fan-out)
  memory     resumable_handler on the embedded memory store: one producer, fanned out to every reader
  redis      the same on the Redis store (a private redis-server on a free port)

The reader process opens ``--readers`` connections, waits until each has its first event (so every reader is live),
then the server's producer runs: ``--events`` tokens as fast as it can. Delivered events/s counts every event every
reader received, from the producer's start to the last reader's terminal event. For Redis it also prints the Redis
commands per appended event (INFO commandstats, commands inside the Lua scripts included, and the round trips:
EVALSHA and XREAD calls); they must not grow with the number of readers (compare ``--readers 1``).

    python benchmarks/fanout.py [--readers 1000] [--events 2000] [--pace MS] [--only baseline memory redis]

``--pace 2`` makes a token stream (one event every 2 ms, so about one append per event): the setting in which
commands per event show whether they grow with readers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp_sse import sse_response

from resumable_sse import MemoryStore, RedisStore, Streamer, resumable_handler

TOKEN = "tok "
TESTS = str(Path(__file__).resolve().parent.parent / "tests")  # for tests/redis_servers.py
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
IGNORED = {"cmdstat_info", "cmdstat_config|resetstat", "cmdstat_config", "cmdstat_client|setinfo", "cmdstat_hello"}


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the reader process ---------------------------------------------------------------------------------------------


async def _reader(port: int, path: str, ready: asyncio.Queue[None]) -> tuple[int, float]:
    """Read one stream to its terminal event; count events by their ``data:`` lines (one per token)."""
    stream_reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream_reader.read(65536)
    status_line, _, rest = head.partition(b"\r\n")
    if b" 200 " not in status_line:
        raise SystemExit(f"unexpected response: {status_line!r}")
    chunk = rest.partition(b"\r\n\r\n")[2]
    count = 0
    tail = b""
    announced = False
    while True:
        window = tail + chunk
        count += window.count(b"data: ") - tail.count(b"data: ")
        if count and not announced:
            announced = True
            ready.put_nowait(None)
        if b"event: done" in window:
            break
        tail = window[-16:]
        chunk = await stream_reader.read(1 << 20)
        if not chunk:
            raise SystemExit("connection closed before the terminal event")
    finished = time.time()
    writer.close()
    return count, finished


async def readers_main(port: int, path: str, readers: int) -> None:
    """Connect every reader, say CONNECTED once each has its first event, then report when all are done."""
    ready: asyncio.Queue[None] = asyncio.Queue()
    first = asyncio.ensure_future(_reader(port, path, ready))
    await ready.get()  # the first request claimed the stream
    tasks = [first]
    for _ in range(readers - 1):
        tasks.append(asyncio.ensure_future(_reader(port, path, ready)))
        await asyncio.sleep(0)
    for _ in range(readers - 1):
        await ready.get()
    print("CONNECTED", flush=True)
    results = await asyncio.gather(*tasks)
    print(json.dumps({"events": [count for count, _ in results], "last_done": max(done for _, done in results)}))


# -- the server -----------------------------------------------------------------------------------------------------


class Row:
    """One route: its producers start when the benchmark says go."""

    def __init__(self, label: str, prefix: str) -> None:
        self.label = label
        self.prefix = prefix
        self.go = asyncio.Event()


def _shared_producer(row: Row, events: int, pace: float, streamer: Streamer) -> Handler:
    async def produce(_request: web.Request) -> AsyncIterator[str]:
        yield "ready"
        await row.go.wait()
        for _ in range(events):
            yield TOKEN
            if pace:
                await asyncio.sleep(pace)

    return resumable_handler(produce, streamer=streamer)


def _baseline(row: Row, events: int, pace: float) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        async with sse_response(request) as response:
            await response.send("ready")
            await row.go.wait()
            for _ in range(events):
                await response.send(TOKEN)
                if pace:
                    await asyncio.sleep(pace)
            await response.send("{}", event="done")
        return response

    return handler


async def measure(port: int, row: Row, readers: int, events: int, redis_url: str | None) -> dict[str, float]:
    path = f"{row.prefix}/fan-{time.monotonic_ns()}"
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--reader-port", str(port), "--reader-path", path, "--readers", str(readers),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    line = await child.stdout.readline()
    if line.strip() != b"CONNECTED":
        raise SystemExit(f"{row.label}: readers did not connect: {line!r}")
    raw = None
    if redis_url is not None:
        import redis

        raw = redis.Redis.from_url(redis_url)
        raw.config_resetstat()
    started = time.time()
    row.go.set()
    out = json.loads(await child.stdout.readline())
    await child.wait()
    row.go.clear()
    seconds = out["last_done"] - started
    expected = events + 2  # ready, the tokens, the terminal event
    if any(count != expected for count in out["events"]):
        raise SystemExit(f"{row.label}: a reader missed events: {sorted(set(out['events']))}, expected {expected}")
    result = {"delivered_per_s": readers * (events + 1) / seconds, "seconds": seconds}
    if raw is not None:
        stats = raw.info("commandstats")
        total = sum(stat["calls"] for name, stat in stats.items() if name not in IGNORED)
        trips = sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_xread"))
        result["commands_per_event"] = total / (events + 1)
        result["round_trips_per_event"] = trips / (events + 1)
        raw.close()
    return result


async def main(readers: int, events: int, pace: float, only: list[str] | None) -> None:
    raise_fd_limit()
    app = web.Application()
    rows = [Row("baseline: aiohttp-sse, each response sends its own", "/baseline"),
            Row("resumable-sse, memory store", "/memory"),
            Row("resumable-sse, Redis store", "/redis")]  # fmt: skip
    rows = [row for row in rows if not only or row.prefix.strip("/") in only]
    server = None
    streamers: list[Streamer] = []
    for row in rows:
        if row.prefix == "/baseline":
            app.router.add_get("/baseline/{stream_id}", _baseline(row, events, pace))
            continue
        if row.prefix == "/memory":
            streamer = Streamer(MemoryStore())
        else:
            sys.path.insert(0, TESTS)
            from redis_servers import RedisServer, find_server_binary

            binary = find_server_binary()
            if binary is None:
                raise SystemExit(
                    "the redis row needs a redis-server binary (or RESUMABLE_SSE_REDIS_SERVER); use --only"
                )
            server = RedisServer(binary).start()
            streamer = Streamer(RedisStore.from_url(server.url))
        streamers.append(streamer)
        app.router.add_get(f"{row.prefix}/{{stream_id}}", _shared_producer(row, events, pace, streamer))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    paced = f", {pace * 1000:g} ms apart" if pace else ", as fast as the producer goes"
    print(f"{readers} readers, {events} events per stream{paced}; Python {sys.version.split()[0]}")
    results = {}
    try:
        for row in rows:
            redis_url = server.url if server is not None and row.prefix == "/redis" else None
            results[row.prefix] = await measure(port, row, readers, events, redis_url)
    finally:
        await runner.cleanup()
        for streamer in streamers:
            await streamer.close()
        if server is not None:
            server.close()
    base = results.get("/baseline", {}).get("delivered_per_s", 0.0)
    print(f"{'row':52} {'delivered/s':>12} {'vs baseline':>12} {'cmds/event':>11} {'trips/event':>12}")
    for row in rows:
        result = results[row.prefix]
        ratio = f"{result['delivered_per_s'] / base:.2f}x" if base else "-"
        commands = f"{result['commands_per_event']:.2f}" if "commands_per_event" in result else "-"
        trips = f"{result['round_trips_per_event']:.2f}" if "round_trips_per_event" in result else "-"
        print(f"{row.label:52} {result['delivered_per_s']:12,.0f} {ratio:>12} {commands:>11} {trips:>12}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--pace", type=float, default=0.0, help="milliseconds between tokens (0: none)")
    parser.add_argument("--only", nargs="*", help="rows to run: baseline, memory, redis")
    parser.add_argument("--reader-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--reader-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader_port:
        raise_fd_limit()
        asyncio.run(readers_main(args.reader_port, args.reader_path, args.readers))
    else:
        asyncio.run(main(args.readers, args.events, args.pace / 1000, args.only))
