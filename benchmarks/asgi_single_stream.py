"""The single-stream benchmark for the ASGI adapter: uvicorn rows beside the aiohttp rows, in one run, one process.

One producer yields ``--events`` small tokens as fast as it can; one reader in another process reads the stream
over a real loopback socket to its terminal event (the reader of ``single_stream.py``). Rows:

  aiohttp-sse        plain aiohttp-sse, one ``send`` per event, no log        (aiohttp's baseline)
  aiohttp            resumable_handler on the memory store                     (single_stream.py's memory row)
  sse-starlette      plain sse-starlette's EventSourceResponse under uvicorn,
                     one event per yield, no log                               (the ASGI baseline)
  asgi               resumable_endpoint on the memory store under uvicorn      (this adapter)
  fastapi            the same endpoint routed by FastAPI's add_api_route

Both servers run on this process's one event loop (the default asyncio loop, uvicorn with its default HTTP parser),
one row at a time. It prints events/s and first-event latency per row (median of ``--repeat`` runs) and each row's
ratio to both baselines; ``--json`` prints the same figures as one JSON object instead.

    python benchmarks/asgi_single_stream.py [--events 100000] [--repeat 3] [--only asgi sse-starlette] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
import single_stream  # its aiohttp rows and its reader process

from resumable_sse import MemoryStore, Streamer

TOKEN = single_stream.TOKEN


@dataclass
class Row:
    key: str
    label: str
    server: str  # "aiohttp" or "uvicorn"
    prefix: str


ROWS = [
    Row("aiohttp-sse", "baseline: aiohttp-sse, send per event, no log", "aiohttp", "/baseline"),
    Row("aiohttp", "resumable-sse aiohttp, memory store", "aiohttp", "/memory"),
    Row("sse-starlette", "baseline: sse-starlette (uvicorn), no log", "uvicorn", "/sse-starlette"),
    Row("asgi", "resumable-sse Starlette (uvicorn), memory store", "uvicorn", "/asgi"),
    Row("fastapi", "resumable-sse FastAPI route (uvicorn), memory", "uvicorn", "/fastapi"),
]


def asgi_app(events: int, streamers: list[Streamer]) -> Any:
    """The ASGI rows in one Starlette application (FastAPI's row in a FastAPI app mounted inside it)."""
    from fastapi import FastAPI
    from sse_starlette import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Mount, Route

    from resumable_sse.starlette import resumable_endpoint

    async def plain(_request: Request) -> EventSourceResponse:
        async def tokens() -> AsyncIterator[dict[str, str]]:
            for _ in range(events):
                yield {"data": TOKEN}
            yield {"event": "done", "data": "{}"}

        return EventSourceResponse(tokens(), sep="\n")

    async def tokens(_request: Request) -> AsyncIterator[str]:
        for _ in range(events):
            yield TOKEN

    asgi_streamer = Streamer(MemoryStore(max_events=events + 10))
    fastapi_streamer = Streamer(MemoryStore(max_events=events + 10))
    streamers += [asgi_streamer, fastapi_streamer]
    fastapi_app = FastAPI()
    fastapi_app.add_api_route("/{stream_id}", resumable_endpoint(tokens, streamer=fastapi_streamer))
    return Starlette(
        routes=[
            Route("/sse-starlette/{stream_id}", plain),
            Route("/asgi/{stream_id}", resumable_endpoint(tokens, streamer=asgi_streamer)),
            Mount("/fastapi", fastapi_app),
        ]
    )


async def serve_uvicorn(app: Any) -> tuple[Any, asyncio.Task[None], int]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", loop="asyncio"))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return server, task, int(sock.getsockname()[1])


async def main(events: int, repeat: int, only: list[str] | None, as_json: bool) -> None:
    rows = [row for row in ROWS if not only or row.key in only]
    app = web.Application()
    await single_stream._install_baseline(app, events)
    await single_stream._install_memory(app, events)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    ports = {"aiohttp": runner.addresses[0][1]}
    streamers: list[Streamer] = []
    server, task, ports["uvicorn"] = await serve_uvicorn(asgi_app(events, streamers))
    results: dict[str, dict[str, float]] = {}
    try:
        for row in rows:
            rates, firsts = [], []
            for run in range(repeat):
                url = f"http://127.0.0.1:{ports[row.server]}{row.prefix}/bench-{run}-{time.monotonic_ns()}"
                result = await asyncio.to_thread(single_stream.run_reader, url)
                if result["events"] != events:
                    raise SystemExit(f"{row.label}: the reader saw {result['events']} events, expected {events}")
                rates.append(events / result["seconds"])
                firsts.append(result["first_event_ms"])
            results[row.key] = {"events_per_s": statistics.median(rates), "first_event_ms": statistics.median(firsts)}
    finally:
        server.should_exit = True
        await task
        await runner.cleanup()
        for streamer in streamers:
            await streamer.close()
    for base in ("aiohttp-sse", "sse-starlette"):
        if base in results:
            for figures in results.values():
                figures[f"vs_{base}"] = figures["events_per_s"] / results[base]["events_per_s"]
    python = sys.version.split()[0]
    if as_json:
        print(json.dumps({"events": events, "repeat": repeat, "python": python, "rows": results}, indent=2))
        return
    print(f"{events} events per stream, {repeat} runs per row, median; Python {python}")
    print(f"{'row':50} {'events/s':>11} {'first event':>12} {'vs aiohttp-sse':>15} {'vs sse-starlette':>17}")
    for row in rows:
        figures = results[row.key]
        ratios = [f"{figures[key]:.2f}x" if key in figures else "-" for key in ("vs_aiohttp-sse", "vs_sse-starlette")]
        print(
            f"{row.label:50} {figures['events_per_s']:11,.0f} {figures['first_event_ms']:10.2f}ms "
            f"{ratios[0]:>15} {ratios[1]:>17}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=[row.key for row in ROWS], help="run only these rows")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.repeat, args.only, args.json))
