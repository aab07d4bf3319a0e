"""The Streamer: the engine's facade. It claims streams, starts their producers, and opens subscriptions.

Data flows one way: producer -> :mod:`._producer` (batched appends) -> store -> :class:`~._readers.Hub` (one live
tail per process, fanned out in memory) -> :class:`~._subscription.Subscription` (one per reader: a cursor, nothing
more) -> the wire. Nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final

from ._event import EventId, Status
from ._log import EventLog, NewEvent, StreamState
from ._observe import GuardedObserver, HookFailures, ObservedLog, Observer
from ._producer import Factory, Source
from ._producers import Producer, Producers, check_factory
from ._readers import Hub, Reader, judge, terminal_data
from ._retry import retry_store
from ._subscription import Reset, Subscription
from .exceptions import InvalidStreamId, StreamerClosed, StreamNotFound

__all__ = ["Producer", "Reset", "Source", "Streamer", "Subscription", "validate_stream_id"]

_STREAM_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]+")
MAX_STREAM_ID_LENGTH: Final = 128


def validate_stream_id(stream_id: object) -> str:
    """Return ``stream_id`` if it is a valid stream id, else raise :class:`InvalidStreamId` saying why.

    A stream id is 1 to 128 characters of ``A-Z a-z 0-9 . _ : -``, not made only of dots (``.`` and ``..`` name
    path segments to anything that maps ids to paths or URLs).
    """
    if not isinstance(stream_id, str) or not stream_id:
        raise InvalidStreamId("stream id must be a non-empty string")
    if len(stream_id) > MAX_STREAM_ID_LENGTH:
        raise InvalidStreamId(f"stream id is longer than {MAX_STREAM_ID_LENGTH} characters")
    if not _STREAM_ID_RE.fullmatch(stream_id):
        raise InvalidStreamId("stream id may only contain letters, digits and . _ : -")
    if not stream_id.strip("."):
        raise InvalidStreamId("stream id may not be made only of dots")
    return stream_id


class Streamer:
    """The engine: claims streams, runs each producer once, and serves readers from the event log.

    One Streamer per process and store. It is bound to the event loop it is first used on.

    :param store: the event log (default: a new :class:`~resumable_sse.MemoryStore`).
    :param lease: seconds a producer's claim lasts without renewal; a producer whose process dies is declared
        ``lost`` about this long after its last renewal (renewals happen every ``lease / 3``).
    :param max_event_bytes: largest event data accepted (UTF-8 bytes); a larger event ends its stream with ``error``.
    :param idle_timeout: seconds a producer may go without yielding before its stream ends with ``error``.
    :param grace_period: seconds running producers get to finish when the Streamer closes, before they are
        cancelled.
    :param batch_size: most events per append and per read; also how far a producer may run ahead of its writes.
    :param max_batch_bytes: most bytes of event data per append (a store or a proxy refuses commands beyond some
        size, and an append that can never succeed must not be sent) and per batch a reader takes (one read of the
        store, or of the window); at least ``max_event_bytes``. A batch holds at least one event.
    :param window: most recent events this process keeps in memory for each stream's readers that fall behind.
    :param window_bytes: most bytes of event data in that window (a stream of large events keeps fewer of them);
        a reader further behind reads the store in batches (of ``batch_size`` events and ``max_batch_bytes`` at
        most) instead. Each event in memory also keeps its encoded form once sent: up to about twice this.
    :param error_message: what clients are told when a producer raises anything but
        :class:`~resumable_sse.ProducerError`.
    :param store_retry_timeout: how long a producer's appends, and the live tail readers wait on, are retried while
        the store is unreachable.
    :param observer: told what happens to streams, readers and store calls (see :class:`~resumable_sse.Observer`),
        e.g. :class:`resumable_sse.prometheus.PrometheusMetrics`; default: none, and nothing is measured.
    """

    def __init__(
        self,
        store: EventLog | None = None,
        *,
        lease: float = 5.0,
        max_event_bytes: int = 1024 * 1024,
        idle_timeout: float = 300.0,
        grace_period: float = 10.0,
        batch_size: int = 1024,
        max_batch_bytes: int = 4 * 1024 * 1024,
        window: int = 4096,
        window_bytes: int = 4 * 1024 * 1024,
        error_message: str = "the stream failed",
        store_retry_timeout: float = 30.0,
        observer: Observer | None = None,
    ) -> None:
        if store is None:
            from .stores.memory import MemoryStore

            store = MemoryStore()
        if lease <= 0 or idle_timeout <= 0 or grace_period < 0:
            raise ValueError("lease and idle_timeout must be positive and grace_period not negative")
        if batch_size < 1 or window < batch_size:
            raise ValueError("batch_size must be at least 1 and window at least batch_size")
        if max_event_bytes < 1:
            raise ValueError("max_event_bytes must be positive")
        if max_batch_bytes < max_event_bytes:
            raise ValueError("max_batch_bytes must be at least max_event_bytes")
        if window_bytes < 1:
            raise ValueError("window_bytes must be positive")
        self.store: Final[EventLog] = store
        self.hooks: Final = HookFailures()
        """The failures of the application's hooks (observer, ``authorize``, ``stream_id``), counted and logged once."""
        self.observer: Final[Observer | None] = None if observer is None else GuardedObserver(observer, self.hooks)
        """The observer the engine reports to, or None: the one given, behind a guard (its ``wrapped``) that isolates
        its failures, so that every call site of the engine is safe."""
        self.log: Final[EventLog] = store if self.observer is None else ObservedLog(store, self.observer)
        """The store as the engine calls it: the store itself, or with an observer the store with every call timed."""
        self.lease: Final = lease
        self.max_event_bytes: Final = max_event_bytes
        self.idle_timeout: Final = idle_timeout
        self.grace_period: Final = grace_period
        self.batch_size: Final = batch_size
        self.max_batch_bytes: Final = max_batch_bytes
        self.window: Final = window
        self.window_bytes: Final = window_bytes
        self.error_message: Final = error_message
        self.store_retry_timeout: Final = store_retry_timeout
        self.liveness_interval: Final = lease / 2
        self.closing = False
        self.readers_ended = False
        """True once :meth:`end_readers` ran: subscriptions end, no new ones or new producers (server shutdown)."""
        self.hub: Final = Hub(self)
        """The live tail of every stream followed in this process."""
        self.producers: Final = Producers(self)
        """Every producer this process runs."""
        self._subscriptions: set[Reader] = set()  # those being iterated (each removes itself when it ends)
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"Streamer({self.store!r}, producers={len(self.producers)}, followed={len(self.hub.tails)})"

    @property
    def hook_failures(self) -> Mapping[str, int]:
        """How many times each of the application's hooks raised (``"Observer.reader_served"``, ``"authorize"``,
        ``"stream_id"``, ...); each hook's first failure is logged, the later ones are only counted here."""
        return MappingProxyType(self.hooks.counts)

    async def __aenter__(self) -> Streamer:
        self.bind_loop()
        return self

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop this Streamer runs on, once it has been used (or bound); None before.

        :class:`~resumable_sse.SyncStreamer` sends its calls here from other threads.
        """
        return self._loop

    def bind_loop(self) -> None:
        """Record the running event loop as this Streamer's own (first use wins); :func:`setup` calls it at
        application startup so that sync code can reach the Streamer before any stream has started."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- producers ------------------------------------------------------------------------------------------------

    async def start(self, stream_id: str, producer: Factory) -> Producer | None:
        """Claim ``stream_id`` and run ``producer()`` as its producer, in the background.

        ``producer`` is called only when the claim succeeds, so a generator is created exactly once per stream
        across every process sharing the store: an async generator function is called on the event loop, an async
        function awaited there (it returns the events), any other function is called in a thread of its own (it may
        block before it returns, like a legacy SDK's ``create(stream=True)``). Returns the running
        :class:`Producer`, or None when the stream already exists (another request or process produces it, or it has
        finished and not yet expired). Raises :class:`TypeError` at once for a generator object or anything else
        that is not a function.
        """
        validate_stream_id(stream_id)
        check_factory(producer)
        self.bind_loop()
        if self.readers_ended:  # also set by close()
            raise StreamerClosed("the Streamer is closing and starts no new producers")
        token = secrets.token_hex(16)
        claim = await self.log.claim(stream_id, token, self.lease)
        if not claim.acquired:
            return None
        return self.producers.start(token, claim.state, producer)

    async def cancel(self, stream_id: str) -> bool:
        """End a running stream with ``cancelled``, wherever its producer runs; True if this call ended it.

        The terminal entry is written atomically in the store, so it holds even if the producer's process is
        elsewhere; a local producer is stopped at once, a remote one as soon as its process hears of the end.
        """
        validate_stream_id(stream_id)
        ended = await self.log.end(stream_id, "cancelled", terminal_data("cancelled", "cancelled"))
        for run in self.producers.of(stream_id):
            run.fence("cancelled", "cancelled")
        return ended

    async def status(self, stream_id: str) -> StreamState | None:
        """The stream's current state, or None if it is unknown or has expired."""
        validate_stream_id(stream_id)
        return await self.log.state(stream_id)

    def producer(self, stream_id: str) -> Producer | None:
        """The producer of ``stream_id`` running in this process, if any."""
        runs = [run for run in self.producers.of(stream_id) if not run.task.done()]
        return Producer(runs[-1]) if runs else None

    def produces(self, state: StreamState) -> bool:
        """True when this process runs the producer of that stream's epoch and it still owns the stream (its lease
        renewals and appends vouch for the stream)."""
        run = self.producers.get(state.stream_id, state.epoch)
        return run is not None and not run.fenced and not run.task.done()

    def ended(self, state: StreamState) -> None:
        """The store says the stream ended: a local producer of that epoch that did not end it stops at once."""
        run = self.producers.get(state.stream_id, state.epoch)
        if run is not None and not run.ending and not run.task.done():
            run.fence("cancelled", "the stream was ended elsewhere")

    async def append(
        self, stream_id: str, token: str, events: Sequence[NewEvent], after: int, *, final: Status | None = None
    ) -> int:
        """Append for a producer, retrying while the store is unreachable (the append is idempotent: it names
        the sequence number it follows). Gives up after ``store_retry_timeout`` seconds."""
        last_seq = await retry_store(
            f"appending to {stream_id!r}",
            lambda: self.log.append(stream_id, token, events, after=after, final=final),
            self.store_retry_timeout,
            stream_id,
        )
        if self.observer is not None:
            self.observer.events_appended(stream_id, len(events) - (final is not None))
        return last_seq

    # -- readers --------------------------------------------------------------------------------------------------

    async def subscribe(self, stream_id: str, last_event_id: str | None = None) -> Subscription:
        """A reader's position in ``stream_id``: after ``last_event_id``, or from the first retained event.

        Raises :class:`~resumable_sse.exceptions.InvalidEventId` for a malformed id and
        :class:`~resumable_sse.exceptions.StreamNotFound` for an unknown stream (with no position, also for one that
        expires before its first page is read: never a subscription whose first read finds it gone). When the id
        cannot be continued exactly (another epoch, trimmed away, beyond the end) the subscription starts from the
        earliest retained event with a :class:`Reset` first, never silently.
        """
        validate_stream_id(stream_id)
        position = EventId.parse(last_event_id) if last_event_id is not None else None
        self.bind_loop()
        if self.readers_ended:
            raise StreamerClosed("the Streamer is closing")
        # One read answers both questions: the stream's shape (does it exist, does the position continue it) and its
        # first page, from the position when it does, else from the earliest retained entry (where a reset resumes):
        # a resume costs the store one call, not a state read and then a read (a deploy's reconnect storm makes
        # thousands at once; benchmarks/storm.py counts them). With no position, a finished stream that expires
        # meanwhile is absent (StreamNotFound: a new request may claim it) rather than present, then gone at the
        # first read (which would end the response with ``lost``). The iteration starts with this page.
        after, epoch = (0, None) if position is None else (position.seq, position.epoch)
        first = await self.log.read(stream_id, after, self.batch_size, epoch=epoch)
        if first is None:
            raise StreamNotFound(stream_id)
        state = first.state
        reset: Reset | None = None
        cursor = state.first_seq - 1
        if position is not None:
            reason = judge(state, position.epoch, position.seq, first.entries)
            if reason is None:
                cursor = position.seq
            else:
                reset = Reset(reason, state.first_id)
        if self.readers_ended:  # end_readers() ran while the store answered: this one would never be ended
            raise StreamerClosed("the Streamer is closing")
        return Subscription(self.hub, state, cursor, reset, first)

    def opened(self, subscription: Reader) -> None:
        """A subscription started being iterated (until :meth:`forget`): :meth:`end_readers` ends it."""
        self._subscriptions.add(subscription)

    def forget(self, subscription: Reader) -> None:
        """A subscription ended."""
        self._subscriptions.discard(subscription)

    def end_readers(self) -> None:
        """Make every open subscription finish now (clients reconnect), and refuse new subscriptions and new
        producers with :class:`~resumable_sse.exceptions.StreamerClosed`; used when the server shuts down. Running
        producers go on (they get the grace period of :meth:`close`)."""
        self.readers_ended = True
        for subscription in list(self._subscriptions):
            subscription.close()
        self._subscriptions.clear()

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def close(self, grace_period: float | None = None) -> None:
        """Shut down: end readers, give producers ``grace_period`` to finish, then cancel them, close the store.

        Producers cancelled here end their streams with ``cancelled`` ("server shutdown"). Returns when every
        producer this Streamer started has ended.
        """
        self.closing = True
        self.end_readers()
        await self.producers.close(self.grace_period if grace_period is None else grace_period)
        await self.hub.close()
        await self.log.close()
        self.hooks.summary()
