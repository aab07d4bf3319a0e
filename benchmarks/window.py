"""What one fast stream of large events costs the server when its readers fall behind: memory, bounded in bytes.

A producer yields ``--events`` events of ``--size`` KiB (default 3,200 x 64 KiB: 210 MB) as fast as it can, on the
embedded memory store keeping ``--keep`` events (default 100), with ``send_timeout=None`` (a stalled client is never
cut off). Each row runs on a fresh server process (``--serve``), so that one row's memory is not another's:

  none       no reader: what the producer and the store cost alone (the baseline the ratios are taken against)
  stalled    one reader over HTTP that reads the first event, then nothing (its socket buffers fill and stay full)
  trailing   ``--readers`` readers (default 100) over HTTP that read as fast as they can, behind the producer, of a
             stream of ``--trailing-events`` events (default 800: 52 MB, every reader reading all it can of it)

For each row it prints the server's resident memory growth (peak RSS while the stream runs, sampled every 20 ms,
minus RSS before it started), the most event data the process's window for the stream held (sampled the same way),
the server's CPU, and growth / the ``none`` row's growth. Figures: stalled growth <= 64 MiB; the window never holds
more than the Streamer's ``window_bytes`` (4 MiB by default).

    python benchmarks/window.py [--events 3200] [--size 64] [--keep 100] [--readers 100] [--trailing-events 800]
                                [--only none stalled trailing] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import _bench
from aiohttp import web

from resumable_sse import MemoryStore, Streamer, resumable_handler
from resumable_sse.aiohttp import setup

ROWS = ("none", "stalled", "trailing")
MIB = 1024 * 1024
STALLED_BOUND = 64 * MIB


# -- the server (one process per row) -------------------------------------------------------------------------------


async def serve(events: int, size: int, keep: int) -> None:
    """Serve ``/stream/{stream_id}`` (the producer waits for ``/go``), ``/go``, and ``/probe`` (the stream's state and
    the most event data its window held); print the port, then run until stdin closes."""
    streamer = Streamer(MemoryStore(max_events=keep))
    app = web.Application()
    setup(app, streamer)
    go = asyncio.Event()
    most = [0]
    payload = "e" * (size * 1024 - 8)

    async def produce(_request: web.Request) -> AsyncIterator[str]:
        yield "ready"
        await go.wait()
        for i in range(events):
            yield f"{i:08d}{payload}"

    async def sample() -> None:
        while True:
            for tail in list(streamer.hub.tails.values()):
                most[0] = max(most[0], sum([len(entry.data) for entry in tail.window]))
            await asyncio.sleep(0.02)

    async def start(request: web.Request) -> web.Response:
        go.set()
        return web.Response(text="go")

    async def probe(request: web.Request) -> web.Response:
        state = await streamer.status(request.query["stream_id"])
        return web.json_response({"status": state.status if state else None, "window": most[0]})

    app.router.add_get("/stream/{stream_id}", resumable_handler(produce, send_timeout=None, heartbeat=3600))
    app.router.add_get("/go", start)
    app.router.add_get("/probe", probe)
    runner, port = await _bench.serve(app)
    sampler = asyncio.ensure_future(sample())
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    sampler.cancel()
    await runner.cleanup()


# -- the driver and its readers -------------------------------------------------------------------------------------


async def connect(port: int, path: str, stalled: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An HTTP connection that has read up to the stream's first event; a stalled one with a small receive buffer."""
    sock = socket.socket()
    if stalled:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    seen = b""
    while b"data: ready" not in seen:
        chunk = await reader.read(4096)
        if not chunk:
            raise SystemExit(f"the server closed {path} before its first event")
        seen += chunk
    return reader, writer


async def drain(reader: asyncio.StreamReader) -> bool:
    """Read until the terminal event (True), or until the server closes the connection (False). A reader that the
    store's trim overtook gets a ``reset`` and goes on from the earliest event kept: that is the protocol."""
    tail = b""
    while True:
        chunk = await reader.read(1 << 18)
        if not chunk:
            return False
        window = tail + chunk[-64:]
        if b"event: done" in window:
            return True
        tail = window[-16:]


async def get(port: int, path: str) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    body = (await reader.read()).partition(b"\r\n\r\n")[2]
    writer.close()
    return json.loads(body) if body.startswith(b"{") else body


async def measure(row: str, args: Any) -> dict[str, Any]:
    events = args.trailing_events if row == "trailing" else args.events
    command = [sys.executable, __file__, "--serve", "--events", str(events), "--size", str(args.size)]
    command += ["--keep", str(args.keep)]
    server = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        port = int(await server.stdout.readline())
        sid = f"w-{row}"
        readers = {"none": 0, "stalled": 1, "trailing": args.readers}[row]
        connections = [await connect(port, f"/stream/{sid}", row == "stalled") for _ in range(max(1, readers))]
        if not readers:  # the first request started the producer; its client goes away
            connections.pop()[1].close()
        await asyncio.sleep(0.2)
        before = _bench.rss_bytes(server.pid)
        cpu = _bench.cpu_seconds(server.pid)
        started = time.perf_counter()
        reading = [asyncio.ensure_future(drain(reader)) for reader, _ in connections] if row == "trailing" else []
        await get(port, "/go")
        peak = before
        while True:
            peak = max(peak, _bench.rss_bytes(server.pid))
            probe = await get(port, f"/probe?stream_id={sid}")
            if probe["status"] != "running" and all(task.done() for task in reading):
                break
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - started
        await asyncio.sleep(0.3)  # what the server still holds for a reader that stays stalled
        peak = max(peak, _bench.rss_bytes(server.pid))
        if not all(task.result() for task in reading):
            raise SystemExit("a trailing reader's connection ended before the terminal event")
        for _, writer in connections:
            writer.close()
        return {
            "row": row,
            "readers": readers,
            "growth_mib": (peak - before) / MIB,
            "window_mib": probe["window"] / MIB,
            "seconds": seconds,
            "cpu_s": _bench.cpu_seconds(server.pid) - cpu,
        }
    finally:
        assert server.stdin is not None
        with contextlib.suppress(OSError):
            server.stdin.close()
        try:
            await asyncio.wait_for(server.wait(), 10)
        except asyncio.TimeoutError:
            server.kill()
            await server.wait()


async def main(args: Any) -> None:
    out = _bench.Output(args.json)
    rows = [row for row in ROWS if not args.only or row in args.only]
    stream_mb = args.events * args.size * 1024 / 1e6
    out.print(
        f"one stream: {args.events} x {args.size} KiB events ({stream_mb:.0f} MB), memory store keeping {args.keep}, "
        f"send_timeout=None (trailing row: {args.trailing_events} events); Python {sys.version.split()[0]}; "
        f"load {_bench.machine()['load']}"
    )
    results = [await measure(row, args) for row in rows]
    base = next((result["growth_mib"] for result in results if result["row"] == "none"), None)
    out.print(f"{'row':10} {'readers':>8} {'RSS growth':>12} {'window max':>12} {'vs none':>8} {'srv CPU':>9}")
    for result in results:
        ratio = f"{result['growth_mib'] / base:.2f}x" if base else "-"
        out.print(
            f"{result['row']:10} {result['readers']:8} {result['growth_mib']:9.1f} MiB {result['window_mib']:8.1f} MiB "
            f"{ratio:>8} {result['cpu_s']:8.2f}s"
        )
    stalled = next((result for result in results if result["row"] == "stalled"), None)
    if stalled is not None:
        met = stalled["growth_mib"] * MIB <= STALLED_BOUND
        out.print(f"stalled reader: {stalled['growth_mib']:.1f} MiB <= 64 MiB: {_bench.verdict(met)}")
    out.done("window", {"rows": results})


if __name__ == "__main__":
    parser = _bench.parser(__doc__)
    parser.add_argument("--events", type=int, default=3200)
    parser.add_argument("--size", type=int, default=64, help="KiB per event")
    parser.add_argument("--keep", type=int, default=100, help="events the memory store keeps")
    parser.add_argument("--readers", type=int, default=100, help="readers of the trailing row")
    parser.add_argument("--trailing-events", type=int, default=800, help="events of the trailing row's stream")
    parser.add_argument("--only", nargs="+", choices=ROWS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.events, args.size, args.keep))
    else:
        asyncio.run(main(args))
