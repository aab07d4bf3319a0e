"""Headroom to the ceiling: one stream end to end over HTTP against a raw aiohttp ``StreamResponse``.

One producer yields ``--events`` small tokens as fast as it can; one reader in another process reads them over a
loopback socket to the terminal event (events/s = events / time from the request to the terminal event).

Rows (on one server process, in the same run, interleaved: every round runs each row once, in order):
  raw      the ceiling: a bare ``aiohttp.web.StreamResponse`` with the event-stream headers that writes the same
           events, encoded beforehand (with the ids the library would give them), in batches of ``--batch`` events
           (the Streamer's batch size): one ``b"".join`` and one ``write`` per batch; no producer, no log
  memory   ``resumable_handler`` on the embedded memory store
  redis    the same on the Redis store (a private redis-server on a free port)

Figures (the median over ``--rounds`` rounds of each round's ratio): memory / raw (target >= 70 %) and
redis / memory (target >= 85 %).

    python benchmarks/ceiling.py [--events 100000] [--rounds 5] [--only raw memory redis] [--json]
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
from resumable_sse._event import encode_event, encode_retry, new_epoch

TOKEN = "tok "
ROWS = ("raw", "memory", "redis")
MEMORY_TARGET = 0.70
REDIS_TARGET = 0.85


def _raw(events: int, batch: int) -> Any:
    epoch = new_epoch()
    encoded = [encode_event(TOKEN, f"{epoch}-{seq}") for seq in range(1, events + 1)]
    encoded.append(encode_event('{"state":"done"}', f"{epoch}-{events + 1}", "done"))
    retry = encode_retry(2000)

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        await response.write(retry)
        for start in range(0, len(encoded), batch):
            await response.write(b"".join(encoded[start : start + batch]))
        await response.write_eof()
        return response

    return handler


def _tokens(events: int) -> Any:
    async def produce(_request: web.Request) -> AsyncIterator[str]:
        for _ in range(events):
            yield TOKEN

    return produce


async def main(args: Any) -> None:
    out = _bench.Output(args.json)
    rows = [row for row in ROWS if not args.only or row in args.only]
    app = web.Application()
    streamers: list[Streamer] = []
    server = None
    batch = 1024  # the Streamer's default batch_size
    for row in rows:
        if row == "raw":
            app.router.add_get("/raw/{stream_id}", _raw(args.events, batch))
            continue
        if row == "memory":
            store: MemoryStore | RedisStore = MemoryStore(max_events=args.events + 10)
        else:
            server = _bench.start_redis()
            store = RedisStore.from_url(server.url, max_events=args.events + 10)
        streamer = Streamer(store, batch_size=batch)
        streamers.append(streamer)
        app.router.add_get(f"/{row}/{{stream_id}}", resumable_handler(_tokens(args.events), streamer=streamer))
    runner, port = await _bench.serve(app)
    out.print(f"ceiling: one stream of {args.events} tokens over HTTP, {args.rounds} rounds, median of each ratio")
    rates: dict[str, list[float]] = {row: [] for row in rows}
    firsts: dict[str, list[float]] = {row: [] for row in rows}
    cpus: dict[str, list[float]] = {row: [] for row in rows}
    deadline = time.monotonic() + args.budget
    try:
        for round_ in range(args.rounds):
            if round_ and time.monotonic() > deadline:
                out.print(f"  time budget spent: {round_} rounds")
                break
            for row in rows:
                url = f"http://127.0.0.1:{port}/{row}/c-{round_}-{time.monotonic_ns()}"
                cpu0 = time.process_time()  # this process is the server; the reader is another process
                result = await asyncio.to_thread(_bench.reader_process, url)
                cpus[row].append((time.process_time() - cpu0) / args.events * 1e6)
                if result["events"] != args.events + 1:
                    raise SystemExit(f"{row}: the reader saw {result['events']} events, expected {args.events + 1}")
                rates[row].append(args.events / result["seconds"])
                firsts[row].append(result["first_event_ms"])
    finally:
        await runner.cleanup()
        for streamer in streamers:
            await streamer.close()
        if server is not None:
            server.close()

    def ratios(top: str, bottom: str) -> list[float]:
        if top not in rates or bottom not in rates:
            return []
        return [a / b for a, b in zip(rates[top], rates[bottom], strict=True)]

    memory_raw, redis_memory = ratios("memory", "raw"), ratios("redis", "memory")
    document: dict[str, Any] = {"events": args.events, "batch": batch, "rounds": len(rates[rows[0]]), "rows": {}}
    out.print(f"{'row':8} {'events/s':>12} {'min':>12} {'max':>12} {'first event':>12} {'server us/event':>16}")
    for row in rows:
        rate, cpu = _bench.median(rates[row]), _bench.median(cpus[row])
        document["rows"][row] = {
            "events_per_s": rate,
            "runs": rates[row],
            "first_event_ms": _bench.median(firsts[row]),
            "server_cpu_us_per_event": cpu,
        }
        out.print(
            f"{row:8} {rate:12,.0f} {min(rates[row]):12,.0f} {max(rates[row]):12,.0f} "
            f"{_bench.median(firsts[row]):10.2f}ms {cpu:16.3f}"
        )
    figures = {}
    if memory_raw:
        value = _bench.median(memory_raw)
        figures["memory_vs_raw"] = {"value": value, "target": MEMORY_TARGET, "met": value >= MEMORY_TARGET}
        met = _bench.verdict(value >= MEMORY_TARGET)
        out.print(f"memory / raw:   {value:.0%} (target >= {MEMORY_TARGET:.0%}): {met}")
    if redis_memory:
        value = _bench.median(redis_memory)
        figures["redis_vs_memory"] = {"value": value, "target": REDIS_TARGET, "met": value >= REDIS_TARGET}
        met = _bench.verdict(value >= REDIS_TARGET)
        out.print(f"redis / memory: {value:.0%} (target >= {REDIS_TARGET:.0%}): {met}")
    document["figures"] = figures
    out.done("ceiling", document)


if __name__ == "__main__":
    parser = _bench.parser(__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds after which no new round starts")
    parser.add_argument("--only", nargs="+", choices=ROWS)
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments)))
