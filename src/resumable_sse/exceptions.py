"""Exceptions raised by resumable-sse.

Every exception the library raises on purpose derives from :class:`ResumableSSEError`::

    ResumableSSEError
    ├── InvalidStreamId        (also ValueError) a stream id that is too long or has other than [A-Za-z0-9._:-]
    ├── InvalidEventId         (also ValueError) a Last-Event-ID that is not one of ours
    ├── EventTooLarge          (also ValueError) a producer's event is larger than max_event_bytes, or than the
    │                          store takes (Redis: its proto-max-bulk-len): the message names the limit
    ├── InvalidEventData       (also ValueError) a producer's event data is text with no UTF-8 form (a lone surrogate)
    ├── StreamNotFound         the stream is unknown: never created, or expired
    ├── StreamAlreadyClaimed   another producer (in this or another process) owns the stream
    ├── StreamFenced           a producer lost its claim (cancelled, lost, taken over) and may not write
    ├── StoreFull              the store refuses a new stream (a memory store at max_streams)
    ├── StoreUnavailable       the store's backend cannot be reached (Redis down): the original error is the cause
    ├── ProducerError          raise it in a producer to end the stream with ``error`` and a message
    │                          that is safe to show to clients
    ├── StreamEnded            a stream a client reads ended with error, lost or cancelled (client side)
    ├── ClientError            the client could not read the stream (resumable_sse.client)
    │   ├── ResponseError      an HTTP status or content type that is not a stream; .status, .url, .body
    │   │   └── StreamGone     410: the stream is unknown or expired (it is not generated again)
    │   └── RetriesExhausted   max_retries attempts in a row got nothing; the last failure is __cause__
    ├── StreamerClosed         the Streamer is shutting down or closed and takes no new work; also a blocking call
    │                          whose event loop stopped before it finished the call
    └── EventLoopError         (also RuntimeError) SyncStreamer called from its own event loop's thread (it would
                               deadlock), or with no event loop known for its Streamer

Server and client share this one tree, so ``except ResumableSSEError`` catches whatever either side raises on
purpose; anything else that escapes is a bug or comes from the caller's own code.
"""

from __future__ import annotations

__all__ = [
    "ClientError",
    "EventLoopError",
    "EventTooLarge",
    "InvalidEventData",
    "InvalidEventId",
    "InvalidStreamId",
    "ProducerError",
    "ResponseError",
    "ResumableSSEError",
    "RetriesExhausted",
    "StoreFull",
    "StoreUnavailable",
    "StreamAlreadyClaimed",
    "StreamEnded",
    "StreamFenced",
    "StreamGone",
    "StreamNotFound",
    "StreamerClosed",
]


class ResumableSSEError(Exception):
    """Root of every exception resumable-sse raises on purpose."""


class InvalidStreamId(ResumableSSEError, ValueError):
    """A stream id is empty, too long, or has characters other than ``[A-Za-z0-9._:-]``."""


class InvalidEventId(ResumableSSEError, ValueError):
    """A resume position (``Last-Event-ID`` or ``last_event_id``) is not an id this library made."""


class EventTooLarge(ResumableSSEError, ValueError):
    """A producer yielded an event whose UTF-8 data is larger than ``max_event_bytes``, or larger than its store
    takes (a Redis whose ``proto-max-bulk-len`` is below ``max_event_bytes``). The message names the limit.

    The store's refusal comes from the append (nothing of it is written); the producer then ends the stream with
    ``error`` and this message, at once: it is not retried as an outage would be.
    """


class InvalidEventData(ResumableSSEError, ValueError):
    """A producer's event data is text that cannot be sent: it has a lone surrogate (``"\\ud800"``, which a Python
    ``str`` and JSON allow but UTF-8, the wire's encoding, does not).

    Raised where an item becomes an event, so nothing of it reaches the log; in a producer it ends the stream with
    ``error`` like any other exception.
    """


class StreamNotFound(ResumableSSEError):
    """The stream does not exist: it was never created, or it expired (TTL, store restart)."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"stream {stream_id!r} is unknown or has expired")
        self.stream_id = stream_id


class StreamAlreadyClaimed(ResumableSSEError):
    """A producer already owns this stream; the log allows exactly one producer per stream."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"stream {stream_id!r} already has a producer")
        self.stream_id = stream_id


class StreamFenced(ResumableSSEError):
    """A producer lost its claim on a stream (it was cancelled, ended as lost, or expired) and may not write."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"this producer no longer owns stream {stream_id!r}")
        self.stream_id = stream_id


class StoreFull(ResumableSSEError):
    """The store holds as many streams as it may and none can be evicted (all are running)."""


class StoreUnavailable(ResumableSSEError):
    """The store's backend could not be reached; ``__cause__`` is the backend's own exception."""


class ProducerError(ResumableSSEError):
    """Raised by a producer to end its stream with ``error`` and this message, which clients will see.

    Any other exception a producer raises also ends the stream with ``error``, but clients then get a generic
    message and the traceback goes only to the server log.
    """


class StreamEnded(ResumableSSEError):
    """A stream a client was reading ended with ``error``, ``lost`` or ``cancelled``."""

    def __init__(self, state: str, message: str = "") -> None:
        super().__init__(f"stream ended with {state}" + (f": {message}" if message else ""))
        self.state = state
        self.message = message


class ClientError(ResumableSSEError):
    """The client (:mod:`resumable_sse.client`) could not read the stream, other than the stream itself ending badly."""


class ResponseError(ClientError):
    """The server answered with a status (or content type) that is not an event stream to follow.

    :ivar url: the URL requested.
    :ivar status: the HTTP status.
    :ivar body: the start of the response body (the server's explanation), decoded leniently.
    """

    def __init__(self, url: str, status: int, reason: str, body: str = "") -> None:
        detail = body.strip()
        super().__init__(f"GET {url}: {status} {reason}" + (f": {detail}" if detail else ""))
        self.url = url
        self.status = status
        self.body = body


class StreamGone(ResponseError):
    """``410 Gone``: the server does not know the stream (it expired, or never existed) and will not regenerate it."""


class RetriesExhausted(ClientError):
    """``max_retries`` reconnection attempts in a row got nothing; the last attempt's failure is ``__cause__``."""

    def __init__(self, url: str, attempts: int, last_error: BaseException | None) -> None:
        reason = ""
        if last_error is not None:
            text = str(last_error)
            reason = f": {type(last_error).__name__}" + (f": {text}" if text else "")
        super().__init__(f"gave up on {url} after {attempts} failed attempts in a row{reason}")
        self.url = url
        self.attempts = attempts


class StreamerClosed(ResumableSSEError):
    """The Streamer is closed or shutting down and starts no new producers.

    Also raised in a thread that waits for an event loop (a :class:`~resumable_sse.SyncStreamer` call) when that
    loop stops before it finished the call.
    """


class EventLoopError(ResumableSSEError, RuntimeError):
    """A :class:`~resumable_sse.SyncStreamer` cannot use its Streamer's event loop from here.

    Raised when it is called from that loop's own thread (waiting there for the loop would deadlock: use the async
    Streamer instead), or when no event loop is known for the Streamer yet.
    """
