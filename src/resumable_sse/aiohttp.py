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
import contextlib
import functools
import inspect
import socket
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final, Literal

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_request import BaseRequest
from aiohttp_sse import EventSourceResponse

from ._compat_aiohttp import share_writer_keys, write_at_once
from ._heartbeats import MESSAGE as HEARTBEAT
from ._heartbeats import heartbeats
from ._http import Refusal, StreamOptions, WireProtocol, open_stream, position_of, relay
from ._logger import logger
from ._streamer import Source, Streamer
from ._tasks import spawn
from .exceptions import InvalidStreamId

__all__ = ["STREAMER_KEY", "ResumableResponse", "resumable_handler", "setup"]


STREAMER_KEY: Final = web.AppKey("resumable_sse.streamer", Streamer)
"""Where :func:`setup` keeps the application's :class:`~resumable_sse.Streamer`."""

ProducerFunction = Callable[[web.Request], Source]
"""``producer(request)``: an async generator function, or a plain generator function (run in a worker thread)."""

StreamIdFunction = Callable[[web.Request], str]
AuthorizeFunction = Callable[[web.Request, str], "bool | Awaitable[bool]"]

_DEFAULT_STREAMERS: weakref.WeakKeyDictionary[web.Application, Streamer] = weakref.WeakKeyDictionary()
_SSE_OPTIONS: Final = inspect.signature(EventSourceResponse.__init__).parameters
_TCP_USER_TIMEOUT: Final[int | None] = getattr(socket, "TCP_USER_TIMEOUT", None)  # (Linux only)
_NO_PING: Final = 10 * 365 * 86400.0
"""aiohttp-sse's own heartbeat interval: never reached (its task is stopped at once; ours go out on one timer)."""

share_writer_keys()


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
    """A query parameter; an empty query string is not parsed (memory per connection: ``benchmarks/idle.py``)."""
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
                timeout = response.send_timeout
                if response.started and timeout is not None and response.started[0] + timeout <= now:
                    self.writing.discard(response)
                    response.stall()


_WATCHDOGS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchdog] = weakref.WeakKeyDictionary()


class ResumableResponse(EventSourceResponse):
    """aiohttp-sse's response with LF line ends and a configurable heartbeat, written to in whole batches.

    Every write (events, heartbeats, the end of the body) is bounded by ``send_timeout`` seconds: a client that
    reads nothing for that long has its connection aborted, and the write raises :class:`ConnectionResetError`.
    The kernel is told the same bound: the socket's ``TCP_USER_TIMEOUT`` (Linux) is ``send_timeout`` while the
    response lasts (0, the system's own, for ``None``). aiohttp-sse 2.x bounds nothing and 3.x sets its own 120 s,
    so both bounds are kept here, the same for every aiohttp-sse version.

    Heartbeats go out on one timer per event loop and interval (``_heartbeats.py``), not from a task per response:
    aiohttp-sse's own heartbeat task is stopped once the response starts (so :meth:`wait` returns at once; the
    handler knows the client is gone when a write, a heartbeat's included, fails).
    """

    def __init__(
        self, *, heartbeat: float, headers: Mapping[str, str] | None = None, send_timeout: float | None = 30.0
    ) -> None:
        if send_timeout is not None and send_timeout <= 0:
            raise ValueError("send_timeout must be positive (or None: no bound)")
        if heartbeat <= 0:
            raise ValueError("heartbeat must be positive")
        options: dict[str, Any] = {"headers": headers, "sep": "\n"}
        if "ping_interval" in _SSE_OPTIONS:
            options["ping_interval"] = _NO_PING
        if "send_timeout" in _SSE_OPTIONS:
            options["send_timeout"] = None  # aiohttp-sse 3 leaves the socket alone: the bound is set here
        if "allow_all_methods" in _SSE_OPTIONS:
            # aiohttp-sse 3 refuses to prepare (even once prepared, as aiohttp does again after the handler) a
            # response to any method but GET; the method was decided already (_http), and the AI SDK's chat route
            # serves its stream to a POST.
            options["allow_all_methods"] = True
        super().__init__(**options)
        if "ping_interval" not in _SSE_OPTIONS:  # aiohttp-sse < 3 takes it through a property
            self.ping_interval = _NO_PING
        self.heartbeat = float(heartbeat)
        """Seconds between heartbeats."""
        self.heartbeat_at = 0.0  # when the next heartbeat is due (kept by the loop's heartbeat timer)
        self.heartbeat_ref: weakref.ReferenceType[Any] | None = None  # (the timer's, made once)
        # False: no heartbeats (before prepare(), after stop_streaming() or a failed heartbeat); True: heartbeats go
        # out on the timer; a task: also one that had to wait is being written.
        # Keep attributes few: at 30 (with aiohttp's and aiohttp-sse's) CPython 3.11 gives each response a dict of
        # its own, 1.3 KB per connection (benchmarks/idle.py, tests/test_compat.py).
        self._beat: bool | asyncio.Task[None] = False
        self.send_timeout = send_timeout
        """Seconds any one write may take (None: no bound)."""
        # When each write in progress began, oldest first (a heartbeat may run beside a batch); None while none is
        # (memory: benchmarks/idle.py).
        self.started: list[float] | None = None
        self._transport: asyncio.Transport | None = None
        self._writer: AbstractStreamWriter | None = None  # from prepare() to write_eof()
        self._user_timeout: tuple[Any, int] | None = None  # the socket and its TCP_USER_TIMEOUT before ours
        self.stalled = False
        """True once a write took longer than ``send_timeout`` and the connection was aborted."""
        self.on_heartbeat_end: Callable[[], object] | None = None
        """Called once when a heartbeat finds the client gone (a failed write)."""

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if self._transport is None:
            self._transport = request.transport
            self._bound_socket()
        writer = await super().prepare(request)
        if self._writer is None and writer is not None:
            self._writer = writer
            # aiohttp-sse's heartbeat task is stopped before it runs: the loop's timer sends the heartbeats
            # (_heartbeats.py; benchmarks/idle.py). Writes go on as after any stop_streaming(); wait() returns at once.
            super().stop_streaming()
            self._beat = True
            heartbeats().add(self)
        return writer

    def _bound_socket(self) -> None:
        """Set the socket's ``TCP_USER_TIMEOUT`` to ``send_timeout`` (0 for None), keeping the value it had: the
        kernel then aborts the connection when what was sent stays unacknowledged that long, even while the
        socket's buffers have room (a slow stream to a vanished client may never fill them)."""
        transport = self._transport
        sock = None if transport is None or _TCP_USER_TIMEOUT is None else transport.get_extra_info("socket")
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6) or _TCP_USER_TIMEOUT is None:
            return
        try:
            before = sock.getsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, int((self.send_timeout or 0) * 1000))
        except OSError:  # a socket that refuses the option keeps the system's
            return
        self._user_timeout = (sock, before)

    def _unbound_socket(self) -> None:
        """Give the socket back its ``TCP_USER_TIMEOUT`` (the connection may serve another request)."""
        kept, self._user_timeout = self._user_timeout, None
        if kept is None or _TCP_USER_TIMEOUT is None:
            return
        sock, before = kept
        if sock.fileno() >= 0:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, before)

    def beat(self) -> bool:
        """The heartbeat timer's call when a heartbeat is due: sent at once if that cannot wait (True); else written
        by a task of its own, bounded like any write, which queues the next heartbeat when done (False); nothing
        once the heartbeat stopped (False)."""
        if self._beat is not True:
            return False  # stopped, or a heartbeat that had to wait is still being written
        if self.write_now(HEARTBEAT):
            return True
        transport = self._transport
        if transport is None or transport.is_closing() or self.stalled or self._writer is None:
            self._heartbeat_failed()
        else:
            self._beat = spawn(self._write_late_heartbeat(), "resumable-sse heartbeat")
        return False

    async def _write_late_heartbeat(self) -> None:
        written = False
        try:
            await self.write(HEARTBEAT)
            written = True
        except (OSError, RuntimeError):  # the client is gone (or the body ended): the heartbeat stops
            pass
        finally:
            if self._beat is asyncio.current_task():
                self._beat = True
                if written:
                    heartbeats().add(self)
            if not written:
                self._heartbeat_failed()

    def _heartbeat_failed(self) -> None:
        """A heartbeat found the client gone: the heartbeat stops, and whoever waits for events to write here
        stops waiting at once (``on_heartbeat_end``)."""
        if self._beat is False:
            return
        self.stop_streaming()
        if self.on_heartbeat_end is not None:
            self.on_heartbeat_end()

    def stop_streaming(self) -> None:
        """Stop the heartbeats (and aiohttp-sse's heartbeat task, so that :meth:`wait` returns)."""
        late, self._beat = self._beat, False
        if isinstance(late, asyncio.Task) and late is not asyncio.current_task():
            late.cancel()
        super().stop_streaming()

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
        timeout = self.send_timeout
        if timeout is None:
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
        watchdog.watch(self, timeout)
        try:
            await write
        finally:
            started.remove(began)
            if not started:
                self.started = None
                watchdog.writing.discard(self)
        if self.stalled:
            raise ConnectionResetError(f"the client read nothing for {timeout} s")

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.stalled:
            raise ConnectionResetError("the connection was aborted: the client stopped reading")
        # A write that cannot wait (most: heartbeats of quiet connections, batches to readers that keep up) needs no
        # bound: it goes at once, without the watchdog's bookkeeping.
        if isinstance(data, bytes) and self.write_now(data):
            return
        await self._bounded(super().write(data))

    async def write_eof(self, data: bytes = b"") -> None:
        self._writer = None  # ended: nothing is written at once any more, and no heartbeat
        if self._beat is True:
            self._beat = False
        try:
            await self._bounded(super().write_eof(data))
        finally:
            self._unbound_socket()

    def write_now(self, data: bytes) -> bool:
        """Write ``data`` at once, without waiting, or refuse: True when it was handed to the connection, False when
        it could wait for the client (no write of this response may be in progress, the socket's buffer must be
        empty and ``data`` within its high-water mark), so that the caller uses :meth:`write`, which waits and is
        bounded by ``send_timeout``. Live-tail entries for a reader that keeps up come this way, in the step that
        appended them (:meth:`~resumable_sse.Subscription.write_directly`)."""
        transport, writer = self._transport, self._writer
        if self.started or self.stalled or self.compression or transport is None or writer is None:
            return False
        if transport.is_closing():
            return False
        try:
            if transport.get_write_buffer_size() or len(data) > transport.get_write_buffer_limits()[1]:
                return False
        except NotImplementedError:  # a transport that cannot tell: every write goes the way that may wait
            return False
        return write_at_once(super().write(data), writer)


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
            # No task or closure of its own per connection (memory: benchmarks/idle.py).
            response.on_heartbeat_end = subscription.close
            try:
                await relay(subscription, options, response.write, response.end, response.write_now)
            finally:
                response.on_heartbeat_end = None
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
