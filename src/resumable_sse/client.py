"""A Server-Sent Events client that reconnects and resumes with ``Last-Event-ID``, on aiohttp.

::

    from resumable_sse.client import connect, iter_events

    async with connect("http://host/stream/abc") as events:
        async for ev in events:                 # ev.id, ev.event, ev.data, ev.json()
            ...
        save(events.last_event_id)              # resume later with connect(url, last_event_id=...)

    for ev in iter_events("http://host/stream/abc"):   # the same client, for code with no event loop
        ...

What it does: what a browser's EventSource does, plus what the resumable-sse wire protocol adds (terminal events,
``reset``, ``204`` and ``410``; the protocol is described in ``docs/protocol.md`` in the repository):

- Parses the stream exactly per the WHATWG rules (:mod:`resumable_sse._parser`).
- Reconnects when the connection fails or the server closes it, sending the last event id it delivered as
  ``Last-Event-ID``, so with a resumable-sse server every event arrives exactly once, in order. It waits the server's
  ``retry:`` time, doubled for each attempt in a row that got nothing (no event, no heartbeat), up to a cap, with
  random jitter so that many clients do not come back in step.
- Ends on the terminal events: ``done`` and ``cancelled`` are yielded, then iteration stops; ``error`` and ``lost``
  raise :class:`~resumable_sse.exceptions.StreamEnded` (``raise_on`` chooses which). ``204 No Content`` (the position
  is the end of a finished stream) ends iteration with nothing more.
- Yields the in-band ``reset`` event (``ev.event == "reset"``, no id, data ``{"reason": ..., "first_id": ...}``): the
  server could not continue from the position (another epoch of the stream, or history trimmed), so the events that
  follow start over from the earliest retained one. Discard whatever was built from earlier events.
- ``410 Gone`` (the stream is unknown or expired) raises :class:`StreamGone`; other ``4xx`` and a response that is
  not ``text/event-stream`` raise :class:`ResponseError` at once; ``429`` and ``5xx`` are retried with backoff,
  honouring ``Retry-After``.

The exceptions it raises are in the library's one tree, documented in :mod:`resumable_sse.exceptions` and
re-exported here: :class:`StreamEnded` (``error``/``lost``, see ``raise_on``), and the :class:`ClientError` family
(:class:`ResponseError`, :class:`StreamGone` for 410, :class:`RetriesExhausted`).

Its options are one :class:`ClientOptions`: :func:`connect` and :func:`iter_events` take them as keywords (or a
prepared ``options=``, which keywords override), :class:`EventStream` keeps them as :attr:`~EventStream.options`.
One async implementation: :class:`SyncEventStream` runs it on a private event loop in a daemon thread (the portal
of :mod:`resumable_sse._portal`, shared with the server's :class:`~resumable_sse.SyncStreamer`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Final

import aiohttp
import yarl

from ._client_options import DEFAULT_RAISE_ON, ClientOptions, ClientOptionsDict, merge_options
from ._event import TERMINAL_EVENTS
from ._parser import ServerSentEvent, SSEParser
from ._portal import LoopThread  # where blocking code meets an event loop: one implementation, shared
from .exceptions import ClientError, ResponseError, RetriesExhausted, StreamEnded, StreamerClosed, StreamGone

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_RAISE_ON",
    "ClientError",
    "ClientOptions",
    "ClientOptionsDict",
    "EventStream",
    "ResponseError",
    "RetriesExhausted",
    "ServerSentEvent",
    "StreamGone",
    "SyncEventStream",
    "backoff_delay",
    "check_url",
    "connect",
    "iter_events",
]

logger = logging.getLogger("resumable_sse.client")


_MIN_BACKOFF: Final = 0.05  # seconds: failed attempts back off from at least this, even after ``retry: 0``
_BODY_PREVIEW: Final = 1024  # bytes of an error response's body kept in ResponseError.body
_NETWORK_ERRORS: Final = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError, OSError)
_FATAL_NETWORK_ERRORS: Final = (
    aiohttp.ClientConnectorCertificateError,
    aiohttp.ServerFingerprintMismatch,
    aiohttp.InvalidURL,  # also a redirect to a URL that is not http(s)
    aiohttp.ClientResponseError,  # a malformed response, too many redirects: retrying cannot fix these
)


def check_url(url: str, *, relative_ok: bool = False) -> str:
    """Return ``url`` if the client can request it (an absolute ``http://`` or ``https://`` URL), else raise
    ``ValueError`` saying why, so that a typo fails at once instead of in the first request."""
    try:
        parsed = yarl.URL(url)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a URL: {url!r} ({exc})") from None
    if parsed.is_absolute():
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
    elif not relative_ok:
        raise ValueError(f"not an absolute URL (http://host/...): {url!r}")
    return url


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def backoff_delay(
    base: float, failures: int, *, cap: float, jitter: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before the next attempt.

    ``base`` is the reconnection time (the server's ``retry:``); ``failures`` counts the attempts in a row that got
    nothing. After a healthy connection ends (``failures == 0``) the wait is ``base``, as in EventSource; each
    failure doubles it (from at least 50 ms, so that ``retry: 0`` cannot spin), never above ``cap``. Jitter then
    takes off a random part of up to ``jitter`` (0..1) of it, so that clients cut off together spread out.
    """
    delay = base if failures == 0 else max(base, _MIN_BACKOFF) * 2.0**failures
    delay = min(delay, cap)
    return delay * (1.0 - jitter * rand())


class EventStream:
    """A followed stream: iterate it (``async for``) for :class:`ServerSentEvent` objects. Made by :func:`connect`.

    Use it as an async context manager so that the connection (and the session it made, if any) is closed when
    you leave; iteration may stop early (``break``) at any time.
    """

    def __init__(
        self,
        url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        options: ClientOptions | None = None,
        **overrides: Unpack[ClientOptionsDict],
    ) -> None:
        self.options: Final = merge_options(options, overrides)
        """The options this stream follows with (see :class:`ClientOptions`)."""
        # A relative URL only makes sense against a session's base_url, which aiohttp does not let one read: with
        # a session it is taken as is, and a session without a base_url fails the first request (InvalidURL: a
        # ClientError at once, never retried).
        self.url: Final = check_url(url, relative_ok=session is not None)
        self._session = session
        self._owns_session = session is None
        self._last_event_id = self.options.last_event_id or ""
        self._retry = self.options.reconnect_delay
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=self.options.connect_timeout, sock_read=self.options.read_timeout
        )
        self._iterator: AsyncGenerator[ServerSentEvent, None] | None = None
        self._finished = False
        self.terminal: ServerSentEvent | None = None
        """The terminal event (``done``, ``error``, ``cancelled`` or ``lost``) once it has arrived."""
        self.connections = 0
        """How many requests the client made so far: 1 + its reconnections. (aiohttp may also retry a GET once, on
        a fresh connection, when the server drops it before answering: that is not counted here.)"""

    @property
    def last_event_id(self) -> str | None:
        """The id of the last event delivered to you, or the one given to :func:`connect`; None if none yet.

        Persist it to resume later (in another process too) with ``connect(url, last_event_id=...)``.
        """
        return self._last_event_id or None

    @property
    def retry(self) -> float:
        """The current reconnection time in seconds: the server's last ``retry:``, else ``reconnect_delay``."""
        return self._retry

    @property
    def finished(self) -> bool:
        """True once the stream has ended: a terminal event arrived, or the server answered 204."""
        return self._finished

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> ServerSentEvent:
        if self._iterator is None:
            self._iterator = self._follow()
        return await self._iterator.__anext__()

    async def aclose(self) -> None:
        """Close the connection, and the session if this stream made it. Iteration then ends."""
        if self._iterator is None:
            self._iterator = self._follow()  # so that iterating after close ends at once
        await self._iterator.aclose()
        await self._close_session()

    async def _close_session(self) -> None:
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _request_headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **self.options.headers}
        for key in [key for key in headers if key.lower() == "last-event-id"]:
            del headers[key]
        if self._last_event_id:
            headers["Last-Event-ID"] = self._last_event_id
        return headers

    async def _follow(self) -> AsyncGenerator[ServerSentEvent, None]:
        """Connect, yield events, reconnect, until the stream ends or an error that retrying cannot fix."""
        failures = 0
        try:
            while True:
                if self._session is None:
                    self._session = aiohttp.ClientSession()
                error: BaseException | None = None
                retry_after: float | None = None
                progressed = False
                self.connections += 1
                try:
                    response = await self._session.get(self.url, headers=self._request_headers(), timeout=self._timeout)
                except _FATAL_NETWORK_ERRORS as exc:
                    raise ClientError(f"GET {self.url}: {_describe(exc)}") from exc
                except _NETWORK_ERRORS as exc:
                    error = exc
                else:
                    async with response:
                        status = response.status
                        if status == 204:
                            self._finished = True
                            return
                        if status == 200:
                            if response.content_type != "text/event-stream":
                                raise ResponseError(
                                    self.url,
                                    status,
                                    f"not an event stream (Content-Type: {response.content_type})",
                                )
                            parser = SSEParser(self._last_event_id)
                            try:
                                async for chunk in response.content.iter_any():
                                    events = parser.feed(chunk)
                                    if parser.retry is not None:
                                        self._retry = parser.retry / 1000
                                    if parser.comments:
                                        progressed = True
                                    for event in events:
                                        progressed = True
                                        self._last_event_id = event.last_event_id
                                        if event.event in TERMINAL_EVENTS:
                                            self._finished = True
                                            self.terminal = event
                                            if event.event in self.options.raise_on:
                                                raise _ended(event)
                                            yield event
                                            return
                                        yield event
                                    # an id-only block moves the position without dispatching anything
                                    self._last_event_id = parser.last_event_id
                            except _NETWORK_ERRORS as exc:
                                error = exc
                            parser.close()  # an unfinished event is discarded, never delivered
                        elif status == 410:
                            raise StreamGone(self.url, status, response.reason or "Gone", await _body(response))
                        elif status == 429 or status >= 500:
                            error = ResponseError(self.url, status, response.reason or "", await _body(response))
                            retry_after = _retry_after(response.headers.get("Retry-After"))
                        else:
                            raise ResponseError(self.url, status, response.reason or "", await _body(response))
                failures = 0 if progressed else failures + 1
                max_retries = self.options.max_retries
                if max_retries is not None and failures > max_retries:
                    raise RetriesExhausted(self.url, failures, error) from error
                delay = backoff_delay(self._retry, failures, cap=self.options.max_delay, jitter=self.options.jitter)
                if retry_after is not None:
                    delay = max(delay, retry_after)
                logger.info(
                    "%s: %s; reconnecting in %.2f s%s",
                    self.url,
                    _describe(error) if error is not None else "the server closed the stream",
                    delay,
                    f" from {self._last_event_id}" if self._last_event_id else "",
                    extra={"stream_id": None, "url": self.url},  # a client knows the stream by its URL
                )
                await asyncio.sleep(delay)
        finally:
            await self._close_session()


def _ended(event: ServerSentEvent) -> StreamEnded:
    """The exception a terminal event raises: its state, and the server's message from the JSON data."""
    message = event.data
    try:
        body = event.json()
    except ValueError:
        pass
    else:
        if isinstance(body, dict):
            message = str(body.get("message", ""))
    return StreamEnded(event.event, message)


async def _body(response: aiohttp.ClientResponse) -> str:
    try:
        return (await response.content.read(_BODY_PREVIEW)).decode("utf-8", errors="replace")
    except _NETWORK_ERRORS:
        return ""


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds (an HTTP date is ignored)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def connect(
    url: str,
    *,
    session: aiohttp.ClientSession | None = None,
    options: ClientOptions | None = None,
    **overrides: Unpack[ClientOptionsDict],
) -> EventStream:
    """Follow the event stream at ``url``; use as ``async with connect(url) as events: async for ev in events``.

    Nothing is sent until iteration starts.

    :param session: an aiohttp session to use (it is left open); default: one made for this stream and closed with
        it.
    :param options: a prepared :class:`ClientOptions`; default: the defaults.
    :param overrides: any field of :class:`ClientOptions` as a keyword (``last_event_id``, ``headers``,
        ``raise_on``, ``reconnect_delay``, ``max_delay``, ``jitter``, ``max_retries``, ``connect_timeout``,
        ``read_timeout``), applied over ``options``.
    """
    return EventStream(url, session=session, options=options, **overrides)


class SyncEventStream:
    """The blocking face of :class:`EventStream`: the same client runs on a private event loop in a daemon thread.

    Iterate it with ``for``; each ``next()`` hands one event across threads. Close it (or use it as a context
    manager) to close the connection and stop the thread; an abandoned one is closed when it is garbage collected.
    Made by :func:`iter_events`.
    """

    def __init__(self, stream: EventStream) -> None:
        self._stream = stream
        self._closed = False
        self._portal = LoopThread("resumable-sse client")

    @property
    def last_event_id(self) -> str | None:
        """The id of the last event delivered to you, for resuming later (see :attr:`EventStream.last_event_id`)."""
        return self._stream.last_event_id

    @property
    def terminal(self) -> ServerSentEvent | None:
        """The terminal event once it has arrived."""
        return self._stream.terminal

    @property
    def finished(self) -> bool:
        """True once the stream has ended (terminal event or 204)."""
        return self._stream.finished

    @property
    def connections(self) -> int:
        """How many HTTP requests were made so far."""
        return self._stream.connections

    def __iter__(self) -> SyncEventStream:
        return self

    def __next__(self) -> ServerSentEvent:
        if self._closed:
            raise StopIteration
        try:
            event = self._portal.call(self._next())
        except StreamerClosed:
            if self._closed:  # closed from another thread while this one waited: the iteration is over
                raise StopIteration from None
            self.close()
            raise
        except BaseException:  # e.g. KeyboardInterrupt while waiting: the portal stopped the read on the loop
            self.close()
            raise
        if event is None:
            self.close()
            raise StopIteration
        return event

    async def _next(self) -> ServerSentEvent | None:
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            return None

    def __enter__(self) -> SyncEventStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection and stop the loop thread; waits for both. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._portal.in_thread():  # from the loop's own thread it cannot wait: stopping cancels the read
                self._portal.call(self._shutdown())
        finally:
            self._portal.stop()

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        others = [task for task in asyncio.all_tasks() if task is not current]
        for task in others:  # a read still waiting (closed from another thread)
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self._stream.aclose()

    def __del__(self) -> None:
        # An abandoned stream (``break`` out of ``for ev in iter_events(url)``) is closed here, in the thread that
        # dropped it. Not at interpreter exit: the loop thread may already be frozen and waiting for it would hang.
        if not getattr(self, "_closed", True) and not sys.is_finalizing():
            self.close()


def iter_events(
    url: str, *, options: ClientOptions | None = None, **overrides: Unpack[ClientOptionsDict]
) -> SyncEventStream:
    """Follow the event stream at ``url`` from blocking code: ``for ev in iter_events(url): ...``.

    The same client and the same options as :func:`connect` (no ``session``), run on a private event loop thread.
    Use ``with iter_events(url) as events:`` to read :attr:`SyncEventStream.last_event_id` afterwards.
    """
    return SyncEventStream(EventStream(url, options=options, **overrides))
