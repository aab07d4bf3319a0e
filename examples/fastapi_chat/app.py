"""The chat example on FastAPI: the same page and routes as ``examples.aiohttp_chat``, served by uvicorn.

Run it from the repository root (it needs the ``starlette`` extra, FastAPI and uvicorn)::

    python -m examples.fastapi_chat                      # embedded memory store, http://127.0.0.1:8000/
    python -m examples.fastapi_chat --redis redis://localhost:6379/0 --port 8001   # streams shared by processes

The page (``examples/aiohttp_chat/static``) and the fake model are the aiohttp example's; what differs is the
framework around the library:

* ``GET /stream/{stream_id}`` is :func:`resumable_sse.starlette.resumable_endpoint`, mounted with
  ``app.add_api_route``: the same protocol, byte for byte, as ``resumable_handler`` on aiohttp.
* The app's :class:`~resumable_sse.Streamer` lives in :func:`~resumable_sse.starlette.streamer_lifespan`: bound
  to uvicorn's loop at startup, producers given their grace period at shutdown.
* ``POST /api/answers`` starts the answer with :meth:`Streamer.start` (an async generator, or for the ``blocking``
  model a plain generator, which the Streamer runs in a worker thread), so it is generated once, in the background.
* ``POST /api/answers/{stream_id}/stop`` is :meth:`Streamer.cancel`; ``GET /api/stats`` counts producer runs.
* ``POST /api/chat`` and ``GET /api/chat/{id}/stream`` are the AI SDK's ``useChat`` routes
  (:func:`resumable_sse.ai_sdk_routes.starlette_chat_routes`, as ``examples.ai_sdk_chat`` serves them on aiohttp),
  with the chats' finished messages at ``GET /api/chats/{id}/messages``.
"""

from __future__ import annotations

import argparse
import collections
import importlib.resources
import logging
import re
import socket
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from resumable_sse import (
    EventLog,
    InvalidStreamId,
    MemoryStore,
    ProducerError,
    StoreFull,
    StoreUnavailable,
    Streamer,
    StreamerClosed,
    from_url,
)
from resumable_sse.ai_sdk_routes import ChatRequest, answer_id, starlette_chat_routes
from resumable_sse.starlette import resumable_endpoint, streamer_lifespan

from ..ai_sdk_chat.app import History
from ..aiohttp_chat.fake_llm import BlockingClient, answer_tokens, stream_answer, tokens_per_second

__all__ = ["ENGINES", "create_app", "main"]

STATIC: Final = importlib.resources.files("examples.aiohttp_chat").joinpath("static")
ENGINES: Final = ("async", "blocking")
ID_RE: Final = re.compile(r"[A-Za-z0-9]{1,40}")
# The listen queue: when another process of the fleet stops (a deploy), all of its clients reconnect here at once,
# and a full queue drops their connections for a second or more (the kernel caps it at net.core.somaxconn).
BACKLOG: Final = 4096
MAX_PROMPT: Final = 2000
MAX_MESSAGES: Final = 10_000

logger = logging.getLogger("examples.fastapi_chat")


@dataclass
class Chat:
    """The example's own state: the messages it was asked about (the first one recorded per stream wins) and
    counters that tests read through ``/api/stats``."""

    streamer: Streamer
    speed: float
    messages: collections.OrderedDict[str, tuple[str, str]] = field(default_factory=collections.OrderedDict)
    runs: collections.Counter[str] = field(default_factory=collections.Counter)
    stream_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def remember(self, stream_id: str, prompt: str, engine: str) -> tuple[str, str]:
        kept = self.messages.setdefault(stream_id, (prompt, engine))
        while len(self.messages) > MAX_MESSAGES:
            self.messages.popitem(last=False)
        return kept

    def producer(self, stream_id: str, prompt: str, engine: str) -> AsyncIterator[str] | Iterator[str]:
        """The answer's producer: an async generator, or a plain one that resumable-sse runs in a thread."""
        return self._blocking(stream_id, prompt) if engine == "blocking" else self._async(stream_id, prompt)

    def _count(self, stream_id: str) -> None:
        with self.lock:
            self.runs[stream_id] += 1

    async def _async(self, stream_id: str, prompt: str) -> AsyncIterator[str]:
        self._count(stream_id)
        async for token in stream_answer(prompt, self.speed):
            yield token

    def _blocking(self, stream_id: str, prompt: str) -> Iterator[str]:
        self._count(stream_id)
        yield from BlockingClient(self.speed).stream(prompt)


class CountStreamRequests:
    """Counts requests to ``/stream/`` (tests prove with it that a page does not loop reconnecting). A plain ASGI
    middleware: Starlette's BaseHTTPMiddleware would stand between the event stream and its disconnect signal."""

    def __init__(self, app: ASGIApp, chat: Chat) -> None:
        self.app, self.chat = app, chat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/stream/"):
            self.chat.stream_requests += 1
        await self.app(scope, receive, send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(store: EventLog | None = None, *, speed: float | None = None) -> FastAPI:
    """The chat application on ``store`` (default: an embedded memory store); ``speed`` is the fake model's tokens
    per second (0: no delay; default ``$CHAT_TOKENS_PER_SECOND``, else 30)."""
    streamer = Streamer(store if store is not None else MemoryStore(), grace_period=2.0)
    chat = Chat(streamer, tokens_per_second() if speed is None else speed)
    app = FastAPI(title="resumable-sse chat", lifespan=streamer_lifespan(streamer), docs_url=None, redoc_url=None)
    app.add_middleware(CountStreamRequests, chat=chat)
    script = importlib.resources.files("resumable_sse").joinpath("static/resumable-sse.js").read_bytes()
    no_cache = {"Cache-Control": "no-cache"}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC.joinpath("index.html")), headers=no_cache)

    @app.get("/resumable-sse.js", include_in_schema=False)
    async def helper_script() -> Response:
        return Response(script, media_type="text/javascript", headers=no_cache)

    @app.post("/api/answers")
    async def start_answer(request: Request) -> JSONResponse:
        """Start (or find) the answer to ``{"conversation", "message", "prompt", "engine"}``: idempotent, since the
        same conversation and message always name the same stream, whose producer runs once."""
        try:
            body: Any = await request.json()
        except ValueError:
            return _error(400, "the body must be JSON")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        for name in ("conversation", "message"):
            if not isinstance(body.get(name), str) or not ID_RE.fullmatch(body[name]):
                return _error(400, f"{name} must be 1-40 letters or digits")
        prompt, engine = body.get("prompt"), body.get("engine", "async")
        if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT:
            return _error(400, f"prompt must be a non-empty string of at most {MAX_PROMPT} characters")
        if engine not in ENGINES:
            return _error(400, f"engine must be one of {', '.join(ENGINES)}")
        stream_id = f"{body['conversation']}.{body['message']}"
        prompt, engine = chat.remember(stream_id, prompt.strip(), engine)
        try:
            started = await streamer.start(stream_id, lambda: chat.producer(stream_id, prompt, engine)) is not None
        except (StreamerClosed, StoreUnavailable, StoreFull) as exc:
            logger.warning("answer %r not started: %s", stream_id, exc)
            return _error(503, "the answer service is unavailable; try again shortly")
        reply = {"stream_id": stream_id, "url": f"/stream/{stream_id}", "started": started}
        return JSONResponse(reply, status_code=201 if started else 200)

    @app.post("/api/answers/{stream_id}/stop")
    async def stop_answer(stream_id: str) -> JSONResponse:
        """End the answer with ``cancelled`` for every reader, in every process sharing the store."""
        try:
            if await streamer.status(stream_id) is None:
                return _error(404, "no such answer (it may have expired)")
            cancelled = await streamer.cancel(stream_id)
        except InvalidStreamId as exc:
            return _error(400, str(exc))
        except StoreUnavailable as exc:
            logger.warning("answer %r not stopped: %s", stream_id, exc)
            return _error(503, "the answer service is unavailable; try again shortly")
        return JSONResponse({"stream_id": stream_id, "cancelled": cancelled})

    @app.get("/api/stats")
    async def stats() -> JSONResponse:
        with chat.lock:
            runs = dict(chat.runs)
        return JSONResponse(
            {"producer_runs": sum(runs.values()), "runs_by_stream": runs, "stream_requests": chat.stream_requests}
        )

    def answer_producer(request: Request) -> AsyncIterator[str] | Iterator[str]:
        """Run only for a known message whose stream is unknown (it expired before the page first read it)."""
        stream_id = request.path_params["stream_id"]
        if stream_id not in chat.messages:
            raise ProducerError("this server does not know that message; send it again")
        return chat.producer(stream_id, *chat.messages[stream_id])

    async def may_read(request: Request, stream_id: str) -> bool:
        """Serve only answers this app started, streams that exist, or a resume position (410 when unknown)."""
        if stream_id in chat.messages or request.headers.get("last-event-id"):
            return True
        return bool(request.query_params.get("last_event_id")) or await streamer.status(stream_id) is not None

    app.add_api_route("/stream/{stream_id}", resumable_endpoint(answer_producer, authorize=may_read))
    _add_ai_sdk_routes(app, chat)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


def _add_ai_sdk_routes(app: FastAPI, chat: Chat) -> None:
    """The AI SDK's ``useChat`` routes (as ``examples.ai_sdk_chat`` serves them on aiohttp): ``POST /api/chat``,
    ``GET /api/chat/{id}/stream`` (the resume: 204 when no answer runs), ``DELETE /api/chat/{id}/stream`` (cancel),
    and the chats' finished messages at ``GET /api/chats/{id}/messages`` (a page's initial messages)."""
    history = History()

    async def answer(request: ChatRequest) -> AsyncIterator[str]:
        """One answer, run once per turn: the turn joins the history now, the answer once it is complete."""
        sid = answer_id(request)
        with chat.lock:
            chat.runs[sid] += 1
        asked = [message for message in request.messages if message.get("id") != sid]
        await history.put(request.id, asked)
        prompt = request.last_user_text
        async for token in stream_answer(prompt, chat.speed):
            yield token
        said = {"id": sid, "role": "assistant", "parts": [{"type": "text", "text": "".join(answer_tokens(prompt))}]}
        await history.put(request.id, [*asked, said])

    app.router.routes.extend(starlette_chat_routes(answer, cancel=True))

    @app.get("/api/chats/{chat_id}/messages")
    async def messages(chat_id: str) -> JSONResponse:
        return JSONResponse(await history.get(chat_id))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m examples.fastapi_chat [--host H] [--port P] [--redis URL] [--speed N]``."""
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m examples.fastapi_chat",
        description="A chat page whose answers survive a refresh, served by FastAPI (the resumable-sse example).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default 8000)")
    parser.add_argument("--redis", metavar="URL", help="keep streams in Redis so several processes share them")
    parser.add_argument("--speed", type=float, default=None, help="tokens per second of the fake model, 0: no delay")
    args = parser.parse_args(argv)
    try:
        store = None if args.redis is None else from_url(args.redis)
    except (ImportError, ValueError) as exc:
        raise SystemExit(f"--redis: {exc} (the Redis store needs: pip install 'resumable-sse[redis]')") from exc
    app = create_app(store, speed=args.speed)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))  # bound here, so that the URL printed names the real port (--port 0)
    sock.listen(BACKLOG)  # connections wait in the backlog until uvicorn accepts them: the URL works once printed
    host, port = sock.getsockname()[:2]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    store_name = "memory store" if args.redis is None else f"Redis store at {args.redis}"
    print(f"resumable-sse chat example, FastAPI ({store_name}): open http://{shown}:{port}/", flush=True)
    print("Press Ctrl+C to stop.", flush=True)
    # Event streams never end by themselves while their producer runs: after Ctrl+C uvicorn waits at most 2 s for
    # them, then the lifespan gives producers their grace period. Clients reconnect to the next server.
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
