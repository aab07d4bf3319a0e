"""The peers' rows of ``fleet.py``: resumable-stream 0.2 (Python) and 2.x (Node) on the same paced workload.

Both keep the tokens in the producer's memory and send Redis a few commands per stream and none per token (an
``INCR`` that claims it, a ``SUBSCRIBE`` for resume requests, a ``SET`` that marks it done, an ``UNSUBSCRIBE``): the
work they do for a stream nobody resumes, which is what the fleet measures. Each serves fleet.py's wire data
(``data: ready``, then ``data: tok <epoch ns>`` per token, then ``event: done``), so fleet.py's readers take the same
yield-to-receipt latency from every row.

  rs-python  resumable-stream 0.2 from PyPI (the ``bench`` extra) on aiohttp, in fleet.py's server process: its
             ``RedisPublisher`` with a connection pool of S + 100 (a claim per stream at once), its ``RedisSubscriber``
  rs-node    resumable-stream 2.x from npm (``rs_node/package.json``, pinned by its lock file; ``npm ci`` runs here
             when ``node_modules`` does not hold what the lock file says) on node's http server: ``rs_node/server.js``
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

PEERS = ("rs-python", "rs-node")
NODE_DIR = Path(__file__).resolve().parent / "rs_node"
_STAMP = ".resumable-sse-lock"  # node_modules holds what this copy of the lock file says


def node_command() -> list[str]:
    """The rs-node server's command line (``node``'s path), its packages installed first: a clear ``SystemExit``
    when node or npm is missing or ``npm ci`` fails."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise SystemExit("the rs-node row needs node (20 or later) and npm on the path; leave it out of --only")
    lock = (NODE_DIR / "package-lock.json").read_bytes()
    stamp = NODE_DIR / "node_modules" / _STAMP
    if not stamp.exists() or stamp.read_bytes() != lock:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"npm ci in {NODE_DIR} failed:\n{done.stdout}\n{done.stderr}")
        stamp.write_bytes(lock)
    return [node, str(NODE_DIR / "server.js")]


def rs_python(
    app: web.Application, source: Callable[[web.Request], AsyncIterator[str]], redis_url: str, streams: int
) -> None:
    """Serve ``GET /s/{stream_id}`` with resumable-stream 0.2's ``resumable_stream(id, make)`` on ``app``."""
    from resumable_stream import RedisPublisher, RedisSubscriber, create_resumable_stream_context

    contexts: list[Any] = []

    async def start(_app: web.Application) -> None:
        # Its README's create_resumable_stream_context(redis_url=...) raises TypeError in 0.2.0: pass the adapters
        # it would have made, connected. One claim per stream arrives at once: a pool for all of them.
        publisher = RedisPublisher(f"{redis_url}?max_connections={streams + 100}")
        subscriber = RedisSubscriber(redis_url)
        await publisher.connect()
        await subscriber.connect()
        # Its pub/sub connection opens on the first subscribe: open it before the readers' burst, so that a
        # thousand first subscribes do not each open one.
        await subscriber.subscribe("fleet:rs:warm", _ignore)
        contexts.append(create_resumable_stream_context(key_prefix="fleet", publisher=publisher, subscriber=subscriber))

    async def handler(request: web.Request) -> web.StreamResponse:
        async def make() -> AsyncIterator[str]:
            async for data in source(request):
                yield f"data: {data}\n\n"
            yield "event: done\ndata: {}\n\n"

        stream = await contexts[0].resumable_stream(request.match_info["stream_id"], make)
        if stream is None:
            return web.Response(status=422, text="the stream is already done\n")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):  # the reader went away (the benchmark is over)
            async for chunk in stream:
                await response.write(chunk.encode())
            await response.write_eof()
        return response

    app.on_startup.append(start)
    app.router.add_get("/s/{stream_id}", handler)


async def _ignore(_message: str) -> None:
    return None
