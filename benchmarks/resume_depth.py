"""Resume depth: does resuming deep into a long stream cost more than resuming near its start?

A stream of ``--events`` tokens (default 200,000) is written once through the handler and read to its end. Then a
reader in another process resumes it again and again with ``Last-Event-ID`` at event 10 (shallow) and at event
``--events / 2`` (deep), alternating, and times each request to its first resumed event (the first batch read from
the store and written); it closes the connection there.

Figure: median deep / median shallow <= 2x, on each store (the shallow resume is the baseline, in the same run).

    python benchmarks/resume_depth.py [--events 200000] [--samples 40] [--only memory redis] [--json]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import _bench
from aiohttp import web

from resumable_sse import MemoryStore, RedisStore, Streamer, resumable_handler

ROWS = ("memory", "redis")
TARGET = 2.0
SHALLOW = 10


async def main(args: Any) -> None:
    out = _bench.Output(args.json)
    rows = [row for row in ROWS if not args.only or row in args.only]
    deep = args.events // 2

    async def produce(_request: web.Request) -> AsyncIterator[str]:
        for _ in range(args.events):
            yield "tok "

    app = web.Application()
    streamers: list[Streamer] = []
    server = None
    for row in rows:
        if row == "memory":
            store: MemoryStore | RedisStore = MemoryStore(max_events=args.events + 10)
        else:
            server = _bench.start_redis()
            store = RedisStore.from_url(server.url, max_events=args.events + 10)
        streamer = Streamer(store)
        streamers.append(streamer)
        app.router.add_get(f"/{row}/{{stream_id}}", resumable_handler(produce, streamer=streamer))
    runner, port = await _bench.serve(app)
    out.print(f"resume depth: {args.events} events, resumed at {SHALLOW} and at {deep}, {args.samples} times each")
    document: dict[str, Any] = {"events": args.events, "shallow": SHALLOW, "deep": deep, "target": TARGET, "rows": {}}
    out.print(f"{'row':8} {'at 10 ms':>9} {f'at {deep} ms':>14} {'deep p99':>9} {'ratio':>7} {'target':>7}")
    try:
        for row in rows:
            path = f"/{row}/long-{time.monotonic_ns()}"
            written = await asyncio.to_thread(_bench.reader_process, f"http://127.0.0.1:{port}{path}")
            if written["events"] != args.events + 1:
                raise SystemExit(f"{row}: writing the stream delivered {written['events']} events")
            epoch = written["last_id"].rpartition("-")[0]
            times: dict[int, list[float]] = {SHALLOW: [], deep: []}
            for _ in range(args.samples):
                for position in (SHALLOW, deep):
                    headers = {"Last-Event-ID": f"{epoch}-{position}"}
                    times[position] += await asyncio.to_thread(
                        _bench.first_events_process, port, [path], headers, False
                    )
            shallow_ms, deep_ms = _bench.median(times[SHALLOW]), _bench.median(times[deep])
            ratio = deep_ms / shallow_ms
            document["rows"][row] = {
                "shallow_ms": shallow_ms,
                "deep_ms": deep_ms,
                "shallow_p99_ms": _bench.percentile(sorted(times[SHALLOW]), 0.99),
                "deep_p99_ms": _bench.percentile(sorted(times[deep]), 0.99),
                "ratio": ratio,
                "met": ratio <= TARGET,
            }
            out.print(
                f"{row:8} {shallow_ms:9.2f} {deep_ms:14.2f} {document['rows'][row]['deep_p99_ms']:9.2f} "
                f"{ratio:6.2f}x {_bench.verdict(ratio <= TARGET):>7}"
            )
    finally:
        await runner.cleanup()
        for streamer in streamers:
            await streamer.close()
        if server is not None:
            server.close()
    out.done("resume_depth", document)


if __name__ == "__main__":
    parser = _bench.parser(__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--samples", type=int, default=40, help="resumes at each depth")
    parser.add_argument("--only", nargs="+", choices=ROWS)
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments)))
