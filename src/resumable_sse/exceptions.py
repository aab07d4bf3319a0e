"""Exceptions raised by resumable-sse.

Every exception the library raises on purpose derives from :class:`ResumableSSEError`::

    ResumableSSEError
    ├── InvalidStreamId        (also ValueError) a stream id that is too long or has other than [A-Za-z0-9._:-]
    ├── InvalidEventId         (also ValueError) a Last-Event-ID that is not one of ours
    ├── EventTooLarge          (also ValueError) a producer's event is larger than max_event_bytes
    ├── InvalidEventData       (also ValueError) a producer's event data is text with no UTF-8 form (a lone surrogate)
    ├── StreamNotFound         the stream is unknown: never created, or expired
    ├── StreamAlreadyClaimed   another producer (in this or another process) owns the stream
    ├── StreamFenced           a producer lost its claim (cancelled, lost, taken over) and may not write
    ├── StoreFull              the store refuses a new stream (a memory store at max_streams)
    ├── StoreUnavailable       the store's backend cannot be reached (Redis down): the original error is the cause
    ├── ProducerError          raise it in a producer to end the stream with ``error`` and a message
    │                          that is safe to show to clients
    ├── StreamEnded            a stream a client reads ended with error, lost or cancelled (client side)
    ├── StreamerClosed         the Streamer is shutting down or closed and takes no new work
    └── EventLoopError         (also RuntimeError) SyncStreamer called from its own event loop's thread (it would
                               deadlock), or with no event loop known for its Streamer
"""

from __future__ import annotations

__all__ = [
    "EventLoopError",
    "EventTooLarge",
    "InvalidEventData",
    "InvalidEventId",
    "InvalidStreamId",
    "ProducerError",
    "ResumableSSEError",
    "StoreFull",
    "StoreUnavailable",
    "StreamAlreadyClaimed",
    "StreamEnded",
    "StreamFenced",
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
    """A producer yielded an event whose UTF-8 data is larger than ``max_event_bytes``."""


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


class StreamerClosed(ResumableSSEError):
    """The Streamer is closed or shutting down and starts no new producers."""


class EventLoopError(ResumableSSEError, RuntimeError):
    """A :class:`~resumable_sse.SyncStreamer` cannot use its Streamer's event loop from here.

    Raised when it is called from that loop's own thread (waiting there for the loop would deadlock: use the async
    Streamer instead), or when no event loop is known for the Streamer yet.
    """
