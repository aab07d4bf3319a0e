"""The application of tests/test_deploy_nginx.py, built like docs/deployment.md's ``myapp.py`` and served by the
gunicorn command of that page.

Configured by the environment: ``REDIS_URL``, ``KEY_PREFIX`` and ``BACKEND`` (a name this process sends as the
``X-Backend`` response header, so that a test behind the proxy knows which backend served each request). Producers
are chosen by stream id: ``paced.N.MS`` yields ``token i`` for i in 0..N-1, MS milliseconds apart. Every producer
start does ``INCR <prefix>:runs:<stream id>`` in Redis, so a test can count runs across processes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import redis.asyncio
from aiohttp import web

from resumable_sse import RedisStore, Streamer, resumable_handler, setup


async def create_app() -> web.Application:
    url, prefix, backend = os.environ["REDIS_URL"], os.environ["KEY_PREFIX"], os.environ["BACKEND"]
    marks = redis.asyncio.Redis.from_url(url)

    async def generate(request: web.Request) -> AsyncIterator[str]:
        stream_id = request.match_info["stream_id"]
        await marks.incr(f"{prefix}:runs:{stream_id}")
        kind, count, pause = stream_id.split(".")
        assert kind == "paced"
        for i in range(int(count)):
            await asyncio.sleep(int(pause) / 1000)
            yield f"token {i}"

    async def close_marks(_app: web.Application) -> None:
        await marks.aclose()

    app = web.Application()
    setup(app, Streamer(RedisStore.from_url(url, key_prefix=prefix), lease=1.0, grace_period=0.5))
    app.router.add_get(
        "/stream/{stream_id}", resumable_handler(generate, heartbeat=1.0, retry=100, headers={"X-Backend": backend})
    )
    app.on_cleanup.append(close_marks)
    return app
