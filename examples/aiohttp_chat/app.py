"""A chat page whose answers survive a refresh: the resumable-sse example application.

Run it from the repository root::

    python -m examples.aiohttp_chat                      # embedded memory store, http://127.0.0.1:8080/
    python -m examples.aiohttp_chat --redis redis://localhost:6379/0 --port 8081   # streams shared by processes

How it fits together:

* ``POST /api/answers`` records the user's message and starts its answer, so the answer is generated once, in the
  background, even if the page closes at once. The stream id is derived from the conversation id and the message id
  the page chose, so a page that repeats the POST after a refresh gets the same stream, never a second answer.
  Two models show the two kinds of producer: ``async`` is an async generator started with :meth:`Streamer.start`;
  ``blocking`` is a blocking SDK-style generator fed through :class:`~resumable_sse.SyncStreamer` from a worker
  thread (its :meth:`~resumable_sse.SyncStreamer.writer` claims the stream before the POST answers).
* ``GET /stream/{stream_id}`` is :func:`resumable_sse.aiohttp.resumable_handler`: the page reads the answer there,
  and reconnects with ``?last_event_id=`` after a refresh to get exactly the tokens it missed.
* ``POST /api/answers/{stream_id}/stop`` calls :meth:`Streamer.cancel`: the stream ends with ``cancelled`` for every
  tab (and every process sharing the store), not only for the tab that pressed Stop.
* ``GET /api/stats`` counts producer runs and stream requests, so tests can prove an answer was generated once.
* ``GET /metrics`` is the Prometheus scrape of the library's metrics (streams, readers, requests by outcome, store
  latency), when the ``prometheus`` extra is installed (``pip install 'resumable-sse[prometheus]'``).

The page (``static/``) is plain HTML, CSS and JavaScript; the reusable part of its JavaScript, the resumable stream
helper, ships with the library as ``resumable_sse/static/resumable-sse.js`` and is served at ``/resumable-sse.js``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib.resources
import logging
import re
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from aiohttp import web

from resumable_sse import (
    EventLog,
    InvalidStreamId,
    MemoryStore,
    ProducerError,
    StoreFull,
    StoreUnavailable,
    StreamAlreadyClaimed,
    Streamer,
    StreamerClosed,
    SyncStreamer,
    SyncWriter,
    from_url,
)
from resumable_sse.aiohttp import STREAMER_KEY, resumable_handler, setup

from .fake_llm import BlockingClient, stream_answer, tokens_per_second

try:  # the prometheus extra: without it the example runs the same, without /metrics
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from resumable_sse.prometheus import PrometheusMetrics
except ImportError:  # pragma: no cover - exercised where prometheus_client is not installed
    PrometheusMetrics = None  # type: ignore[assignment,misc]

__all__ = ["ENGINES", "ChatState", "create_app", "main"]

STATIC: Final = Path(__file__).resolve().parent / "static"
ENGINES: Final = ("async", "blocking")
"""``async``: the model as an async generator; ``blocking``: a blocking SDK-style client run in a worker thread."""

logger = logging.getLogger("examples.aiohttp_chat")

_ID_RE: Final = re.compile(r"[A-Za-z0-9]{1,40}")
MAX_PROMPT: Final = 2000
MAX_MESSAGES: Final = 10_000
# The listen queue: when another process of the fleet stops (a deploy), all of its clients reconnect here at once,
# and a full queue drops their connections for a second or more (the kernel caps it at net.core.somaxconn).
BACKLOG: Final = 4096


@dataclass
class Message:
    """A user's message: what the producer of its answer needs."""

    prompt: str
    engine: str


@dataclass
class ChatState:
    """The example's own state: the messages it was asked about and counters for tests."""

    speed: float
    messages: collections.OrderedDict[str, Message] = field(default_factory=collections.OrderedDict)
    producer_runs: collections.Counter[str] = field(default_factory=collections.Counter)
    stream_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def remember(self, stream_id: str, message: Message) -> Message:
        """Record ``message`` under ``stream_id`` (the first one recorded wins) and return the one kept."""
        kept = self.messages.setdefault(stream_id, message)
        while len(self.messages) > MAX_MESSAGES:
            self.messages.popitem(last=False)
        return kept

    def count_run(self, stream_id: str) -> None:
        """Called by a producer as it starts generating (on the loop or in a worker thread)."""
        with self.lock:
            self.producer_runs[stream_id] += 1


CHAT_KEY: Final = web.AppKey("chat_state", ChatState)
SYNC_KEY: Final = web.AppKey("sync_streamer", SyncStreamer)


def _source(state: ChatState, stream_id: str, message: Message) -> AsyncIterator[str] | Iterator[str]:
    """The producer of one answer: an async generator, or a plain generator that resumable-sse runs in a thread."""
    if message.engine == "blocking":
        return _blocking_answer(state, stream_id, message.prompt)
    return _async_answer(state, stream_id, message.prompt)


async def _async_answer(state: ChatState, stream_id: str, prompt: str) -> AsyncIterator[str]:
    state.count_run(stream_id)
    async for token in stream_answer(prompt, state.speed):
        yield token


def _blocking_answer(state: ChatState, stream_id: str, prompt: str) -> Iterator[str]:
    # A plain generator: resumable-sse sees it is not async and drains it in a worker thread, so the
    # blocking client (time.sleep between tokens, like a synchronous HTTP SDK) never blocks the event loop.
    state.count_run(stream_id)
    yield from BlockingClient(state.speed).stream(prompt)


def _write_blocking_answer(state: ChatState, writer: SyncWriter, prompt: str) -> None:
    """In a worker thread: pump the blocking SDK's generator into the stream through the SyncStreamer.

    Leaving the ``with`` block ends the stream with ``done`` (or ``error`` if the SDK raised). When the stream is
    stopped from outside (Stop, or the server shutting down) ``send()`` raises and the block ends quietly.
    """
    try:
        state.count_run(writer.stream_id)
        with writer:
            for token in BlockingClient(state.speed).stream(prompt):
                writer.send(token)
    except StreamerClosed:
        pass  # the server shut down while the SDK was between tokens: the stream was ended as cancelled
    except Exception:  # the stream already recorded how it ended; a thread has nobody else to tell
        logger.warning("blocking producer of %r ended abnormally", writer.stream_id, exc_info=True)


async def _start_blocking(request: web.Request, stream_id: str, message: Message) -> bool:
    """Claim ``stream_id`` through the SyncStreamer and run the blocking SDK in a thread; False if it exists."""
    sync = request.app[SYNC_KEY]
    try:
        # writer() blocks until the claim is made on the loop, so it is called from a thread (never the loop's).
        writer = await asyncio.get_running_loop().run_in_executor(None, sync.writer, stream_id)
    except StreamAlreadyClaimed:
        return False
    thread = threading.Thread(
        target=_write_blocking_answer,
        args=(request.app[CHAT_KEY], writer, message.prompt),
        name=f"blocking SDK {stream_id}",
        daemon=True,
    )
    thread.start()
    return True


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _unavailable(what: str, exc: Exception) -> web.Response:
    """503 for a request the streamer cannot serve now (shutting down, store down or full); the reason is logged."""
    logger.warning("%s: %s", what, exc)
    return _error(503, "the answer service is unavailable; try again shortly")


async def index(request: web.Request) -> web.FileResponse:
    """The chat page."""
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def helper_script(request: web.Request) -> web.Response:
    """The reusable browser helper, served from the installed library's package data."""
    script = importlib.resources.files("resumable_sse").joinpath("static/resumable-sse.js").read_bytes()
    return web.Response(body=script, content_type="text/javascript", headers={"Cache-Control": "no-cache"})


async def start_answer(request: web.Request) -> web.Response:
    """``POST /api/answers`` with ``{"conversation", "message", "prompt", "engine"}``: start (or find) the answer.

    Idempotent: the same conversation and message always name the same stream, and its producer runs once.
    """
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    conversation, message_id = body.get("conversation"), body.get("message")
    prompt, engine = body.get("prompt"), body.get("engine", "async")
    for name, value in (("conversation", conversation), ("message", message_id)):
        if not isinstance(value, str) or not _ID_RE.fullmatch(value):
            return _error(400, f"{name} must be 1-40 letters or digits")
    if not isinstance(prompt, str) or not prompt.strip():
        return _error(400, "prompt must be a non-empty string")
    if len(prompt) > MAX_PROMPT:
        return _error(400, f"prompt must be at most {MAX_PROMPT} characters")
    if engine not in ENGINES:
        return _error(400, f"engine must be one of {', '.join(ENGINES)}")
    state = request.app[CHAT_KEY]
    streamer = request.app[STREAMER_KEY]
    stream_id = f"{conversation}.{message_id}"
    message = state.remember(stream_id, Message(prompt.strip(), engine))
    try:
        if message.engine == "blocking":
            started = await _start_blocking(request, stream_id, message)
        else:
            started = await streamer.start(stream_id, lambda: _source(state, stream_id, message)) is not None
    except (StreamerClosed, StoreUnavailable, StoreFull) as exc:  # shutting down, Redis down, memory store full
        return _unavailable(f"answer {stream_id!r} not started", exc)
    return web.json_response(
        {"stream_id": stream_id, "url": f"/stream/{stream_id}", "started": started}, status=201 if started else 200
    )


async def stop_answer(request: web.Request) -> web.Response:
    """``POST /api/answers/{stream_id}/stop``: end the answer with ``cancelled`` for every reader, everywhere."""
    stream_id = request.match_info["stream_id"]
    streamer = request.app[STREAMER_KEY]
    try:
        if await streamer.status(stream_id) is None:
            return _error(404, "no such answer (it may have expired)")
        cancelled = await streamer.cancel(stream_id)
    except InvalidStreamId as exc:
        return _error(400, str(exc))
    except StoreUnavailable as exc:
        return _unavailable(f"answer {stream_id!r} not stopped", exc)
    return web.json_response({"stream_id": stream_id, "cancelled": cancelled})


async def stats(request: web.Request) -> web.Response:
    """Counters for tests and the curious: producer runs per stream, and requests made to ``/stream/``."""
    state = request.app[CHAT_KEY]
    with state.lock:
        runs = dict(state.producer_runs)
    return web.json_response(
        {"producer_runs": sum(runs.values()), "runs_by_stream": runs, "stream_requests": state.stream_requests}
    )


def _metrics_route(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /metrics``: the Prometheus text exposition of ``registry`` (the library's metrics for this process)."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics


def _answer_producer(request: web.Request) -> AsyncIterator[str] | Iterator[str]:
    """The producer ``/stream/{stream_id}`` runs for a known message whose stream is unknown (it expired before
    the page first read it); the POST normally starts the answer, so this is rarely called.

    For the ``blocking`` model it returns the plain generator, which resumable_handler runs in a worker thread: the
    other way to serve blocking code, with no SyncStreamer involved."""
    state = request.app[CHAT_KEY]
    stream_id = request.match_info["stream_id"]
    message = state.messages.get(stream_id)
    if message is None:
        raise ProducerError("this server does not know that message; send it again")
    return _source(state, stream_id, message)


async def _may_read(request: web.Request, stream_id: str) -> bool:
    """Serve only answers this app started: a message it knows, a stream that exists (perhaps started by another
    process sharing the store), or a resume position (an unknown stream then gets 410 Gone, not a new answer)."""
    if stream_id in request.app[CHAT_KEY].messages:
        return True
    if request.headers.get("Last-Event-ID") or request.query.get("last_event_id"):
        return True
    return await request.app[STREAMER_KEY].status(stream_id) is not None


@web.middleware
async def count_stream_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Count requests to ``/stream/`` (tests use it to prove that a page does not loop reconnecting)."""
    if request.path.startswith("/stream/"):
        request.app[CHAT_KEY].stream_requests += 1
    return await handler(request)


def create_app(store: EventLog | None = None, *, speed: float | None = None) -> web.Application:
    """The chat application on ``store`` (default: an embedded memory store).

    :param speed: tokens per second of the fake model (0: as fast as possible); default ``CHAT_TOKENS_PER_SECOND``
        from the environment, else 30.
    """
    app = web.Application(middlewares=[count_stream_requests])
    app[CHAT_KEY] = ChatState(speed=tokens_per_second() if speed is None else speed)
    observer = None
    if PrometheusMetrics is not None:
        # A registry per application (a real server would use prometheus_client's default REGISTRY, the default of
        # PrometheusMetrics()): the tests make many applications in one process.
        registry = CollectorRegistry()
        observer = PrometheusMetrics(registry)
        app.router.add_get("/metrics", _metrics_route(registry))
    streamer = setup(app, Streamer(store if store is not None else MemoryStore(), grace_period=2.0, observer=observer))
    app[SYNC_KEY] = SyncStreamer(streamer)  # blocking code's way in: it shares the app's Streamer and loop
    app.router.add_get("/", index)
    app.router.add_get("/resumable-sse.js", helper_script)
    app.router.add_static("/static/", STATIC, append_version=False)
    app.router.add_post("/api/answers", start_answer)
    app.router.add_post("/api/answers/{stream_id}/stop", stop_answer)
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/stream/{stream_id}", resumable_handler(_answer_producer, authorize=_may_read))
    return app


def _store_from_args(redis_url: str | None) -> EventLog | None:
    if redis_url is None:
        return None
    try:
        return from_url(redis_url)
    except ImportError as exc:
        raise SystemExit(
            f"--redis needs the Redis store, which is not available here ({exc}).\n"
            "Install it with: pip install 'resumable-sse[redis]'"
        ) from exc
    except ValueError as exc:
        raise SystemExit(f"--redis: {exc}") from exc


async def _serve(app: web.Application, host: str, port: int, store_name: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl+C raises KeyboardInterrupt instead
            loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=BACKLOG)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = "127.0.0.1" if bound_host in ("0.0.0.0", "") else bound_host
        shown = f"[{shown}]" if ":" in shown else shown
        print(f"resumable-sse chat example ({store_name}): open http://{shown}:{bound_port}/", flush=True)
        print("Press Ctrl+C to stop.", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point: ``python -m examples.aiohttp_chat [--host H] [--port P] [--redis URL]``."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.aiohttp_chat",
        description="A chat page whose answers survive a refresh (the resumable-sse example).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default 8080)")
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="keep streams in Redis (e.g. redis://localhost:6379/0) so several processes share them; "
        "default: an embedded memory store",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=None,
        help="tokens per second of the fake model, 0 for no delay (default: $CHAT_TOKENS_PER_SECOND, else 30)",
    )
    args = parser.parse_args(argv)
    store = _store_from_args(args.redis)
    app = create_app(store, speed=args.speed)
    store_name = "memory store" if args.redis is None else f"Redis store at {args.redis}"
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(app, args.host, args.port, store_name))
