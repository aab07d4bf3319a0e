"""The Streamer: runs each stream's producer once, writes its events to the log, and feeds readers.

Data flows one way: producer -> :class:`_Run` (batches appends) -> store -> :class:`_Tail` (one live subscription
per stream per process, fanned out in memory) -> :class:`Subscription` (one per reader: a cursor, nothing more) ->
the wire. Nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar, Union

from ._event import Entry, EventId, Status, normalize
from ._feed import pump_in_thread
from ._log import EventLog, NewEvent, StreamState
from .exceptions import (
    EventTooLarge,
    InvalidStreamId,
    ProducerError,
    StoreUnavailable,
    StreamerClosed,
    StreamFenced,
    StreamNotFound,
)

__all__ = ["Producer", "Reset", "Source", "Streamer", "Subscription", "validate_stream_id"]

logger = logging.getLogger("resumable_sse")

_STREAM_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]+")
MAX_STREAM_ID_LENGTH: Final = 128
T = TypeVar("T")
_RETRY_FIRST_DELAY: Final = 0.05  # seconds before the first retry while the store is unreachable; doubles to:
_RETRY_MAX_DELAY: Final = 1.0

Source = Union[AsyncIterable[Any], Iterable[Any]]  # noqa: UP007 (a runtime alias on 3.10)
"""What a producer factory returns: an async iterable (run on the loop) or a plain iterable (run in a thread)."""


def validate_stream_id(stream_id: object) -> str:
    """Return ``stream_id`` if it is a valid stream id, else raise :class:`InvalidStreamId` saying why."""
    if not isinstance(stream_id, str) or not stream_id:
        raise InvalidStreamId("stream id must be a non-empty string")
    if len(stream_id) > MAX_STREAM_ID_LENGTH:
        raise InvalidStreamId(f"stream id is longer than {MAX_STREAM_ID_LENGTH} characters")
    if not _STREAM_ID_RE.fullmatch(stream_id):
        raise InvalidStreamId("stream id may only contain letters, digits and . _ : -")
    return stream_id


def _terminal_data(status: Status, message: str = "") -> str:
    body = {"state": status, "message": message} if message else {"state": status}
    return json.dumps(body, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Reset:
    """Sent in-band before a replay that is not the continuation the client asked for (never a silent gap).

    ``reason`` is ``epoch`` (the position is from an earlier life of the stream), ``trimmed`` (it is older than the
    retained history) or ``position`` (it lies beyond the stream's end). ``first_id`` is the id of the first event
    that follows the reset, or None when none is retained yet. The client should discard what it built from the
    stream and rebuild it from the events that follow.
    """

    reason: str
    first_id: str | None

    event: ClassVar[str] = "reset"

    @property
    def data(self) -> str:
        """The reset's JSON data: ``{"reason": ..., "first_id": ...}``."""
        return json.dumps({"reason": self.reason, "first_id": self.first_id}, separators=(",", ":"))

    def wire(self) -> bytes:
        """The reset as an SSE event without an id (it is not part of the log)."""
        return f"event: reset\ndata: {self.data}\n\n".encode()


class _Tail:
    """The live end of one stream in this process: one store subscription, fanned out to every local reader.

    It keeps a bounded window of recent entries (shared references, not copies) so that readers that keep up are
    served from memory; a reader further behind reads from the store in batches. Each reader costs one future.
    """

    def __init__(self, streamer: Streamer, stream_id: str, state: StreamState) -> None:
        self.streamer = streamer
        self.stream_id = stream_id
        self.epoch = state.epoch
        self.last_seq = state.last_seq
        self.finished = state.finished
        self.gone = False  # the stream expired or was re-created under a new epoch
        self.window: list[Entry] = []
        self.readers = 0
        self.waiters: set[asyncio.Future[None]] = set()
        self.task: asyncio.Task[None] | None = None

    def take(self, after: int, limit: int) -> list[Entry] | None:
        """Entries after ``after`` from the window; None when the window no longer reaches back that far."""
        window = self.window
        if after >= self.last_seq:
            return []
        if not window or window[0].seq > after + 1:
            return None
        start = after + 1 - window[0].seq
        return window[start : start + limit]

    def add(self, entries: list[Entry]) -> None:
        window = self.window
        if entries[0].seq != self.last_seq + 1:
            # The store trimmed entries this tail never saw (the producer outran it). take() indexes the window by
            # seq, so it must stay contiguous: restart it here, and readers behind it go to the store for a reset.
            window.clear()
        window.extend(entries)
        excess = len(window) - self.streamer.window
        if excess > 0:
            del window[:excess]
        self.last_seq = entries[-1].seq
        if entries[-1].terminal:
            self.finished = True
            # Ended from outside (cancel in another process, or declared lost): stop a local producer now.
            run = self.streamer._runs.get(self.stream_id)
            if run is not None and run.epoch == self.epoch and not run.task.done():
                run.fenced = True
                run.stop("cancelled", "the stream was ended elsewhere")
        self.notify()

    def notify(self) -> None:
        waiters, self.waiters = self.waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def run(self) -> None:
        """Follow the store until the stream ends, goes away, or no reader is left.

        While the store is unreachable (a Redis restart) it keeps trying for ``store_retry_timeout``, like a
        producer's appends: its readers wait instead of reconnecting, and a producer following its own stream still
        learns of a cancel from another process the moment the store is back.
        """
        streamer = self.streamer
        store = streamer.store

        async def follow() -> list[Entry]:
            entries = await store.wait(self.stream_id, self.last_seq, streamer.batch_size, streamer.liveness_interval)
            if not entries:
                # Quiet for a while: if the producer's lease ran out, end the stream as lost (exactly one process
                # wins; the terminal entry then arrives through the wait above like any other).
                await store.end(
                    self.stream_id,
                    "lost",
                    _terminal_data("lost", "the producer stopped responding"),
                    only_if_expired=True,
                )
            return entries

        doing = f"following {self.stream_id!r}"
        try:
            while self.readers and not self.finished and not self.gone and not streamer.closing:
                try:
                    entries = await streamer._retry_store(doing, follow)
                except StreamNotFound:
                    self.gone = True
                    break
                if entries:
                    if entries[0].epoch != self.epoch:
                        self.gone = True
                        break
                    self.add(entries)
        except Exception:
            logger.exception("live tail of stream %r failed; its readers will reconnect", self.stream_id)
            self.gone = True
        finally:
            self.notify()
            if streamer._tails.get(self.stream_id) is self:
                del streamer._tails[self.stream_id]


class Subscription:
    """One reader's position in a stream, with the events from there on, in order, each exactly once.

    Obtain one from :meth:`Streamer.subscribe`. Iterate :meth:`batches` (lists of entries that are ready together,
    for one socket write each) or the subscription itself (one entry at a time). Iteration ends after the terminal
    entry, or early when the Streamer shuts down or :meth:`close` is called. A reader holds a cursor and a future;
    it never holds a copy of the stream.
    """

    def __init__(self, streamer: Streamer, stream_id: str, state: StreamState, cursor: int, reset: Reset | None):
        self.stream_id: Final = stream_id
        self.state: StreamState = state
        """The stream's state when the subscription was made."""
        self.reset = reset
        """The reset to send before the first event, or None when the position continues without a gap."""
        self.cursor = cursor
        """Sequence number of the last entry delivered (0: none)."""
        self._streamer = streamer
        self._epoch = state.epoch
        self._hint = state  # the freshest state seen, to start a tail from
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._tail: _Tail | None = None

    @property
    def at_end(self) -> bool:
        """True when the position named is the terminal entry of a finished stream: nothing more will come."""
        return self.state.finished and self.reset is None and self.cursor >= self.state.last_seq

    @property
    def last_event_id(self) -> str | None:
        """The id of the last entry delivered, for resuming later."""
        return str(EventId(self._epoch, self.cursor)) if self.cursor else None

    def close(self) -> None:
        """Stop iterating (e.g. the client went away); an iteration waiting for events ends at once."""
        self._closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _attach(self) -> _Tail:
        tail = self._tail
        if tail is None:
            tail = self._tail = self._streamer._tail_for(self.stream_id, self._hint)
            tail.readers += 1
        return tail

    def _detach(self) -> None:
        if self._tail is not None:
            self._tail.readers -= 1
            self._tail = None

    async def _read(self, limit: int) -> list[Entry | Reset]:
        """The next entries after the cursor, from the store (catch-up); a Reset first if there is a gap."""
        store = self._streamer.store
        entries = await store.read(self.stream_id, self.cursor, limit)
        if not entries:
            return []
        head = entries[0]
        if head.epoch != self._epoch:
            # A new life of the stream: follow its tail from its own state (the old hint would attach the old
            # life's tail, whose end would end this subscription early). Nothing may await between the epoch change
            # and the caller moving the cursor: last_event_id must never pair the new epoch with an old seq.
            self._hint = await store.state(self.stream_id) or self._hint
            self._epoch = head.epoch
            return [Reset("epoch", head.id), *entries]
        if head.seq != self.cursor + 1:
            return [Reset("trimmed", head.id), *entries]
        return list(entries)

    async def batches(self, limit: int | None = None) -> AsyncGenerator[Sequence[Entry | Reset], None]:
        """Yield the entries ready together (up to ``limit`` each), oldest first, then wait for the live tail.

        The first batch starts with :attr:`reset` when there is one.
        """
        streamer = self._streamer
        limit = limit or streamer.batch_size
        pending_reset = self.reset
        try:
            while not self._closed and not streamer.readers_ended:
                tail = self._attach()
                batch: Sequence[Entry | Reset] | None = None
                if not tail.gone and tail.epoch == self._epoch:
                    batch = tail.take(self.cursor, limit)
                if batch is None:
                    try:
                        batch = await self._read(limit)
                    except StreamNotFound:
                        return
                    if batch and isinstance(batch[0], Reset) and batch[0].reason == "epoch":
                        self._detach()  # follow the new epoch's tail
                if pending_reset is not None:
                    batch = [pending_reset, *batch]
                    pending_reset = None
                if batch:
                    last = batch[-1]
                    if isinstance(last, Entry):
                        self.cursor = last.seq
                    yield batch
                    if isinstance(last, Entry) and last.terminal:
                        return
                    continue
                if tail.finished:
                    return  # the terminal entry was delivered before this subscription began
                if tail.gone:
                    # Ask the store whether the stream is gone or was re-created, and follow the new epoch.
                    self._detach()
                    state = await self._streamer.store.state(self.stream_id)
                    if state is None:
                        return
                    self._hint = state
                    continue
                waiter = self._waiter = asyncio.get_running_loop().create_future()
                tail.waiters.add(waiter)
                try:
                    await waiter
                finally:
                    tail.waiters.discard(waiter)
                    self._waiter = None
        finally:
            self._detach()
            self._streamer._subscriptions.discard(self)

    async def __aiter__(self) -> AsyncIterator[Entry | Reset]:
        async for batch in self.batches():
            for item in batch:
                yield item


class Producer:
    """A producer this process runs: await :meth:`wait` for the terminal state it ended its stream with."""

    def __init__(self, run: _Run) -> None:
        self._run = run

    @property
    def stream_id(self) -> str:
        """The stream it produces."""
        return self._run.stream_id

    @property
    def epoch(self) -> str:
        """The epoch of the stream it created."""
        return self._run.epoch

    def done(self) -> bool:
        """True once the stream has its terminal entry (or the producer was fenced out)."""
        return self._run.task.done()

    async def wait(self) -> Status:
        """Wait until the stream ends; return its terminal state."""
        return await asyncio.shield(self._run.task)

    # -- the end, without awaiting: for code on the loop that must not block, and for other threads --------------

    def add_done_callback(self, callback: Callable[[Producer], None]) -> None:
        """Have ``callback(producer)`` called once, on the loop, when the stream has ended (soon, if it has)."""
        self._run.task.add_done_callback(lambda _task: callback(self))

    def result(self) -> Status:
        """The stream's end state; raises :class:`asyncio.InvalidStateError` while the producer runs."""
        return self._run.task.result()


class _Run:
    """One producer: pumps its source into a pending batch while a writer loop appends batches to the store.

    While one append is in flight the next events queue and go in the next append; when the pump gets more than
    ``batch_size`` ahead it waits (backpressure). A slow producer's event is appended at once: nothing waits on a
    timer.
    """

    def __init__(
        self, streamer: Streamer, stream_id: str, token: str, epoch: str, factory: Callable[[], Source]
    ) -> None:
        self.streamer = streamer
        self.stream_id = stream_id
        self.token = token
        self.epoch = epoch
        self.factory = factory
        self.pending: list[NewEvent] = []
        self.wake = asyncio.Event()
        self.space: asyncio.Future[None] | None = None
        self.limit = min(16, streamer.batch_size)  # how far the pump may run ahead of the writer
        self.stop_reason: tuple[Status, str] | None = None  # why we stopped the pump ourselves
        self.fenced = False
        self.last_seq = 0  # what the log holds of this run; appends name it so that a retry cannot duplicate
        self.last_progress = time.monotonic()
        self.pump: asyncio.Task[None] | None = None
        self.task: asyncio.Task[Status] = asyncio.get_running_loop().create_task(
            self.supervise(), name=f"resumable-sse producer {stream_id}"
        )

    # -- the pump: the only code that touches the user's source --------------------------------------------------

    def push(self, item: object) -> None:
        """Queue one item from the source (normalized and size-checked here, so nothing oversized is written)."""
        self.pending.append(normalize(item, self.streamer.max_event_bytes))
        self.wake.set()

    def push_many(self, events: list[NewEvent]) -> None:
        """Queue events normalized elsewhere (a worker thread)."""
        self.pending.extend(events)
        self.wake.set()

    async def has_space(self) -> None:
        """Wait until the writer has taken the pending batch (backpressure on a fast producer)."""
        if len(self.pending) >= self.limit:
            self.space = asyncio.get_running_loop().create_future()
            await self.space

    async def pump_source(self) -> None:
        source = self.factory()
        if isinstance(source, AsyncIterable):
            iterator = aiter(source)
            try:
                # The hot loop: a plain short str (a token) skips normalize(); anything else is checked fully.
                pending, append, wake = self.pending, self.pending.append, self.wake.set
                max_bytes = self.streamer.max_event_bytes
                short = max_bytes // 4  # a str this short cannot exceed max_bytes in UTF-8
                async for item in iterator:
                    if type(item) is str and len(item) <= short:
                        append((None, item))
                    else:
                        append(normalize(item, max_bytes))
                    wake()
                    if len(pending) >= self.limit:
                        await self.has_space()
            finally:
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
        elif isinstance(source, Iterable):
            await pump_in_thread(self, source)
        else:
            raise TypeError(f"a producer must return an async iterable or an iterable, not {type(source).__name__}")

    # -- the writer and supervisor --------------------------------------------------------------------------------

    def stop(self, status: Status, message: str) -> None:
        """Stop the pump; the stream is ended with ``status`` unless another end was already written."""
        if self.stop_reason is None:
            self.stop_reason = (status, message)
        if self.pump is not None:
            self.pump.cancel()

    async def flush(self) -> None:
        batch = self.pending.copy()  # the pump keeps appending to the same list object
        self.pending.clear()
        # Start small so the first events go out at once, then grow to batch_size for throughput.
        self.limit = min(self.limit * 2, self.streamer.batch_size)
        space = self.space
        if space is not None and not space.done():
            space.set_result(None)
        self.last_seq = await self.streamer.append(self.stream_id, self.token, batch, self.last_seq)
        self.last_progress = time.monotonic()

    async def supervise(self) -> Status:
        pump = self.pump = asyncio.get_running_loop().create_task(self.pump_source())
        pump.add_done_callback(lambda _: self.wake.set())
        try:
            try:
                while True:
                    await self.wake.wait()
                    self.wake.clear()
                    if pump.done():
                        break
                    if self.pending:
                        await self.flush()
            except StreamFenced:
                self.fenced = True
            except BaseException:
                pump.cancel()
                with contextlib.suppress(BaseException):
                    await pump
                raise
            if self.fenced:
                pump.cancel()
                with contextlib.suppress(BaseException):
                    await pump
                return await self._outside_end()
            status, message = self._outcome(pump)
            try:
                self.last_seq = await self.streamer.append(
                    self.stream_id,
                    self.token,
                    [*self.pending, (status, _terminal_data(status, message))],
                    self.last_seq,
                    final=status,
                )
            except StreamFenced:
                return await self._outside_end()
            self.pending.clear()
            return status
        finally:
            self.streamer._runs.pop(self.stream_id, None)

    def _outcome(self, pump: asyncio.Task[None]) -> tuple[Status, str]:
        if pump.cancelled():
            if self.stop_reason is not None:
                return self.stop_reason
            return "cancelled", "the producer was cancelled"
        exc = pump.exception()
        if exc is None:
            return "done", ""
        if isinstance(exc, ProducerError):
            return "error", str(exc)
        streamer = self.streamer
        if isinstance(exc, EventTooLarge):
            logger.error("stream %r: %s; the stream ends with error", self.stream_id, exc)
            return "error", "an event was too large"
        logger.error("producer of stream %r raised; the stream ends with error", self.stream_id, exc_info=exc)
        return "error", streamer.error_message

    async def _outside_end(self) -> Status:
        """Someone else ended the stream (cancel from any process, lost, expiry): report how it ended."""
        state = await self.streamer.store.state(self.stream_id)
        if state is not None and state.epoch == self.epoch and state.finished:
            return state.status
        return "lost"


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
    :param error_message: what clients are told when a producer raises anything but
        :class:`~resumable_sse.ProducerError`.
    :param store_retry_timeout: how long a producer's appends, and the live tail readers wait on, are retried while
        the store is unreachable.
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
        window: int = 4096,
        error_message: str = "the stream failed",
        store_retry_timeout: float = 30.0,
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
        self.store: Final[EventLog] = store
        self.lease: Final = lease
        self.max_event_bytes: Final = max_event_bytes
        self.idle_timeout: Final = idle_timeout
        self.grace_period: Final = grace_period
        self.batch_size: Final = batch_size
        self.window: Final = window
        self.error_message: Final = error_message
        self.store_retry_timeout: Final = store_retry_timeout
        self.liveness_interval: Final = lease / 2
        self.closing = False
        self.readers_ended = False
        """True once :meth:`end_readers` ran: subscriptions end, no new ones or new producers (server shutdown)."""
        self._runs: dict[str, _Run] = {}
        self._tails: dict[str, _Tail] = {}
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._lease_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"Streamer({self.store!r}, producers={len(self._runs)}, tails={len(self._tails)})"

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

    async def start(self, stream_id: str, producer: Callable[[], Source]) -> Producer | None:
        """Claim ``stream_id`` and run ``producer()`` as its producer, in the background.

        ``producer`` is called only when the claim succeeds, so a generator is created exactly once per stream
        across every process sharing the store. Returns the running :class:`Producer`, or None when the stream
        already exists (another request or process produces it, or it has finished and not yet expired).
        """
        validate_stream_id(stream_id)
        self.bind_loop()
        if self.readers_ended:  # also set by close()
            raise StreamerClosed("the Streamer is closing and starts no new producers")
        token = secrets.token_hex(16)
        claim = await self.store.claim(stream_id, token, self.lease)
        if not claim.acquired:
            return None
        run = self._runs[stream_id] = _Run(self, stream_id, token, claim.state.epoch, producer)
        # Follow the stream while its producer runs, like a reader would: an end written by another process (cancel)
        # then stops the producer at once instead of at its next append or lease renewal.
        tail = self._tail_for(stream_id, claim.state)
        tail.readers += 1

        def release(_task: object) -> None:
            tail.readers -= 1

        run.task.add_done_callback(release)
        if self._lease_task is None or self._lease_task.done():
            self._lease_task = asyncio.get_running_loop().create_task(self._keep_leases())
        return Producer(run)

    async def cancel(self, stream_id: str) -> bool:
        """End a running stream with ``cancelled``, wherever its producer runs; True if this call ended it.

        The terminal entry is written atomically in the store, so it holds even if the producer's process is
        elsewhere; a local producer is stopped at once, a remote one at its next write or lease renewal.
        """
        validate_stream_id(stream_id)
        ended = await self.store.end(stream_id, "cancelled", _terminal_data("cancelled", "cancelled"))
        run = self._runs.get(stream_id)
        if run is not None:
            run.fenced = True
            run.stop("cancelled", "cancelled")
        return ended

    async def status(self, stream_id: str) -> StreamState | None:
        """The stream's current state, or None if it is unknown or has expired."""
        validate_stream_id(stream_id)
        return await self.store.state(stream_id)

    def producer(self, stream_id: str) -> Producer | None:
        """The producer of ``stream_id`` running in this process, if any."""
        run = self._runs.get(stream_id)
        return None if run is None else Producer(run)

    async def append(
        self, stream_id: str, token: str, events: list[NewEvent], after: int, *, final: Status | None = None
    ) -> int:
        """Append for a producer, retrying while the store is unreachable (the append is idempotent: it names
        the sequence number it follows). Gives up after ``store_retry_timeout`` seconds."""
        return await self._retry_store(
            f"appending to {stream_id!r}",
            lambda: self.store.append(stream_id, token, events, after=after, final=final),
        )

    async def _retry_store(self, doing: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``, called again with a growing delay while it raises ``StoreUnavailable`` (a Redis
        restart), for up to ``store_retry_timeout`` seconds; then the last ``StoreUnavailable`` propagates."""
        deadline = time.monotonic() + self.store_retry_timeout
        delay = _RETRY_FIRST_DELAY
        while True:
            try:
                return await call()
            except StoreUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning("store unreachable while %s; retrying in %.2f s", doing, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_DELAY)

    async def _keep_leases(self) -> None:
        """Renew every local producer's lease, and stop producers that were fenced out or went idle."""
        while self._runs:
            await asyncio.sleep(self.lease / 3)
            now = time.monotonic()
            for run in list(self._runs.values()):
                if run.task.done():
                    continue
                try:
                    kept = await self.store.renew(run.stream_id, run.token, self.lease)
                except Exception:
                    logger.warning("could not renew the lease of stream %r", run.stream_id, exc_info=True)
                    continue
                if not kept:
                    run.fenced = True
                    run.stop("lost", "")
                elif not run.pending and now - run.last_progress > self.idle_timeout:
                    logger.error(
                        "producer of stream %r yielded nothing for %.0f s; the stream ends with error",
                        run.stream_id,
                        self.idle_timeout,
                    )
                    run.stop("error", "the producer was idle too long")

    # -- readers --------------------------------------------------------------------------------------------------

    async def subscribe(self, stream_id: str, last_event_id: str | None = None) -> Subscription:
        """A reader's position in ``stream_id``: after ``last_event_id``, or from the first retained event.

        Raises :class:`~resumable_sse.exceptions.InvalidEventId` for a malformed id and
        :class:`~resumable_sse.exceptions.StreamNotFound` for an unknown stream. When the id cannot be continued
        exactly (another epoch, trimmed away, beyond the end) the subscription starts from the earliest retained
        event with a :class:`Reset` first, never silently.
        """
        validate_stream_id(stream_id)
        position = EventId.parse(last_event_id) if last_event_id is not None else None
        self.bind_loop()
        if self.readers_ended:
            raise StreamerClosed("the Streamer is closing")
        state = await self.store.state(stream_id)
        if state is None:
            raise StreamNotFound(stream_id)
        start = state.first_seq - 1
        first_id = state.id_of(state.first_seq) if state.first_seq <= state.last_seq else None
        reset: Reset | None = None
        cursor = start
        if position is not None:
            if position.epoch != state.epoch:
                reset = Reset("epoch", first_id)
            elif position.seq > state.last_seq:
                reset = Reset("position", first_id)
            elif position.seq < start:
                reset = Reset("trimmed", first_id)
            else:
                cursor = position.seq
        if self.readers_ended:  # end_readers() ran while the store answered: this one would never be ended
            raise StreamerClosed("the Streamer is closing")
        subscription = Subscription(self, stream_id, state, cursor, reset)
        self._subscriptions.add(subscription)
        return subscription

    def _tail_for(self, stream_id: str, state: StreamState) -> _Tail:
        tail = self._tails.get(stream_id)
        if tail is not None and not tail.gone and tail.epoch == state.epoch:
            return tail
        tail = _Tail(self, stream_id, state)
        if not tail.finished:  # a finished stream is read from the store alone: no task, nothing registered
            self._tails[stream_id] = tail
            tail.task = asyncio.get_running_loop().create_task(tail.run(), name=f"resumable-sse tail {stream_id}")
        return tail

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

        Producers cancelled here end their streams with ``cancelled`` ("server shutdown").
        """
        self.closing = True
        self.end_readers()
        grace = self.grace_period if grace_period is None else grace_period
        runs = [run.task for run in self._runs.values()]
        if runs:
            _, still_running = await asyncio.wait(runs, timeout=grace)
            for run in list(self._runs.values()):
                run.stop("cancelled", "server shutdown")
            if still_running:
                await asyncio.wait(still_running)
        for tail in list(self._tails.values()):
            if tail.task is not None:
                tail.task.cancel()
        tails = [tail.task for tail in self._tails.values() if tail.task is not None]
        if self._lease_task is not None:
            self._lease_task.cancel()
            tails.append(self._lease_task)
        await asyncio.gather(*tails, return_exceptions=True)
        await self.store.close()
