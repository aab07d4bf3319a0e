"""First event after the request: how long a client waits for the first event of a stream it starts.

A reader in another process opens a connection, then sends a request for a new stream and times the first ``data:``
line (the request's own claim, producer start, first append and write included); it reads the response to its
terminal event before the next request. The producer yields its first token at once, then a few more.

Rows (one server process, in the same run; rounds interleave the rows so that load falls on each alike):
  baseline   plain aiohttp-sse: the handler sends the tokens itself (no log): what the library's time adds to
  memory     ``resumable_handler`` on the embedded memory store
  redis      the same on the Redis store (a private redis-server on a free port)

Figure: median <= 2 ms on both stores; the p99 is printed beside it.

    python benchmarks/first_event.py [--samples 300] [--only baseline memory redis] [--json]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import _bench
from aiohttp import web
from aiohttp_sse import sse_response

from resumable_sse import MemoryStore, RedisStore, Streamer, resumable_handler

ROWS = ("baseline", "memory", "redis")
TARGET_MS = 2.0
TOKENS = 5


async def _baseline(request: web.Request) -> web.StreamResponse:
    async with sse_response(request) as response:
        for _ in range(TOKENS):
            await response.send("tok ")
        await response.send("{}", event="done")
    return response


async def _produce(_request: web.Request) -> AsyncIterator[str]:
    for _ in range(TOKENS):
        yield "tok "


async def main(args: Any) -> None:
    out = _bench.Output(args.json)
    rows = [row for row in ROWS if not args.only or row in args.only]
    app = web.Application()
    streamers: list[Streamer] = []
    server = None
    for row in rows:
        if row == "baseline":
            app.router.add_get("/baseline/{stream_id}", _baseline)
            continue
        if row == "memory":
            store: MemoryStore | RedisStore = MemoryStore()
        else:
            server = _bench.start_redis()
            store = RedisStore.from_url(server.url)
        streamer = Streamer(store)
        streamers.append(streamer)
        app.router.add_get(f"/{row}/{{stream_id}}", resumable_handler(_produce, streamer=streamer))
    runner, port = await _bench.serve(app)
    out.print(f"first event: {args.samples} new streams per row, one request at a time, {args.rounds} rounds")
    samples: dict[str, list[float]] = {row: [] for row in rows}
    per_round = max(1, args.samples // args.rounds)
    try:
        for row in rows:  # warm up: imports, the store's scripts, the first connection pool
            await asyncio.to_thread(_bench.first_events_process, port, [f"/{row}/warm-{n}" for n in range(3)])
        for round_ in range(args.rounds):
            for row in rows:
                paths = [f"/{row}/f{round_}-{n}-{time.monotonic_ns()}" for n in range(per_round)]
                samples[row] += await asyncio.to_thread(_bench.first_events_process, port, paths)
    finally:
        await runner.cleanup()
        for streamer in streamers:
            await streamer.close()
        if server is not None:
            server.close()
    document: dict[str, Any] = {"samples": per_round * args.rounds, "target_ms": TARGET_MS, "rows": {}}
    out.print(f"{'row':9} {'median ms':>10} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'target':>8}")
    for row in rows:
        ordered = sorted(samples[row])
        p50 = _bench.median(ordered)
        met = None if row == "baseline" else p50 <= TARGET_MS
        document["rows"][row] = {
            "median_ms": p50,
            "p90_ms": _bench.percentile(ordered, 0.9),
            "p99_ms": _bench.percentile(ordered, 0.99),
            "max_ms": ordered[-1],
            "met": met,
        }
        figures = document["rows"][row]
        out.print(
            f"{row:9} {p50:10.2f} {figures['p90_ms']:8.2f} {figures['p99_ms']:8.2f} {ordered[-1]:8.2f} "
            f"{_bench.verdict(met):>8}"
        )
    out.done("first_event", document)


if __name__ == "__main__":
    parser = _bench.parser(__doc__)
    parser.add_argument("--samples", type=int, default=300, help="requests per row")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=ROWS)
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments)))
