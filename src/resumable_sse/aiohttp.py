"""The aiohttp side: a handler factory that turns a generator into a resumable SSE endpoint.

::

    app.router.add_get("/stream/{stream_id}", resumable_handler(generate))

The handler serves the wire protocol that ``docs/protocol.md`` describes: it reads the position from
``Last-Event-ID`` (else ``?last_event_id=``), starts the producer only for a new stream, and sends a reader the
events after its position, then the live tail; a position it cannot continue gets a ``reset`` event first, never a
silent gap, and every refusal is a plain status code (400, 403, 410, 503) before any stream is read.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final, Literal

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter
from aiohttp.web_request import BaseRequest
from aiohttp_sse import EventSourceResponse

from ._heartbeats import MESSAGE as HEARTBEAT
from ._heartbeats import heartbeats
from ._http import Refusal, StreamOptions, WireProtocol, open_stream, position_of, relay
from ._streamer import Source, Streamer
from ._tasks import spawn
from .exceptions import InvalidStreamId

__all__ = ["STREAMER_KEY", "ResumableResponse", "resumable_handler", "setup"]

logger = logging.getLogger("resumable_sse")

STREAMER_KEY: Final = web.AppKey("resumable_sse.streamer", Streamer)
"""Where :func:`setup` keeps the application's :class:`~resumable_sse.Streamer`."""

ProducerFunction = Callable[[web.Request], Source]
"""``producer(request)``: an async generator function, or a plain generator function (run in a worker thread)."""

StreamIdFunction = Callable[[web.Request], str]
AuthorizeFunction = Callable[[web.Request, str], "bool | Awaitable[bool]"]

_DEFAULT_STREAMERS: weakref.WeakKeyDictionary[web.Application, Streamer] = weakref.WeakKeyDictionary()
_PING_IN_INIT: Final = "ping_interval" in inspect.signature(EventSourceResponse.__init__).parameters
# aiohttp-sse 3 refuses to prepare (even once prepared, as aiohttp does again after the handler) a response to any
# method but GET; the method was decided already (_http), and the AI SDK's chat route serves its stream to a POST.
_METHODS_IN_INIT: Final = "allow_all_methods" in inspect.signature(EventSourceResponse.__init__).parameters

# The attributes aiohttp's writer sets only once its response starts (each has a class default).
_LATE_WRITER_ATTRIBUTES: Final = ("length", "chunked", "buffer_size", "output_size", "_eof", "_compress")


def _share_writer_keys() -> None:
    """Teach aiohttp's ``StreamWriter`` class the names of all its attributes before any request is served.

    CPython 3.11+ keeps an instance's attributes in a table of names its class shares, as long as each name was
    added while few instances existed: every new instance leaves less room for new names. aiohttp's writer gets four
    of its attributes only when its response starts, so when a score of requests arrive before the first response
    starts (a burst of reconnects, or handlers that wait for a store before they start, as the Redis store's claim
    does) those names never join the table, and from then on every writer of the process keeps its attributes in a
    dict of its own: about 0.4 KB more per open connection (10,000 quiet connections on the Redis store: 20.3-20.5
    KiB each without this, 19.8-20.0 with it). One writer, made here and thrown away, sets them first, to the
    values they have anyway. (On 3.10 every instance has a dict of its own: this changes nothing there.)
    """
    writer = StreamWriter(None, None)  # type: ignore[arg-type]  # (never written to)
    for name in _LATE_WRITER_ATTRIBUTES:
        setattr(writer, name, getattr(writer, name, None))


_share_writer_keys()


def setup(app: web.Application, streamer: Streamer | None = None) -> Streamer:
    """Register ``streamer`` (default: one on a new memory store) with ``app`` and tie it to the app's lifetime.

    On shutdown open responses end cleanly (clients reconnect, elsewhere if the store is shared), then running
    producers get the streamer's grace period and are cancelled. Returns the streamer.
    """
    streamer = streamer if streamer is not None else Streamer()
    app[STREAMER_KEY] = streamer

    async def end_responses(_app: web.Application) -> None:
        streamer.end_readers()

    async def lifetime(_app: web.Application) -> AsyncIterator[None]:
        streamer.bind_loop()  # the app's loop: a SyncStreamer sharing this Streamer calls in here
        yield
        await streamer.close()

    app.on_shutdown.append(end_responses)
    app.cleanup_ctx.append(lifetime)
    return streamer


def _streamer_for(request: web.Request) -> Streamer:
    streamer = request.config_dict.get(STREAMER_KEY)
    if streamer is None:
        # No setup(): one embedded memory store per application (it cannot join a frozen app's cleanup, so
        # producers are not given a grace period on shutdown; call setup() for that).
        streamer = _DEFAULT_STREAMERS.get(request.app)
        if streamer is None:
            streamer = _DEFAULT_STREAMERS[request.app] = Streamer()
    return streamer


def _query(request: web.Request, name: str) -> str | None:
    """A query parameter, without parsing an empty query string (the parsed query is kept with the request's URL,
    which a quiet connection holds for as long as its stream runs)."""
    return request.query.get(name) if request.query_string else None


class _Watchdog:
    """One timer for every response of a loop that is in a write: each write records when it began (no timer of its
    own: most writes never wait), and a check every quarter of the shortest ``send_timeout`` aborts the responses
    whose oldest write in progress began longer ago than that."""

    def __init__(self) -> None:
        self.writing: set[ResumableResponse] = set()
        self.period = 1.0
        self.task: asyncio.Task[None] | None = None

    def watch(self, response: ResumableResponse, timeout: float) -> None:
        self.writing.add(response)
        self.period = min(self.period, max(timeout / 4, 0.01))
        if self.task is None or self.task.done():
            self.task = spawn(self.run(), "resumable-sse send timeouts")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.writing:
            await asyncio.sleep(self.period)
            now = loop.time()
            for response in list(self.writing):
                if response.started and response.started[0] + response.send_timeout <= now:
                    self.writing.discard(response)
                    response.stall()


_WATCHDOGS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchdog] = weakref.WeakKeyDictionary()


class ResumableResponse(EventSourceResponse):
    """aiohttp-sse's response with LF line ends and a configurable heartbeat, written to in whole batches.

    Every write (events, heartbeats, the end of the body) is bounded by ``send_timeout`` seconds: a client that
    reads nothing for that long has its connection aborted, and the write raises :class:`ConnectionResetError`.
    aiohttp-sse 2.x bounds no write at all, and 3.x only its own ``send()`` and heartbeats, so the bound is kept here,
    for every aiohttp-sse version the same (heartbeats go through :meth:`write` too).
    """

    def __init__(
        self, *, heartbeat: float, headers: Mapping[str, str] | None = None, send_timeout: float | None = 30.0
    ) -> None:
        if send_timeout is not None and send_timeout <= 0:
            raise ValueError("send_timeout must be positive (or None: no bound)")
        options: dict[str, Any] = {"headers": headers, "sep": "\n"}
        if _PING_IN_INIT:
            options["ping_interval"] = heartbeat
        if _METHODS_IN_INIT:
            options["allow_all_methods"] = True
        super().__init__(**options)
        if not _PING_IN_INIT:  # aiohttp-sse < 3 takes it through a property
            self.ping_interval = heartbeat
        self.heartbeat_at = 0.0  # when the next heartbeat is due (kept by the loop's heartbeat timer)
        self.heartbeat_ref: weakref.ReferenceType[Any] | None = None  # (the timer's, made once)
        self._heartbeat_due: asyncio.Future[None] | None = None  # set when that timer leaves a heartbeat to us
        self._ended = False
        self.send_timeout = send_timeout or 0.0
        self._write_timeout = send_timeout
        # When each write in progress began, oldest first (a heartbeat may run beside a batch); None while none is
        # (most of a quiet connection's life: no list kept for it).
        self.started: list[float] | None = None
        self._transport: asyncio.Transport | None = None
        self.stalled = False
        """True once a write took longer than ``send_timeout`` and the connection was aborted."""
        self.on_heartbeat_end: Callable[[], object] | None = None
        """Called when the heartbeat stops (a write failed: the client is gone), by :meth:`heartbeat_ended`."""

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if self._transport is None:
            self._transport = request.transport
        return await super().prepare(request)

    def heartbeat_task(self) -> asyncio.Future[None]:
        """What ends when the heartbeat stops: aiohttp-sse's heartbeat task itself (it ends when a write fails or
        :meth:`stop_streaming` is called), or, should a version of aiohttp-sse keep it elsewhere, a task awaiting
        :meth:`wait`. Watching the task itself costs a quiet connection no task of its own."""
        task = getattr(self, "_ping_task", None)
        if isinstance(task, asyncio.Future):
            return task
        return asyncio.ensure_future(self.wait())

    @property
    def heartbeat(self) -> float:
        """Seconds between heartbeats: aiohttp-sse's ping interval (which aiohttp-sse 2.x lets one change later)."""
        return float(self._ping_interval)

    async def _ping(self) -> None:
        """aiohttp-sse's heartbeat task (started by ``prepare``). It waits: the loop's one heartbeat timer sends the
        heartbeats (see ``_heartbeats.py``) and leaves here only those that could wait, written the bounded way; a
        write that fails ends the task, as aiohttp-sse's own does."""
        beats = heartbeats()
        loop = asyncio.get_running_loop()
        try:
            while True:
                due = self._heartbeat_due = loop.create_future()
                beats.add(self)
                await due
                await self.write(HEARTBEAT)
        finally:
            self._heartbeat_due = None

    def beat(self) -> bool:
        """The heartbeat timer's call when a heartbeat is due: sent at once if that cannot wait (True), else left to
        the heartbeat task, or dropped when that task has ended (False)."""
        due = self._heartbeat_due
        if due is None or due.done():
            return False
        if self.write_now(HEARTBEAT):
            return True
        due.set_result(None)
        return False

    def heartbeat_ended(self, task: asyncio.Future[None]) -> None:
        """A done callback for :meth:`heartbeat_task`: the heartbeat stopped, so whoever waits for events to write
        here stops waiting at once (``on_heartbeat_end``). A method rather than a closure or a partial: a quiet
        connection holds its callback for as long as it is open."""
        if self.on_heartbeat_end is not None:
            self.on_heartbeat_end()
        if not task.cancelled():
            task.exception()  # retrieved: a failed heartbeat only means the client is gone

    async def end(self) -> None:
        """End the body after the terminal event: bounded by ``send_timeout`` here, rather than unbounded by aiohttp
        after the handler returns."""
        self.stop_streaming()
        await self.write_eof()

    def stall(self) -> None:
        """The client read nothing for ``send_timeout``: abort the connection (a graceful close would wait for the
        client to read, forever)."""
        self.stalled = True
        if self._transport is not None:
            self._transport.abort()

    async def _bounded(self, write: Awaitable[None]) -> None:
        if self._write_timeout is None:
            await write
            return
        loop = asyncio.get_running_loop()
        watchdog = _WATCHDOGS.get(loop)
        if watchdog is None:
            watchdog = _WATCHDOGS[loop] = _Watchdog()
        began = loop.time()
        started = self.started
        if started is None:
            started = self.started = []
        started.append(began)
        watchdog.watch(self, self._write_timeout)
        try:
            await write
        finally:
            started.remove(began)
            if not started:
                self.started = None
                watchdog.writing.discard(self)
        if self.stalled:
            raise ConnectionResetError(f"the client read nothing for {self._write_timeout} s")

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.stalled:
            raise ConnectionResetError("the connection was aborted: the client stopped reading")
        # A write that cannot wait (most: heartbeats of quiet connections, batches to readers that keep up) needs no
        # bound: it goes at once, without the watchdog's bookkeeping.
        if isinstance(data, bytes) and self.write_now(data):
            return
        await self._bounded(super().write(data))

    async def write_eof(self, data: bytes = b"") -> None:
        self._ended = True
        await self._bounded(super().write_eof(data))

    def write_now(self, data: bytes) -> bool:
        """Write ``data`` at once, without waiting, or refuse: True when it was handed to the connection, False when
        it could wait for the client (no write of this response may be in progress, the socket's buffer must be
        empty and ``data`` within its high-water mark), so that the caller uses :meth:`write`, which waits and is
        bounded by ``send_timeout``. A reader that keeps up with a paced stream is written to this way in the step
        that appended its event: no task wakes, and no turn of the event loop passes, for it."""
        transport = self._transport
        if self.started or self.stalled or self._ended or self.compression or transport is None:
            return False
        if transport.is_closing():
            return False
        try:
            if transport.get_write_buffer_size() or len(data) > transport.get_write_buffer_limits()[1]:
                return False
        except NotImplementedError:  # a transport that cannot tell: every write goes the way that may wait
            return False
        # aiohttp's write is a coroutine, but one that waits only to drain a socket buffer over its high-water
        # mark, which the checks above rule out: run here, it completes in this very step.
        write = super().write(data)
        try:
            write.send(None)
        except StopIteration:
            return True
        except Exception:  # nothing was written (the connection closed under it): write() reports it
            return False
        # It waited after all (for a drain of what it wrote: the data is in the transport): no need to wait here.
        write.close()
        return True


def _refusal(refusal: Refusal) -> web.Response:
    """A refusal as aiohttp sends it: plain text with its message, an empty ``204``, or a HEAD's ``200`` (the event
    stream's headers, no body)."""
    if refusal.status == 204:
        return web.Response(status=204)
    if refusal.status == 200:
        return web.Response(status=200, headers=refusal.headers)
    return web.Response(status=refusal.status, text=refusal.message + "\n", headers=refusal.headers)


async def _start(response: ResumableResponse, request: web.Request) -> bool:
    """Write the response's headers; False when the client has already gone (nothing was started then)."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return False  # aiohttp-sse's prepare() would fail on it (an assertion in aiohttp-sse 3, a reset in 2)
    try:
        await response.prepare(request)
    except ConnectionError:
        return False
    return True


def _client_gone() -> web.Response:
    """What the access log records for a request whose client left before its response began."""
    return web.Response(status=499, reason="Client Closed Request")


def resumable_handler(
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
    send_timeout: float | None = 30.0,
    protocol: WireProtocol = "sse",
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler serving the resumable stream that ``producer(request)`` generates.

    :param producer: called once per stream, when a request finds the stream unknown and claims it; an async
        generator function, or a plain generator function (run in a worker thread). It runs in the background and
        keeps running when the client that started it goes away. It yields ``str``, ``bytes`` (UTF-8), JSON-able
        ``dict``/``list``, or :class:`~resumable_sse.Event`.
    :param streamer: the engine to use; default: the one :func:`setup` registered, else an embedded memory store.
    :param stream_id: ``stream_id(request) -> str``; default: the route's ``{stream_id}``, else the ``stream_id``
        query parameter. Validated (``[A-Za-z0-9._:-]``, at most 128 characters, not only dots) before anything
        else but the method.
    :param authorize: ``authorize(request, stream_id) -> bool`` (or awaitable); False means 403, nothing started or
        read.
    :param heartbeat: seconds between comment lines that keep proxies from closing a quiet stream.
    :param retry: milliseconds a browser waits before reconnecting (sent as ``retry:``).
    :param retry_jitter: the largest fraction (0..1) of ``retry`` randomly taken off the value each response sends,
        so that the clients of a process that stops all at once (a deploy) do not all come back at the same moment.
    :param on_unknown: what a request with a position for an unknown (expired) stream gets: ``gone``: 410 Gone,
        which makes EventSource stop reconnecting; ``restart``: the producer runs again as a new epoch and the
        client gets a ``reset`` first.
    :param headers: extra response headers for the event stream.
    :param protocol: ``"sse"``: the events as ``docs/protocol.md`` says; ``"ai-sdk"``: the AI SDK's UI message
        stream (:mod:`resumable_sse.ai_sdk`), which ``useChat`` reads: the producer yields text or UI message chunks.
    :param send_timeout: seconds any one write to the client (a batch of events, a heartbeat, the end of the
        body) may take. A client that reads nothing for that long (its socket buffers are full) has its connection
        aborted and its subscription closed; it can resume with ``Last-Event-ID``. The producer is never affected.
        ``None``: no bound (a stalled client is then held until the kernel gives up on it).
    """
    options = StreamOptions(
        heartbeat=heartbeat,
        retry=retry,
        on_unknown=on_unknown,
        headers=headers,
        protocol=protocol,
        retry_jitter=retry_jitter,
    )
    if send_timeout is not None and send_timeout <= 0:
        raise ValueError("send_timeout must be positive (or None: no bound)")

    def resolve_stream_id(request: web.Request) -> str:
        if stream_id is not None:
            return stream_id(request)
        value = request.match_info.get("stream_id") or _query(request, "stream_id")
        if value is None:
            raise InvalidStreamId("no stream id: route {stream_id} and query parameter stream_id are both missing")
        return value

    async def handler(request: web.Request) -> web.StreamResponse:
        engine = streamer if streamer is not None else _streamer_for(request)
        # The decision is _http's (the same for every framework); this handler only does aiohttp's I/O.
        opened = await open_stream(
            engine,
            options,
            method=request.method,
            stream_id=functools.partial(resolve_stream_id, request),
            position=position_of(request.headers.get("Last-Event-ID"), _query(request, "last_event_id")),
            authorize=None if authorize is None else functools.partial(authorize, request),
            # A partial keeps what producer is: an async generator function runs on the loop, a plain function
            # in a thread of its own (it may block before it returns).
            source=functools.partial(producer, request),
        )
        if isinstance(opened, Refusal):
            return _refusal(opened)
        subscription = opened
        try:
            response = ResumableResponse(
                heartbeat=heartbeat, headers=options.extra_headers(), send_timeout=send_timeout
            )
            if not await _start(response, request):
                logger.debug(
                    "the client of %r went away before the response started",
                    subscription.stream_id,
                    extra={"stream_id": subscription.stream_id},
                )
                return _client_gone()
            # All in this frame, with no task or closure of its own: a quiet connection is held for as long as its
            # stream runs, and holds all of this meanwhile.
            pinger = response.heartbeat_task()
            response.on_heartbeat_end = subscription.close
            gone = response.heartbeat_ended
            pinger.add_done_callback(gone)
            try:
                await relay(subscription, options, response.write, response.end, response.write_now)
            finally:
                pinger.remove_done_callback(gone)
                response.stop_streaming()
                if response.stalled:
                    logger.info(
                        "a reader of %r read nothing for %s s: its connection was aborted (it may resume with its "
                        "last id)",
                        subscription.stream_id,
                        send_timeout,
                        extra={"stream_id": subscription.stream_id},
                    )
        finally:
            subscription.close()
        return response

    return handler
