"""Readers: one stream, many readers in one process; what the store is asked grows with events, never with readers.

One producer yields ``--events`` tokens, one every ``--pace`` ms (a token stream: about one append per token); R
readers in the same process (``Streamer.subscribe``, iterating ``batches()`` as the HTTP handler does, without the
socket: see ``fanout.py`` for the same over HTTP) read it to its terminal event. Each size runs on a fresh stream,
in the same run: first R = 1 (the baseline), then R = ``--readers`` (default 10,000).

For each store and R it prints delivered events/s (every event every reader received, from the producer's start to
the last reader's terminal event) and, on Redis, the commands the server ran per event (INFO commandstats: commands
inside the Lua scripts included). Figure: Redis commands per event at R = 10,000 / at R = 1 <= 1.1 (flat).

    python benchmarks/readers.py [--readers 10000] [--events 1000] [--pace 2] [--only memory redis] [--json]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import _bench

from resumable_sse import MemoryStore, RedisStore, Streamer

ROWS = ("memory", "redis")
FLAT = 1.1  # commands per event at R readers / at one reader


async def run(streamer: Streamer, readers: int, events: int, pace: float, ports: list[int]) -> dict[str, Any]:
    stream_id = f"readers-{readers}-{time.monotonic_ns()}"
    go = asyncio.Event()

    async def produce() -> AsyncIterator[str]:
        yield "ready"
        await go.wait()
        for _ in range(events):
            yield "tok "
            if pace:
                await asyncio.sleep(pace)

    await streamer.start(stream_id, produce)
    subscriptions = [await streamer.subscribe(stream_id) for _ in range(readers)]

    async def read(subscription: Any, ready: asyncio.Event) -> int:
        count = 0
        async for batch in subscription.batches():
            count += len(batch)
            ready.set()
            if batch[-1].terminal:
                break
        return count

    ready_events = [asyncio.Event() for _ in subscriptions]
    tasks = [asyncio.ensure_future(read(s, e)) for s, e in zip(subscriptions, ready_events, strict=True)]
    for event in ready_events:
        await event.wait()  # every reader has the first event: all are live
    if ports:
        await asyncio.to_thread(_bench.redis_commands, ports, True)
    started = time.perf_counter()
    go.set()
    counts = await asyncio.gather(*tasks)
    seconds = time.perf_counter() - started
    commands = await asyncio.to_thread(_bench.redis_commands, ports) if ports else None
    expected = events + 2  # ready, the tokens, the terminal event
    if any(count != expected for count in counts):
        raise SystemExit(f"a reader missed events: {sorted(set(counts))}, expected {expected}")
    return {
        "readers": readers,
        "seconds": seconds,
        "delivered_per_s": readers * (events + 1) / seconds,
        "commands_per_event": None if commands is None else commands / (events + 1),
    }


async def main(args: Any) -> None:
    _bench.raise_fd_limit()
    out = _bench.Output(args.json)
    rows = [row for row in ROWS if not args.only or row in args.only]
    pace = args.pace / 1000
    out.print(f"readers: one stream of {args.events} tokens, {args.pace:g} ms apart, R = 1 then {args.readers}")
    out.print(f"{'row':8} {'R':>7} {'seconds':>8} {'delivered/s':>13} {'cmds/event':>11}")
    document: dict[str, Any] = {"events": args.events, "pace_ms": args.pace, "flat_target": FLAT, "rows": {}}
    for row in rows:
        server = None
        if row == "memory":
            store: MemoryStore | RedisStore = MemoryStore()
            ports: list[int] = []
        else:
            server = _bench.start_redis()
            store = RedisStore.from_url(server.url)
            ports = [server.port]
        results = []
        try:
            async with Streamer(store) as streamer:
                for readers in (1, args.readers):
                    result = await run(streamer, readers, args.events, pace, ports)
                    results.append(result)
                    commands = result["commands_per_event"]
                    out.print(
                        f"{row:8} {readers:7} {result['seconds']:8.2f} {result['delivered_per_s']:13,.0f} "
                        f"{'-' if commands is None else f'{commands:.2f}':>11}"
                    )
        finally:
            if server is not None:
                server.close()
        entry: dict[str, Any] = {"runs": results}
        if ports:
            growth = results[1]["commands_per_event"] / results[0]["commands_per_event"]
            entry.update(commands_growth=growth, met=growth <= FLAT)
            met = _bench.verdict(growth <= FLAT)
            out.print(f"{row}: commands per event at R={args.readers} / at R=1: {growth:.2f}x: {met}")
        document["rows"][row] = entry
    out.done("readers", document)


if __name__ == "__main__":
    parser = _bench.parser(__doc__)
    parser.add_argument("--readers", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--pace", type=float, default=2.0, help="milliseconds between tokens (0: as fast as it can)")
    parser.add_argument("--only", nargs="+", choices=ROWS)
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments)))
