"""An aiohttp server process on a shared Redis store, for the multi-process tests (run as a script).

    python tests/redis_app.py REDIS_URL KEY_PREFIX [LEASE [OPTIONS_JSON]]

``OPTIONS_JSON`` (optional) is an object: ``store`` (keyword options for ``RedisStore.from_url``, e.g.
``{"socket_timeout": 0.5}``), ``streamer`` (keyword options for ``Streamer``), ``marks_url`` (the Redis URL of the
marks below, when the store's URL goes through a proxy) and ``log`` (``"json"``: every record of the
``resumable_sse`` logger goes to stderr as one JSON object a line, with ``name``, ``level``, ``message``,
``stream_id`` (the record's ``extra``, else null) and ``time``).

Prints ``READY <port>`` once it listens on a free loopback port. Producers are chosen by stream id:

- ``count.N.MS``: N events ``event i``, MS milliseconds apart, then done (``count.N.MS.TAG`` the same).
- ``quiet``: one event, then silence for a minute (only a cancel or a kill ends it early).

Every producer start does ``INCR runs:<stream id>`` in Redis and its end (however it ends) ``SET stopped:<stream
id> <unix time>``, so a test sees across processes how often producers ran and when they stopped.
``POST /cancel/{stream_id}`` cancels a stream from this process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio
import redis.exceptions
from aiohttp import web

from resumable_sse import RedisStore, Streamer, resumable_handler, setup


class JsonLines(logging.Formatter):
    """One JSON object a line: what the fault tests read back from a server's stderr."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "name": record.name,
                "level": record.levelname,
                "message": record.getMessage(),
                "stream_id": getattr(record, "stream_id", None),
                "time": record.created,
            }
        )


def build(url: str, prefix: str, lease: float, options: dict[str, Any] | None = None) -> web.Application:
    options = options or {}
    store = RedisStore.from_url(url, key_prefix=prefix, **options.get("store", {}))
    streamer = Streamer(store, **{"lease": lease, "grace_period": 0.5, **options.get("streamer", {})})
    marks = redis.asyncio.Redis.from_url(options.get("marks_url", url))

    async def produce(request: web.Request) -> AsyncIterator[str]:
        stream_id = request.match_info["stream_id"]
        await marks.incr(f"{prefix}:runs:{stream_id}")
        try:
            kind, _, rest = stream_id.partition(".")
            if kind == "count":
                count, _, pause = rest.partition(".")
                pause = pause.partition(".")[0]  # count.N.MS.TAG: the tag only makes the stream id new
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


async def main(url: str, prefix: str, lease: float, options: dict[str, Any] | None = None) -> None:
    if (options or {}).get("log") == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLines())
        logger = logging.getLogger("resumable_sse")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    runner = web.AppRunner(build(url, prefix, lease, options))
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
    asyncio.run(
        main(
            sys.argv[1],
            sys.argv[2],
            float(sys.argv[3]) if len(sys.argv) > 3 else 5.0,
            json.loads(sys.argv[4]) if len(sys.argv) > 4 else None,
        )
    )
