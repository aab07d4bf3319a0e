"""Smoke test of an installed resumable-sse wheel: run by .ci/release_check.py in a fresh virtual environment.

It runs from a temporary directory with ``python -I`` so that only the installed wheel can be imported (never the
checkout's ``src/``), and exits non-zero on the first failure. What it proves of the wheel a user installs:

- the README's quick start serves one stream over a real socket, byte for byte as the documentation shows it, resumes
  after an event id, and answers the terminal event's id with ``204``;
- the browser helper ``resumable_sse/static/resumable-sse.js`` is in the wheel and is served, byte for byte, the way
  docs/js-helper.md serves it;
- the Redis store (its Lua scripts come from the wheel) runs one stream on a private ``redis-server`` on a free port.

Usage: ``python -I wheel_smoke.py EXPECTED_VERSION``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.resources
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import redis.asyncio
from aiohttp import web

import resumable_sse
from resumable_sse import Event, RedisStore, Streamer, resumable_handler, setup

TOKENS = ["Hello", ", ", "world"]
# the quick start's events after their id lines, as docs/guide.md's "On the wire" shows them; a response's first event
# carries the retry: line
BLOCKS = [
    "data: Hello\n",
    "data: , \n",
    "data: world\n",
    'event: usage\ndata: {"tokens":3}\n',
    'event: done\ndata: {"state":"done"}\n',
]


def expected_body(epoch: str, after: int = 0) -> str:
    """The exact body of the quick start's stream with this epoch, from the event after sequence number ``after``."""
    events = "".join(f"id: {epoch}-{seq}\n{block}\n" for seq, block in enumerate(BLOCKS, 1) if seq > after)
    return "retry: 2000\n" + events


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"wheel smoke: FAILED: {message}")


async def generate(request: web.Request) -> AsyncIterator[str | Event]:
    """The README's quick start producer (without its one-second pace)."""
    for token in TOKENS:
        yield token
    yield Event({"tokens": 3}, event="usage")


def make_app(streamer: Streamer | None) -> web.Application:
    app = web.Application()
    if streamer is not None:
        setup(app, streamer)
    app.router.add_get("/stream/{stream_id}", resumable_handler(generate))
    # served as docs/js-helper.md does
    script = importlib.resources.files("resumable_sse").joinpath("static/resumable-sse.js").read_bytes()

    async def resumable_sse_js(request: web.Request) -> web.Response:
        return web.Response(body=script, content_type="text/javascript")

    app.router.add_get("/resumable-sse.js", resumable_sse_js)
    return app


async def serve_one_stream(streamer: Streamer | None, label: str) -> None:
    """Serve the quick start on a free port; read a stream, resume it, and fetch the JS helper, over the socket."""
    runner = web.AppRunner(make_app(streamer))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.get(f"{base}/stream/answer-42") as response:
                check(response.status == 200, f"{label}: first request answered {response.status}")
                check(response.content_type == "text/event-stream", f"{label}: content type {response.content_type}")
                body = await response.text()
            epoch = re.match(r"retry: 2000\nid: ([0-9a-f]+)-1\n", body)
            check(epoch is not None, f"{label}: the body does not start with the retry and first id lines: {body!r}")
            assert epoch is not None
            check(body == expected_body(epoch[1]), f"{label}: the body differs from the quick start's: {body!r}")

            async with session.get(f"{base}/stream/answer-42", headers={"Last-Event-ID": f"{epoch[1]}-2"}) as response:
                check(response.status == 200, f"{label}: resume answered {response.status}")
                resumed = await response.text()
            check(resumed == expected_body(epoch[1], after=2), f"{label}: resumed after the second event: {resumed!r}")

            async with session.get(f"{base}/stream/answer-42", headers={"Last-Event-ID": f"{epoch[1]}-5"}) as response:
                check(response.status == 204, f"{label}: the terminal event's id answered {response.status}")

            async with session.get(f"{base}/resumable-sse.js") as response:
                check(response.status == 200, f"{label}: /resumable-sse.js answered {response.status}")
                check(response.content_type == "text/javascript", f"{label}: JS content type {response.content_type}")
                served = await response.read()
    finally:
        await runner.cleanup()
    packaged = Path(resumable_sse.__file__).parent / "static" / "resumable-sse.js"
    check(packaged.is_file(), f"the wheel has no {packaged}")
    check(served == packaged.read_bytes(), f"{label}: the served JS helper differs from {packaged}")
    check(b"ResumableSSE" in served, f"{label}: the served JS helper defines no ResumableSSE")
    print(f"wheel smoke: {label}: one stream served, resumed and ended over {base}; JS helper served")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_redis(folder: str) -> tuple[subprocess.Popen[bytes], int]:
    """A private redis-server (or valkey-server) on a free port, no persistence; never the default 6379."""
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    check(binary is not None, "no redis-server (or valkey-server) on PATH")
    assert binary is not None
    for _ in range(5):
        port = free_port()
        if port == 6379:
            continue
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                    connection.sendall(b"PING\r\n")
                    if connection.recv(16).startswith(b"+PONG"):
                        return process, port
            except OSError:
                time.sleep(0.05)
        process.kill()
        process.wait()
    raise SystemExit("wheel smoke: FAILED: could not start a private redis-server")


async def redis_stream(port: int) -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", key_prefix="wheel-smoke")
    await serve_one_stream(Streamer(store), f"Redis store on 127.0.0.1:{port}")
    client = redis.asyncio.Redis(port=port)
    try:
        keys = sorted(await client.keys("{wheel-smoke:answer-42}:*"))
    finally:
        await client.aclose()
    check(keys == [b"{wheel-smoke:answer-42}:e", b"{wheel-smoke:answer-42}:m"], f"the stream's keys in Redis: {keys}")


def main() -> None:
    check(len(sys.argv) == 2, "usage: wheel_smoke.py EXPECTED_VERSION")
    expected = sys.argv[1]
    location = Path(resumable_sse.__file__).resolve()
    check("site-packages" in location.parts, f"resumable_sse imported from {location}, not from an installed wheel")
    check(resumable_sse.__version__ == expected, f"__version__ {resumable_sse.__version__}, expected {expected}")
    installed = importlib.metadata.version("resumable-sse")
    check(installed == expected, f"installed distribution {installed}, expected {expected}")
    lua = sorted(p.name for p in (location.parent / "stores" / "lua").glob("*.lua"))
    check(bool(lua), "the wheel has no Lua scripts")
    print(f"wheel smoke: resumable-sse {installed} from {location.parent}; Lua scripts {', '.join(lua)}")

    asyncio.run(serve_one_stream(None, "quick start (memory store)"))

    folder = tempfile.mkdtemp(prefix="wheel-smoke-redis-")
    process, port = start_redis(folder)
    try:
        asyncio.run(redis_stream(port))
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
    print("wheel smoke: passed " + json.dumps({"version": installed, "python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
