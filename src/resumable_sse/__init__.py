"""resumable-sse: Server-Sent Events streams that survive disconnects.

A producer writes every event into a durable, ordered event log (in memory, or in Redis shared by many processes);
any number of clients read it, and a client that reconnects with ``Last-Event-ID`` (or ``?last_event_id=``) gets
exactly the events it missed, then the live tail. The producer runs once per stream, whatever the clients do.
"""

from typing import TYPE_CHECKING

from ._event import TERMINAL_EVENTS, Entry, Event, EventId
from ._log import Claim, EventLog, Page, StreamState, SubmitsAppends, Watch
from ._observe import REQUEST_OUTCOMES, STORE_OPERATIONS, Observer, RequestOutcome, StoreOperation
from ._streamer import Producer, Reset, Streamer, Subscription, validate_stream_id
from .aiohttp import STREAMER_KEY, resumable_handler, setup
from .exceptions import (
    ClientError,
    EventLoopError,
    EventTooLarge,
    InvalidEventId,
    InvalidStreamId,
    ProducerError,
    ResponseError,
    ResumableSSEError,
    RetriesExhausted,
    StoreFull,
    StoreUnavailable,
    StreamAlreadyClaimed,
    StreamEnded,
    StreamerClosed,
    StreamFenced,
    StreamGone,
    StreamNotFound,
)
from .stores import MemoryStore, from_url

if TYPE_CHECKING:
    from .stores.redis import RedisStore
    from .sync import SyncStreamer, SyncWriter

__version__ = "0.2.0"


def __getattr__(name: str) -> object:
    # Imported on first use. RedisStore: so that importing resumable_sse never pulls in redis (an optional extra:
    # pip install resumable-sse[redis]; making a RedisStore without it says so). SyncStreamer and SyncWriter: so
    # that the blocking client (resumable_sse.client) does not load the server's thread machinery with the package.
    if name == "RedisStore":
        from .stores.redis import RedisStore

        return RedisStore
    if name in ("SyncStreamer", "SyncWriter"):
        from . import sync

        return getattr(sync, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "REQUEST_OUTCOMES",
    "STORE_OPERATIONS",
    "STREAMER_KEY",
    "TERMINAL_EVENTS",
    "Claim",
    "ClientError",
    "Entry",
    "Event",
    "EventId",
    "EventLog",
    "EventLoopError",
    "EventTooLarge",
    "InvalidEventId",
    "InvalidStreamId",
    "MemoryStore",
    "Observer",
    "Page",
    "Producer",
    "ProducerError",
    "RedisStore",
    "RequestOutcome",
    "Reset",
    "ResponseError",
    "ResumableSSEError",
    "RetriesExhausted",
    "StoreFull",
    "StoreOperation",
    "StoreUnavailable",
    "StreamAlreadyClaimed",
    "StreamEnded",
    "StreamFenced",
    "StreamGone",
    "StreamNotFound",
    "StreamState",
    "Streamer",
    "StreamerClosed",
    "SubmitsAppends",
    "Subscription",
    "SyncStreamer",
    "SyncWriter",
    "Watch",
    "__version__",
    "from_url",
    "resumable_handler",
    "setup",
    "validate_stream_id",
]
