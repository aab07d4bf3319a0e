"""The ASGI side: a resumable SSE endpoint for Starlette and FastAPI (``pip install "resumable-sse[starlette]"``).

::

    from fastapi import FastAPI
    from resumable_sse.starlette import resumable_endpoint, streamer_lifespan

    app = FastAPI(lifespan=streamer_lifespan(Streamer(store)))
    app.add_api_route("/stream/{stream_id}", resumable_endpoint(generate))
    # Starlette: Starlette(routes=[Route("/stream/{stream_id}", resumable_endpoint(generate))], lifespan=...)

The endpoint answers exactly as :func:`resumable_sse.resumable_handler` does on aiohttp, byte for byte: both hand the
request to :mod:`resumable_sse._http`, which decides the status and writes the stream; this module only speaks
ASGI (the response start, one ``http.response.body`` message per batch of ready events, the heartbeat, and the
``http.disconnect`` that tells a client went away, at once, with no write needed to find out).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final, Literal

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import Receive, Scope, Send
except ImportError as exc:  # an optional extra: say how to get it
    raise ImportError(
        f"resumable_sse.starlette needs Starlette ({exc}); install it with: pip install 'resumable-sse[starlette]'"
    ) from exc

from ._http import HEARTBEAT, Refusal, StreamOptions, WireProtocol, open_stream, position_of, relay
from ._streamer import Source, Streamer, Subscription
from .exceptions import InvalidStreamId

__all__ = ["STATE_KEY", "EventStreamResponse", "resumable_endpoint", "streamer_lifespan"]

STATE_KEY: Final = "resumable_sse_streamer"
"""The attribute of ``app.state`` where :func:`streamer_lifespan` keeps the application's Streamer."""

ProducerFunction = Callable[[Request], Source]
"""``producer(request)``: an async generator function, or a plain generator function (run in a worker thread)."""

StreamIdFunction = Callable[[Request], str]
AuthorizeFunction = Callable[[Request, str], "bool | Awaitable[bool]"]
Lifespan = Callable[[Starlette], contextlib.AbstractAsyncContextManager[dict[str, Any]]]

_DEFAULT_STREAMERS: weakref.WeakKeyDictionary[Any, Streamer] = weakref.WeakKeyDictionary()  # the app -> its own
_NO_APP: dict[str, Streamer] = {}  # the one for requests with no application in their scope


def streamer_lifespan(streamer: Streamer | None = None) -> Lifespan:
    """A lifespan that ties ``streamer`` (default: one on a new memory store) to the application's lifetime, as
    :func:`resumable_sse.setup` does on aiohttp: ``FastAPI(lifespan=streamer_lifespan(streamer))`` or
    ``Starlette(..., lifespan=...)``.

    At startup the streamer is bound to the server's loop (a :class:`~resumable_sse.SyncStreamer` sharing it may
    then be made at import time) and registered as ``app.state.resumable_sse_streamer`` and in the lifespan
    state (which Starlette hands every request, through ``Mount`` too), where endpoints made without ``streamer=``
    find it. At shutdown responses still open end (clients reconnect, elsewhere if the store
    is shared), running producers get the streamer's grace period and are then cancelled. ASGI servers run the
    lifespan's shutdown only after open responses have ended, so give uvicorn ``--timeout-graceful-shutdown``:
    an event stream never ends by itself while its producer runs.

    An application with a lifespan of its own enters this one inside it:
    ``async with streamer_lifespan(streamer)(app): yield``.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        engine = streamer if streamer is not None else Streamer()
        setattr(app.state, STATE_KEY, engine)
        engine.bind_loop()
        try:
            # Also as lifespan state: Starlette copies it into every request's scope, through Mounts too (a
            # mounted app's own app.state does not have it, and its own lifespan never runs).
            yield {STATE_KEY: engine}
        finally:
            await engine.close()

    return lifespan


def _streamer_for(request: Request) -> Streamer:
    lifespan_state = request.scope.get("state")
    engine = lifespan_state.get(STATE_KEY) if isinstance(lifespan_state, Mapping) else None
    if isinstance(engine, Streamer):
        return engine
    app = request.scope.get("app")
    engine = getattr(getattr(app, "state", None), STATE_KEY, None)
    if isinstance(engine, Streamer):
        return engine
    # No streamer_lifespan(): one embedded memory store per application (producers get no grace period on
    # shutdown then; use the lifespan for that); one for the process when there is no application (a bare Router).
    if app is None:
        if "streamer" not in _NO_APP:
            _NO_APP["streamer"] = Streamer()
        return _NO_APP["streamer"]
    engine = _DEFAULT_STREAMERS.get(app)
    if engine is None:
        engine = _DEFAULT_STREAMERS[app] = Streamer()
    return engine


class EventStreamResponse(Response):
    """The ``200`` event stream of one subscription, as ASGI messages.

    Each batch of events that are ready together is one ``http.response.body`` message; a heartbeat comment goes
    out every ``heartbeat`` seconds whatever else flows; an ``http.disconnect`` from the server closes the
    subscription at once. Writes are serialised, so a heartbeat never lands inside a batch whatever the server.
    """

    def __init__(self, subscription: Subscription, options: StreamOptions) -> None:
        # Response.__init__ is not called: it would add a Content-Length to a body that has no end.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in options.response_headers().items()
        ]
        self.subscription: Final = subscription
        self.options: Final = options

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscription, lock = self.subscription, asyncio.Lock()

        async def body(data: bytes, more: bool) -> None:
            async with lock:
                try:
                    await send({"type": "http.response.body", "body": data, "more_body": more})
                except OSError as exc:  # servers that raise on a gone client (uvicorn drops the message)
                    raise ConnectionError(str(exc)) from exc

        async def write(data: bytes) -> None:
            await body(data, True)

        async def end() -> None:
            await body(b"", False)

        async def heartbeats() -> None:
            while True:
                await asyncio.sleep(self.options.heartbeat)
                await write(HEARTBEAT)

        async def disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass  # the (empty) request body of a GET

        tasks = [asyncio.ensure_future(heartbeats()), asyncio.ensure_future(disconnect())]
        for task in tasks:  # a failed heartbeat or a disconnect: the client is gone, stop waiting for events
            task.add_done_callback(lambda _task: subscription.close())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await relay(subscription, self.options, write, end)
        except OSError:
            pass  # the client went away before the response started
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            subscription.close()
        if self.background is not None:
            await self.background()


def _refusal(refusal: Refusal) -> Response:
    if refusal.status == 204:
        return Response(status_code=204)
    if refusal.status == 200:  # a HEAD: the event stream's headers, no body
        return Response(status_code=200, headers=dict(refusal.headers))
    return Response(refusal.body, refusal.status, dict(refusal.headers), media_type="text/plain")


def resumable_endpoint(
    producer: ProducerFunction,
    *,
    streamer: Streamer | None = None,
    stream_id: StreamIdFunction | None = None,
    authorize: AuthorizeFunction | None = None,
    heartbeat: float = 15.0,
    retry: int = 2000,
    retry_jitter: float = 0.0,
    on_unknown: Literal["gone", "restart"] = "gone",
    headers: Mapping[str, str] | None = None,
    protocol: WireProtocol = "sse",
) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint serving the resumable stream that ``producer(request)`` generates, for FastAPI
    (``app.add_api_route(path, endpoint)``) and Starlette (``Route(path, endpoint)``).

    It answers as :func:`resumable_sse.resumable_handler` does (``docs/protocol.md``): ``200`` and the events after
    the request's position (``Last-Event-ID``, else ``?last_event_id=``) then the live tail, ``204`` at the end of
    a finished stream, ``400``/``403``/``405``/``410``/``503`` refusals before anything is started or read.

    :param producer: called once per stream, only when a request claims a new stream; an async generator function
        runs on the loop, a plain generator function in a worker thread of its own. It runs in the background and
        keeps running when the client that started it goes away.
    :param streamer: the engine; default: the one :func:`streamer_lifespan` registered, else an embedded memory
        store per application.
    :param stream_id: ``stream_id(request) -> str``; default: the path parameter ``stream_id``, else the
        ``stream_id`` query parameter.
    :param authorize: ``authorize(request, stream_id) -> bool`` (or awaitable); False means 403.
    :param heartbeat: seconds between ``: ping`` comments that keep proxies from closing a quiet stream.
    :param retry: milliseconds a browser waits before reconnecting (sent as ``retry:``).
    :param retry_jitter: the largest fraction (0..1) of ``retry`` randomly taken off the value each response sends,
        so that the clients of a process that stops all at once (a deploy) do not all come back at the same moment.
    :param on_unknown: a position for an unknown (expired) stream gets ``gone`` (410) or ``restart`` (the producer
        runs again as a new epoch, after a ``reset``).
    :param headers: extra response headers for the event stream (the event stream's own cannot be overridden).
    :param protocol: ``"sse"``: the events as ``docs/protocol.md`` says; ``"ai-sdk"``: the AI SDK's UI message
        stream (:mod:`resumable_sse.ai_sdk`), which ``useChat`` reads: the producer yields text or UI message chunks.

    A client that stops reading without disconnecting is not cut off here (ASGI gives an application no way to
    abort a connection): it holds its subscription, a cursor and no copy of the stream, until the server or the
    kernel drops the connection. The producer never waits for a reader.
    """
    options = StreamOptions(
        heartbeat=heartbeat,
        retry=retry,
        on_unknown=on_unknown,
        headers=headers,
        protocol=protocol,
        retry_jitter=retry_jitter,
    )

    def resolve_stream_id(request: Request) -> str:
        if stream_id is not None:
            return stream_id(request)
        value = request.path_params.get("stream_id") or request.query_params.get("stream_id")
        if value is None:
            raise InvalidStreamId("no stream id: path parameter stream_id and query parameter stream_id are missing")
        return str(value)

    async def endpoint(request: Request) -> Response:
        opened = await open_stream(
            streamer if streamer is not None else _streamer_for(request),
            options,
            method=request.method,
            stream_id=functools.partial(resolve_stream_id, request),
            position=position_of(request.headers.get("last-event-id"), request.query_params.get("last_event_id")),
            authorize=None if authorize is None else functools.partial(authorize, request),
            source=functools.partial(producer, request),
        )
        if isinstance(opened, Refusal):
            return _refusal(opened)
        return EventStreamResponse(opened, options)

    # What FastAPI's OpenAPI schema shows for the route (its summary and description).
    endpoint.__name__ = endpoint.__qualname__ = "resumable_stream"
    endpoint.__doc__ = (
        "A resumable Server-Sent Events stream (text/event-stream): send Last-Event-ID (or ?last_event_id=) to get "
        "the events after it; 204 at the end of a finished stream, 410 for an unknown one."
    )
    return endpoint
