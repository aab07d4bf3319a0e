"""The AI SDK chat routes served for real (aiohttp's server, or FastAPI under uvicorn) on the test's own loop, with
a deterministic paced model whose runs are counted, so a test can compare what a client built with what was said."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from resumable_sse import MemoryStore, Streamer, setup
from resumable_sse.ai_sdk_routes import ChatRequest, aiohttp_chat_routes, starlette_chat_routes

from ._live_server import Uvicorn

FRAMEWORKS = ("aiohttp", "fastapi")


def answer_tokens(prompt: str, count: int) -> list[str]:
    """The model's answer to ``prompt``: ``count`` tokens, a pure function of both (Node computes the same)."""
    return [f"{prompt}-{i} " for i in range(count)]


@dataclass
class Model:
    """A paced fake model: ``count`` tokens, ``delay`` seconds apart; ``runs`` counts its runs per chat."""

    count: int = 200
    delay: float = 0.005
    runs: collections.Counter[str] = field(default_factory=collections.Counter)

    async def answer(self, chat: ChatRequest) -> AsyncIterator[str]:
        self.runs[chat.id] += 1
        count = int(chat.body.get("tokens", self.count))
        for token in answer_tokens(chat.last_user_text, count):
            await asyncio.sleep(self.delay)
            yield token


@contextlib.asynccontextmanager
async def chat_server(
    framework: str, model: Model, streamer: Streamer | None = None, **options: Any
) -> AsyncIterator[tuple[str, Streamer]]:
    """Serve the chat routes for ``model`` at ``/api/chat``; yields the base URL and the Streamer."""
    streamer = streamer or Streamer(MemoryStore(), grace_period=0.1)
    if framework == "aiohttp":
        app = web.Application()
        setup(app, streamer)
        app.add_routes(aiohttp_chat_routes(model.answer, cancel=True, heartbeat=1.0, **options))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}", streamer
        finally:
            await runner.cleanup()
    else:
        from fastapi import FastAPI

        from resumable_sse.starlette import streamer_lifespan

        asgi = FastAPI(lifespan=streamer_lifespan(streamer))
        asgi.router.routes.extend(starlette_chat_routes(model.answer, cancel=True, heartbeat=1.0, **options))
        async with Uvicorn(asgi) as server:
            yield f"http://127.0.0.1:{server.port}", streamer
