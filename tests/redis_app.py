"""An aiohttp server process on a shared Redis store, for the multi-process tests (run as a script).

    python tests/redis_app.py REDIS_URL KEY_PREFIX [LEASE]

Prints ``READY <port>`` once it listens on a free loopback port. Producers are chosen by stream id:

- ``count.N.MS``: N events ``event i``, MS milliseconds apart, then done.
- ``quiet``: one event, then silence for a minute (only a cancel or a kill ends it early).

Every producer start does ``INCR runs:<stream id>`` in Redis and its end (however it ends) ``SET stopped:<stream
id> <unix time>``, so a test sees across processes how often producers ran and when they stopped.
``POST /cancel/{stream_id}`` cancels a stream from this process.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator

import redis.asyncio
import redis.exceptions
from aiohttp import web

from resumable_sse import RedisStore, Streamer, resumable_handler, setup


def build(url: str, prefix: str, lease: float) -> web.Application:
    store = RedisStore.from_url(url, key_prefix=prefix)
    streamer = Streamer(store, lease=lease, grace_period=0.5)
    marks = redis.asyncio.Redis.from_url(url)

    async def produce(request: web.Request) -> AsyncIterator[str]:
        stream_id = request.match_info["stream_id"]
        await marks.incr(f"{prefix}:runs:{stream_id}")
        try:
            kind, _, rest = stream_id.partition(".")
            if kind == "count":
                count, _, pause = rest.partition(".")
                for i in range(int(count)):
                    yield f"event {i}"
                    await asyncio.sleep(int(pause or 0) / 1000)
            elif kind == "quiet":
                yield "hello"
                await asyncio.sleep(60)
        finally:
            await asyncio.shield(mark_stopped(stream_id, time.time()))

    async def mark_stopped(stream_id: str, when: float) -> None:
        for _ in range(100):  # the test may have restarted Redis: a pooled connection can be stale once
            try:
                await marks.set(f"{prefix}:stopped:{stream_id}", repr(when))
                return
            except redis.exceptions.ConnectionError:
                await asyncio.sleep(0.05)

    async def cancel(request: web.Request) -> web.Response:
        ended = await streamer.cancel(request.match_info["stream_id"])
        return web.json_response({"ended": ended})

    async def close_marks(_app: web.Application) -> None:
        await marks.aclose()

    app = web.Application()
    setup(app, streamer)
    app.router.add_get("/stream/{stream_id}", resumable_handler(produce, heartbeat=1.0))
    app.router.add_post("/cancel/{stream_id}", cancel)
    app.on_cleanup.append(close_marks)
    return app


async def main(url: str, prefix: str, lease: float) -> None:
    runner = web.AppRunner(build(url, prefix, lease))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"READY {port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 5.0))
