"""The feed: one stream's events on their way from blocking threads to the event loop.

Threads append to a buffer under a lock and schedule one wake-up on the loop only when none is pending; the loop
takes the whole buffer at once. A fast producer therefore crosses threads once per batch, not once per event, while
a slow producer's event crosses at once (nothing waits on a timer). When the buffer is full the threads wait
(backpressure); when the stream stops (cancelled, lost, shutdown) they are told at their next event, and when the
loop stops for good the portal (:func:`~resumable_sse._portal.on_loop_stop`) wakes them at once.

Two users: :class:`~resumable_sse.SyncStreamer` (its callers' threads put events) and :func:`pump_in_thread`, which
the Streamer uses for a producer that is a plain iterable (a daemon thread pulls it). Either way the loop side is
:meth:`Feed.drain_into`, handing batches to the producer's run like an async generator's events. This module only
knows the run through the small :class:`ProducerRun` protocol, so that the Streamer can import it without a cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Protocol, TypeVar

from ._event import is_plain_token, normalize
from ._log import NewEvent
from ._portal import on_loop_stop
from .exceptions import EventLoopError

__all__ = ["Feed", "ProducerRun", "StreamLimits", "call_in_thread", "pump_in_thread"]

T = TypeVar("T")

_BUFFER_BATCHES: Final = 2
"""A feed holds up to this many of the Streamer's ``batch_size`` before its threads wait for the loop."""


class StreamLimits(Protocol):
    """What a feed needs of the Streamer: its event size limit and its append batch size."""

    @property
    def max_event_bytes(self) -> int: ...

    @property
    def batch_size(self) -> int: ...


class ProducerRun(Protocol):
    """The producer run a feed is drained into (the Streamer's): it queues events and applies backpressure."""

    @property
    def stream_id(self) -> str: ...

    @property
    def streamer(self) -> StreamLimits: ...

    def push_many(self, events: list[NewEvent]) -> None:
        """Queue events normalized elsewhere (by the feed's threads)."""

    async def has_space(self) -> None:
        """Wait until an append has taken what is pending (backpressure)."""


class Feed:
    """One stream's events on their way from blocking threads to the loop (see the module docstring).

    Thread side: :meth:`put` and :meth:`end`, from any number of threads. Loop side: :meth:`drain_into` (the
    producer's pump) and :meth:`stop`. The lock guards every field below it.
    """

    def __init__(self, stream_id: str, loop: asyncio.AbstractEventLoop, max_bytes: int, batch_size: int) -> None:
        self.stream_id = stream_id
        self.loop = loop
        self.loop_thread = threading.get_ident()  # feeds are made on the loop
        self.max_bytes = max_bytes
        self.max_limit = batch_size * _BUFFER_BATCHES
        self.limit = min(16, self.max_limit)  # small at first so the first events go out at once, then grows
        self.lock = threading.Lock()
        self.room = threading.Condition(self.lock)
        self.buffer: list[NewEvent] = []  # one list object for the feed's life: threads may hold its append
        self.finished = False  # the thread side ended the source (returned or raised)
        self.error: BaseException | None = None
        self.stopped = False  # the loop side takes nothing more (cancel, lost, shutdown, or done)
        self.wake: asyncio.Future[None] | None = None
        self.wake_scheduled = False
        # Made on the loop (by SyncStreamer or pump_in_thread): should that loop stop for good, waiting threads wake.
        self._unwatch = on_loop_stop(loop, self.stop)

    def __iter__(self) -> Iterator[object]:
        # Only so that a Streamer hands the feed to pump_in_thread like any plain iterable.
        raise TypeError("a SyncStreamer feed is drained by its Streamer; it is not iterated")

    # -- thread side ----------------------------------------------------------------------------------------------

    def _schedule_wake(self) -> None:
        """With the lock held: make sure the loop will look at the buffer (one wake-up in flight at most)."""
        self.wake_scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._on_wake)
        except RuntimeError:  # the loop is closed: nobody will ever drain this feed
            self.stopped = True

    def put(self, event: NewEvent) -> bool:
        """Queue one normalized event; False (nothing queued) when the stream takes no more events."""
        with self.lock:
            if len(self.buffer) >= self.limit:
                if threading.get_ident() == self.loop_thread:
                    raise EventLoopError("a SyncWriter was written to from its event loop's thread while full")
                # No timeout: the loop drains the buffer, or the stream stops, or the portal reports the loop gone.
                self.room.wait_for(lambda: len(self.buffer) < self.limit or self.stopped or self.finished)
            if self.stopped or self.finished:
                return False
            self.buffer.append(event)
            if not self.wake_scheduled:
                self._schedule_wake()
            return True

    def pull(self, iterator: Iterator[object]) -> BaseException | None:
        """Drain a blocking ``iterator`` into the feed in this thread, then end the feed and close the iterator.

        Stops pulling as soon as the stream takes no more events (the one item in hand is dropped). Returns what
        the iterator raised, if anything; it also goes to the loop, which ends the stream with ``error``.
        """
        error: BaseException | None = None
        max_bytes = self.max_bytes
        lock, buffer, append = self.lock, self.buffer, self.buffer.append
        try:
            for item in iterator:
                # The hot path, inlined: a plain ASCII token needs no normalize() (is_plain_token), and room in the
                # buffer no waiting.
                event = (None, item) if is_plain_token(item, max_bytes) else normalize(item, max_bytes)
                with lock:
                    if len(buffer) < self.limit and not self.stopped and not self.finished:
                        append(event)
                        if not self.wake_scheduled:
                            self._schedule_wake()
                        continue
                if not self.put(event):
                    break
        except BaseException as exc:
            error = exc
        close = getattr(iterator, "close", None)
        if close is not None:
            try:
                close()
            except Exception as exc:
                error = error or exc
        self.end(error)
        return error

    def end(self, error: BaseException | None = None) -> None:
        """The source is over: returned (``error`` None) or raised ``error``. Later calls change nothing."""
        with self.lock:
            if self.finished:
                return
            self.finished = True
            self.error = error
            self.room.notify_all()
            if not self.wake_scheduled:
                self._schedule_wake()

    # -- event loop -----------------------------------------------------------------------------------------------

    def _on_wake(self) -> None:
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def drain_into(self, run: ProducerRun) -> None:
        """Hand the buffered events to ``run`` in batches until the source ends; raise what the source raised."""
        try:
            while True:
                with self.lock:
                    events = self.buffer.copy()
                    self.buffer.clear()
                    if events:
                        self.limit = min(self.limit * 2, self.max_limit)
                    finished = self.finished
                    self.wake_scheduled = False
                    if not events and not finished:
                        self.wake = self.loop.create_future()
                    self.room.notify_all()
                if events:
                    run.push_many(events)
                    await run.has_space()
                elif finished:
                    break
                else:
                    assert self.wake is not None
                    await self.wake
        finally:
            self.stop()
        error = self.error
        if error is None:
            return
        if isinstance(error, Exception):
            raise error
        # KeyboardInterrupt, SystemExit... belong to the producer's thread, not to the event loop.
        raise RuntimeError(f"the producer's thread was interrupted by {type(error).__name__}") from error

    def stop(self) -> None:
        """The stream takes no more events: waiting threads wake, and every later :meth:`put` returns False.

        From the loop, or from whichever thread the portal tells that the loop stopped.
        """
        with self.lock:
            self.stopped = True
            self.room.notify_all()
        self._unwatch()


async def pump_in_thread(run: ProducerRun, source: Iterable[object]) -> None:
    """Drain the blocking ``source`` into ``run`` without blocking the event loop.

    A :class:`~resumable_sse.SyncStreamer` feed is drained directly (its threads are the caller's). Any other
    iterable, e.g. a plain generator given to :func:`~resumable_sse.resumable_handler`, is pulled by a new daemon
    thread. Cancelling this coroutine stops the thread at the source's next event (a ``next()`` already blocking
    cannot be interrupted; the thread is a daemon so that it never holds up interpreter exit).
    """
    if isinstance(source, Feed):
        await source.drain_into(run)
        return
    streamer = run.streamer
    feed = Feed(run.stream_id, asyncio.get_running_loop(), streamer.max_event_bytes, streamer.batch_size)

    def work() -> None:
        try:
            iterator = iter(source)
        except BaseException as exc:
            feed.end(exc)
            return
        feed.pull(iterator)

    threading.Thread(target=work, name=f"resumable-sse producer {run.stream_id}", daemon=True).start()
    await feed.drain_into(run)


async def call_in_thread(function: Callable[[], T], name: str) -> T:
    """``function()`` called in a new daemon thread (no executor to outlive the loop), its result awaited here."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result, error = function(), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name=name, daemon=True).start()
    return await future
