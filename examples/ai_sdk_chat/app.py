"""The AI SDK chat example: a React page with ``useChat({ resume: true })``, answered by aiohttp and resumable-sse.

Run it from the repository root (the page is built once with node and npm; nothing built is committed)::

    python -m examples.ai_sdk_chat.build            # npm ci (the pinned AI SDK, React, esbuild), then the bundle
    python -m examples.ai_sdk_chat                  # http://127.0.0.1:8080/
    python -m examples.ai_sdk_chat --redis redis://localhost:6379/0 --port 8081 --speed 10

What the server does:

* ``POST /api/chat`` and ``GET /api/chat/{id}/stream`` are :func:`resumable_sse.ai_sdk_routes.aiohttp_chat_routes`:
  the answer to a turn runs once, in the background, whoever asks for it and however often; a reload resumes it.
  ``DELETE /api/chat/{id}/stream`` cancels it (the page's Stop button calls it after ``useChat``'s ``stop()``).
* The answers come from the deterministic fake model of ``examples.aiohttp_chat`` (``answer_text`` of the last user
  message's text), at ``--speed`` tokens per second.
* The chat's history (``GET /api/chats/{id}/messages``: the finished messages, which the page hands ``useChat`` as
  its initial messages) gets each answer under its stream id, which is also the answer's ``messageId``: a reload
  just after an answer ended shows it once (from the history; the resume route answers 204), and a replay of an
  answer the history already holds replaces it rather than add it again.
* ``GET /api/stats`` counts the producer runs per chat (for the tests). With ``--redis`` the streams, the current
  answer of each chat and the history are kept in Redis, so several processes serve the same chats.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from resumable_sse import EventLog, Streamer, from_url, setup
from resumable_sse.ai_sdk_routes import ChatRequest, MemoryAnswers, RedisAnswers, aiohttp_chat_routes, answer_id

from ..aiohttp_chat.fake_llm import answer_text, stream_answer, tokens_per_second

__all__ = ["History", "create_app", "main"]

STATIC: Final = Path(__file__).resolve().parent / "static"
MAX_CHATS: Final = 10_000


class History:
    """Each chat's finished messages (UI messages, as ``useChat`` holds them): in memory, or in Redis."""

    def __init__(self, redis: Any = None, prefix: str = "ai-sdk-chat:history:") -> None:
        self.redis, self.prefix = redis, prefix
        self.chats: collections.OrderedDict[str, list[dict[str, Any]]] = collections.OrderedDict()

    async def get(self, chat_id: str) -> list[dict[str, Any]]:
        if self.redis is None:
            return list(self.chats.get(chat_id, []))
        raw = await self.redis.get(self.prefix + chat_id)
        return list(json.loads(raw)) if raw else []

    async def put(self, chat_id: str, messages: list[dict[str, Any]]) -> None:
        if self.redis is None:
            self.chats[chat_id] = messages
            self.chats.move_to_end(chat_id)
            while len(self.chats) > MAX_CHATS:
                self.chats.popitem(last=False)
        else:
            await self.redis.set(self.prefix + chat_id, json.dumps(messages), ex=24 * 3600)


def create_app(store: EventLog | None = None, *, speed: float | None = None, redis: Any = None) -> web.Application:
    """The example's application: the chat routes, the history, the page. ``redis``: a ``redis.asyncio`` client
    for the history and the current answers (the streams are in ``store``)."""
    pace = tokens_per_second() if speed is None else speed
    app = web.Application()
    setup(app, Streamer(store))
    history = History(redis)
    runs: collections.Counter[str] = collections.Counter()

    async def answer(chat: ChatRequest) -> AsyncIterator[str]:
        """The producer of one answer: the user's turn joins the history now, the answer once it is complete
        (before the stream's end is written, so a reader that sees the end finds it in the history)."""
        runs[chat.id] += 1
        prompt = chat.last_user_text
        asked = [message for message in chat.messages if message.get("id") != answer_id(chat)]
        await history.put(chat.id, asked)
        async for token in stream_answer(prompt, pace):
            yield token
        said = {"id": answer_id(chat), "role": "assistant", "parts": [{"type": "text", "text": answer_text(prompt)}]}
        await history.put(chat.id, [*asked, said])

    answers = MemoryAnswers() if redis is None else RedisAnswers(redis)
    app.add_routes(aiohttp_chat_routes(answer, answers=answers, cancel=True))

    async def messages(request: web.Request) -> web.Response:
        return web.json_response(await history.get(request.match_info["id"]))

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response({"runs": dict(runs)})

    async def index(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    app.router.add_get("/api/chats/{id}/messages", messages)
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/", index)
    app.router.add_static("/static", STATIC)
    return app


async def _serve(app: web.Application, host: str, port: int, store_name: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = "127.0.0.1" if bound_host in ("0.0.0.0", "") else bound_host
        if not (STATIC / "app.js").exists():
            print("the page is not built yet: python -m examples.ai_sdk_chat.build", flush=True)
        print(f"resumable-sse AI SDK chat example ({store_name}): open http://{shown}:{bound_port}/", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m examples.ai_sdk_chat [--host H] [--port P] [--speed TOKENS_PER_S] [--redis URL]``."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.ai_sdk_chat", description="useChat({ resume: true }) in front of resumable-sse."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default 8080)")
    parser.add_argument("--speed", type=float, default=None, help="tokens per second of the fake model (0: no delay)")
    parser.add_argument("--redis", metavar="URL", help="keep streams, answers and history in Redis")
    args = parser.parse_args(argv)
    store, redis = None, None
    if args.redis is not None:
        try:
            import redis.asyncio as aioredis

            store, redis = from_url(args.redis), aioredis.from_url(args.redis)
        except (ImportError, ValueError) as exc:
            raise SystemExit(f"--redis: {exc} (pip install 'resumable-sse[redis]')") from exc
    app = create_app(store, speed=args.speed, redis=redis)
    store_name = "memory store" if args.redis is None else f"Redis store at {args.redis}"
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(app, args.host, args.port, store_name))
