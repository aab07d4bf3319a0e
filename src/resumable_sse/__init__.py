"""resumable-sse: Server-Sent Events streams that survive disconnects.

A producer writes every event into a durable, ordered event log (in memory, or in Redis shared by many processes);
any number of clients read it, and a client that reconnects with ``Last-Event-ID`` (or ``?last_event_id=``) gets
exactly the events it missed, then the live tail. The producer runs once per stream, whatever the clients do.
"""

from typing import TYPE_CHECKING

from ._event import TERMINAL_EVENTS, Entry, Event, EventId
from ._log import Claim, EventLog, Page, StreamState, Watch
from ._streamer import Producer, Reset, Streamer, Subscription, validate_stream_id
from .aiohttp import STREAMER_KEY, resumable_handler, setup
from .exceptions import (
    EventLoopError,
    EventTooLarge,
    InvalidEventId,
    InvalidStreamId,
    ProducerError,
    ResumableSSEError,
    StoreFull,
    StoreUnavailable,
    StreamAlreadyClaimed,
    StreamEnded,
    StreamerClosed,
    StreamFenced,
    StreamNotFound,
)
from .stores import MemoryStore, from_url
from .sync import SyncStreamer, SyncWriter

if TYPE_CHECKING:
    from .stores.redis import RedisStore

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # RedisStore is imported on first use, so that importing resumable_sse never pulls in redis (an optional extra:
    # pip install resumable-sse[redis]; making a RedisStore without it says so).
    if name == "RedisStore":
        from .stores.redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "STREAMER_KEY",
    "TERMINAL_EVENTS",
    "Claim",
    "Entry",
    "Event",
    "EventId",
    "EventLog",
    "EventLoopError",
    "EventTooLarge",
    "InvalidEventId",
    "InvalidStreamId",
    "MemoryStore",
    "Page",
    "Producer",
    "ProducerError",
    "RedisStore",
    "Reset",
    "ResumableSSEError",
    "StoreFull",
    "StoreUnavailable",
    "StreamAlreadyClaimed",
    "StreamEnded",
    "StreamFenced",
    "StreamNotFound",
    "StreamState",
    "Streamer",
    "StreamerClosed",
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
