"""The HTTP behaviour of ``docs/protocol.md``, written once, for every web framework.

An adapter (:mod:`resumable_sse.aiohttp`, :mod:`resumable_sse.starlette`) reads a request's method, stream id,
position and authorization off its framework's request object and hands them to :func:`open_stream`, which decides
the whole status table: a :class:`Refusal` (204, 400, 403, 405, 410, 503) to send as it is, or a
:class:`~resumable_sse.Subscription` to serve. :func:`relay` then writes that subscription through the adapter's
``write``: every batch of events that are ready together as one write (the first one opened by the ``retry:``
field, and by the subscription's ``reset`` when there is one), until the terminal event. The adapters only do I/O
(headers, bytes, heartbeats, noticing a client that went away), so both answer every request the same, byte for
byte, and a request's outcome is decided in one place.
"""

from __future__ import annotations

import contextlib
import inspect
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from ._event import EventId, encode_comment, encode_retry
from ._logger import logger
from ._observe import RequestOutcome
from ._producer import Factory
from ._streamer import Streamer, Subscription, validate_stream_id
from ._subscription import Item
from .exceptions import (
    InvalidEventId,
    InvalidStreamId,
    StoreFull,
    StoreUnavailable,
    StreamerClosed,
    StreamNotFound,
)

__all__ = [
    "EVENT_STREAM_HEADERS",
    "HEARTBEAT",
    "Refusal",
    "StreamOptions",
    "open_stream",
    "relay",
]


EVENT_STREAM_HEADERS: Final[Mapping[str, str]] = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}
"""The headers of every ``200`` event stream; an application's own ``headers=`` cannot override them."""

HEARTBEAT: Final = encode_comment("ping")
"""The heartbeat: the comment line ``: ping`` with no blank line after it (which would end a block, and some
clients, httpx-sse, report a block without data as an empty event). Clients ignore it; proxies see traffic."""

OnUnknown = Literal["gone", "restart"]
WireProtocol = Literal["sse", "ai-sdk"]
Authorize = Callable[[str], "bool | Awaitable[bool]"]
"""``authorize(stream_id)``: the application's hook with the request already bound by the adapter."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A response that is not an event stream: its status, a one-line plain-text message and extra headers.

    ``204`` has no message and an empty body; every other refusal is ``text/plain; charset=utf-8``.
    """

    status: int
    message: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def body(self) -> bytes:
        """The body as sent: the message and a line end, or nothing for ``204``."""
        return (self.message + "\n").encode() if self.message else b""


NO_CONTENT: Final = Refusal(204)
ALLOW: Final = "GET,HEAD"
"""The methods an endpoint serves, as aiohttp's router lists them for a route made with ``add_get`` (which routes
HEAD too): the router's ``405`` and the endpoint's say the same."""
METHOD_NOT_ALLOWED: Final = Refusal(405, "method not allowed: an event stream is read with GET", {"Allow": ALLOW})
FORBIDDEN: Final = Refusal(403, "not allowed to read this stream")
UNAVAILABLE: Final = Refusal(503, "the stream service is unavailable; try again shortly")
FAILED: Final = Refusal(500, "the server could not answer this request")
"""An application's ``authorize`` or ``stream_id`` function raised (logged once per hook, see ``HookFailures``)."""


class Dialect(Protocol):
    """A wire dialect other than plain SSE events (``protocol="ai-sdk"``: :mod:`resumable_sse.ai_sdk`): the log, ids
    and status table stay the same; it frames the producer's items as they are produced, adds its headers, and
    encodes each response's batches (the terminal event and a reset in its client's own terms). Entries it does not
    frame differently must encode to their own ``wire()`` bytes: the aiohttp adapter writes the live tail with them."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    def frame(self, factory: Factory, stream_id: str) -> Factory: ...

    def encoder(self) -> Callable[[Sequence[Item]], bytes]: ...


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """The options an endpoint was made with, checked once when it is made (a mistake fails at import time, not
    at the first request)."""

    heartbeat: float = 15.0
    retry: int = 2000
    on_unknown: OnUnknown = "gone"
    headers: Mapping[str, str] | None = None
    protocol: WireProtocol = "sse"
    retry_jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.on_unknown not in ("gone", "restart"):
            raise ValueError("on_unknown must be 'gone' or 'restart'")
        if self.protocol not in ("sse", "ai-sdk"):
            raise ValueError("protocol must be 'sse' or 'ai-sdk'")
        if self.heartbeat <= 0:
            raise ValueError("heartbeat must be positive")
        encode_retry(self.retry)  # refuses a negative retry
        if not 0.0 <= self.retry_jitter <= 1.0:
            raise ValueError("retry_jitter must be between 0 and 1")

    @property
    def retry_field(self) -> bytes:
        """The ``retry: <ms>`` field line that opens the first event block of an event stream: ``retry``, less a
        random part of up to ``retry_jitter`` of it drawn for each response, so that the clients of a server that
        stops all at once (a deploy) come back spread over that part of ``retry`` instead of in one burst."""
        if not self.retry_jitter:
            return encode_retry(self.retry)
        return encode_retry(round(self.retry * (1.0 - self.retry_jitter * random.random())))

    @property
    def dialect(self) -> Dialect | None:
        """The wire dialect of ``protocol``, None for plain SSE events."""
        if self.protocol == "sse":
            return None
        from .ai_sdk import DIALECT  # (imported when used: plain SSE endpoints never load it)

        return DIALECT

    def extra_headers(self) -> dict[str, str]:
        """The application's extra headers, then the dialect's."""
        dialect = self.dialect
        return {**(self.headers or {}), **(dialect.headers if dialect is not None else {})}

    def response_headers(self) -> dict[str, str]:
        """The application's extra headers, then the event stream's own (which win, whatever the case of a name)."""
        fixed = {name.lower() for name in EVENT_STREAM_HEADERS}
        app_headers = {name: value for name, value in self.extra_headers().items() if name.lower() not in fixed}
        return {**app_headers, **EVENT_STREAM_HEADERS}


def position_of(header: str | None, query: str | None) -> str | None:
    """The request's position: ``Last-Event-ID`` wins over ``?last_event_id=``; an empty value counts as none."""
    return header or query or None


async def open_stream(
    engine: Streamer,
    options: StreamOptions,
    *,
    method: str,
    stream_id: Callable[[], str],
    position: str | None,
    authorize: Authorize | None,
    source: Factory,
) -> Refusal | Subscription:
    """Decide what a request gets, in the order ``docs/protocol.md`` gives: the method (405), the stream id and the
    position's syntax (400), ``authorize`` (403), then the store (410, 503, 204, or a subscription to serve). A
    ``HEAD`` gets what a GET would, as a :class:`Refusal` with no body (``200`` with the event stream's headers),
    and starts and reads nothing.

    :param stream_id: reads the request's stream id (raising :class:`InvalidStreamId` when there is none; a
        ``LookupError``, a missing parameter, counts the same); called only once the method is accepted.
    :param source: the producer with the request bound; called by the engine only when this request claims a new
        stream (or re-runs an unknown one with ``on_unknown="restart"``).
    :returns: a :class:`Refusal` to send as it is, or the reader's open :class:`Subscription`, which the caller
        must close (it is never at its end: that is the ``204`` refusal).

    The outcome (``new``, ``resumed``, ``reset``, or why not) goes to the engine's observer, if it has one: this is
    the one place where every adapter's requests are decided.
    """
    sid, outcome, opened = await _decide(engine, options, method, stream_id, position, authorize, source)
    if engine.observer is not None and outcome is not None:
        engine.observer.request(sid, outcome)
    return opened


async def _decide(
    engine: Streamer,
    options: StreamOptions,
    method: str,
    stream_id: Callable[[], str],
    position: str | None,
    authorize: Authorize | None,
    source: Factory,
) -> tuple[str | None, RequestOutcome | None, Refusal | Subscription]:
    """:func:`open_stream`'s decision, with the stream id (None when there is no valid one) and the outcome (None
    for a HEAD that passed the checks: it reads nothing, so it is not counted as a reader's request)."""
    sid: str | None = None
    if method not in ("GET", "HEAD"):
        # refused before anything is validated, started or read
        return sid, "method_not_allowed", METHOD_NOT_ALLOWED
    try:
        try:
            raw = stream_id()
        except LookupError as exc:  # an application's stream_id(request) that reads a parameter the request lacks
            raise InvalidStreamId(f"no stream id: the request has no {exc}") from exc
        except (InvalidStreamId, InvalidEventId):
            raise
        except Exception as exc:  # the application's stream_id function failed: this request alone gets 500
            engine.hooks.failed("stream_id", None, exc)
            return sid, "error", FAILED
        sid = validate_stream_id(raw)
        if position is not None:
            EventId.parse(position)
    except (InvalidStreamId, InvalidEventId) as exc:
        return sid, "bad_request", Refusal(400, str(exc))
    if authorize is not None:
        try:
            allowed = authorize(sid)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            allowed = bool(allowed)
        except Exception as exc:  # the application's hook failed: this request alone gets 500
            engine.hooks.failed("authorize", sid, exc)
            return sid, "error", FAILED
        if not allowed:
            return sid, "forbidden", FORBIDDEN
    try:
        if method == "HEAD":
            return sid, None, await _head(engine, options, sid, position)
        subscription = await _subscribe(engine, options, sid, position, source)
    except StreamNotFound:
        return sid, "gone", _gone(sid, "")
    except (StoreUnavailable, StoreFull, StreamerClosed) as exc:
        logger.warning("stream %r not served: %s; the client got 503", sid, exc, extra={"stream_id": sid})
        return sid, "unavailable", UNAVAILABLE
    if isinstance(subscription, Refusal):
        return sid, "gone", subscription
    if subscription.at_end:
        subscription.close()
        return sid, "no_content", NO_CONTENT
    if subscription.reset is not None:
        return sid, "reset", subscription
    return sid, "new" if position is None else "resumed", subscription


async def _head(engine: Streamer, options: StreamOptions, sid: str, position: str | None) -> Refusal:
    """What a GET would get, its status and headers, with no body; nothing is started (a GET that would claim the
    stream gets ``200`` here, and the stream stays unknown) and no reader is left open."""
    if position is None:
        await engine.status(sid)  # only for its 503 when the store cannot answer
        return Refusal(200, headers=options.response_headers())
    try:
        subscription = await engine.subscribe(sid, position)
    except StreamNotFound:
        if options.on_unknown == "gone":
            return _gone(sid, "; it is not generated again")
        return Refusal(200, headers=options.response_headers())
    at_end = subscription.at_end
    subscription.close()
    return NO_CONTENT if at_end else Refusal(200, headers=options.response_headers())


_ATTEMPTS: Final = 5  # claims a request with no position makes while the stream it finds keeps expiring


def _gone(sid: str, more: str) -> Refusal:
    return Refusal(410, f"stream {sid!r} is unknown or has expired{more}")


async def _subscribe(
    engine: Streamer, options: StreamOptions, sid: str, position: str | None, source: Factory
) -> Subscription | Refusal:
    dialect = options.dialect
    if dialect is not None:
        source = dialect.frame(source, sid)
    if position is None:
        # A finished stream may expire between the claim (which found it) and the first read (which does not): it
        # is absent then, and the next claim starts it anew. Only a store that drops the stream again at every
        # attempt gets past this loop (503: nothing is said about the stream, and the client tries again).
        for _ in range(_ATTEMPTS):
            await engine.start(sid, source)  # only a request that claims the stream runs the producer
            try:
                return await engine.subscribe(sid)
            except StreamNotFound:
                continue
        raise StoreUnavailable(f"stream {sid!r} vanished from the store {_ATTEMPTS} times while it was opened")
    try:
        return await engine.subscribe(sid, position)
    except StreamNotFound:
        if options.on_unknown == "gone":
            return _gone(sid, "; it is not generated again")
        await engine.start(sid, source)
        return await engine.subscribe(sid, position)


WRITE_BYTES: Final = 256 * 1024
"""Most bytes of event data in one write of a batch (at least one event): a client that reads slowly holds one write
in its connection's buffer, so a reader behind a stream of large events costs about this, not a whole batch, per
connection."""


def _parts(batch: Sequence[Item]) -> list[Sequence[Item]]:
    """A batch in the parts it is written in: the batch itself (events that are ready together go in one socket
    write), or, when its data is larger than :data:`WRITE_BYTES`, consecutive parts of at most that (or one
    event), each written (and awaited) in turn."""
    if len(batch) == 1 or sum([len(item.data) for item in batch]) <= WRITE_BYTES:
        return [batch]
    parts: list[Sequence[Item]] = []
    start = size = 0
    for index, item in enumerate(batch):
        if index > start and size + len(item.data) > WRITE_BYTES:
            parts.append(batch[start:index])
            start, size = index, 0
        size += len(item.data)
    parts.append(batch[start:])
    return parts


async def relay(
    subscription: Subscription,
    options: StreamOptions,
    write: Callable[[bytes], Awaitable[None]],
    end: Callable[[], Awaitable[None]],
    write_now: Callable[[bytes], bool] | None = None,
) -> bool:
    """Write the subscription's event stream: each batch of events that are ready together in one ``write`` (the
    first one opened by the ``retry:`` field, and by the subscription's ``reset`` when it has one), then ``end()``
    after the terminal event (or when the subscription was closed: the server shuts down, and the client
    reconnects).

    Returns True when the body was ended (after the terminal event, or early: the stream expired under it, or the
    store stayed unreachable, which is logged), False when the client went away or was cut off (``write`` raised
    :class:`ConnectionError`). A client that reconnects with its last id resumes in every case.

    ``write_now``, when the server offers one (a write that never waits, or refuses), takes the live tail's events
    once the first batch is written (:meth:`Subscription.write_directly`): a reader that keeps up is then written to
    in the step that appended the event.
    """
    sid = subscription.stream_id
    dialect = options.dialect
    encode = dialect.encoder() if dialect is not None else _wire
    # ``retry:`` opens the first event block (the subscription's reset, or its first batch), never a block of its own:
    # some clients (httpx-sse) hand a block without data to the application as an empty event.
    prelude = options.retry_field
    try:
        # try/finally rather than aclosing, and the dels below: memory of a quiet connection (benchmarks/idle.py).
        batches = subscription.batches()
        try:
            async for batch in batches:
                for part in _parts(batch):  # (one part, the whole batch, unless it is larger than WRITE_BYTES)
                    if prelude:
                        await write(prelude + encode(part))
                        prelude = b""
                    else:
                        await write(encode(part))
                    del part
                del batch
                if write_now is not None:  # after the first batch (the prelude and any reset are out)
                    subscription.write_directly(write_now)
                    write_now = None
        finally:
            await batches.aclose()
        await end()
        return True
    except ConnectionError:
        return False  # the client went away (or was cut off)
    except StreamNotFound:
        pass  # the stream expired under it
    except StoreUnavailable:
        logger.warning(
            "store unreachable while serving %r; the response ends and the client reconnects with its last id",
            sid,
            extra={"stream_id": sid},
        )
    # The stream expired, or the store stayed unreachable: the body still ends properly (a chunked body cut short is
    # a protocol error to clients and ASGI servers alike), and a client that reconnects with its last id is told.
    with contextlib.suppress(ConnectionError):
        await end()
    return True


def _wire(batch: Sequence[Item]) -> bytes:
    """A batch as plain SSE events: each item's own wire bytes."""
    return b"".join([item.wire() for item in batch])
