"""Where blocking code meets the event loop: the only module of resumable-sse that crosses threads.

Two pieces, one idea each:

* a **portal** (:func:`call_in_loop`): a blocking thread hands a coroutine to an event loop with
  :func:`asyncio.run_coroutine_threadsafe` and waits for its result (or for the loop to stop). The loop is the
  application's own (a :class:`SyncStreamer` sharing the aiohttp app's :class:`~resumable_sse.Streamer`) or a
  :class:`LoopThread` of its own (:meth:`SyncStreamer.from_url`, for worker processes with no event loop; the
  blocking client :func:`~resumable_sse.client.iter_events` uses one too). Called from that loop's own thread the
  portal refuses (:class:`~resumable_sse.exceptions.EventLoopError`) instead of waiting for itself forever.
* a **feed** (:class:`_Feed`): the events of one stream crossing from blocking threads to the loop. Threads append
  to a buffer under a lock and schedule one wake-up on the loop only when none is pending; the loop takes the whole
  buffer at once. A fast producer therefore crosses threads once per batch, not once per event, while a slow
  producer's event crosses at once (nothing waits on a timer). When the buffer is full the threads wait
  (backpressure); when the stream stops (cancelled, lost, shutdown) they are told at their next event.

Everything else is the async :class:`~resumable_sse.Streamer`: the feed is just another producer source, drained
into the same run (batched appends, leases, cancel, terminal entry) as an async generator would be.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import weakref
from collections.abc import AsyncIterable, Callable, Coroutine, Iterable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ._event import Payload, Status, normalize
from ._log import NewEvent, StreamState
from ._streamer import Producer, Streamer
from .exceptions import EventLoopError, StreamAlreadyClaimed, StreamerClosed, StreamFenced

if TYPE_CHECKING:
    from ._producer import _Run

__all__ = ["SyncStreamer", "SyncWriter", "pump_in_thread"]

T = TypeVar("T")

_BUFFER_BATCHES = 2
"""A feed holds up to this many of the Streamer's ``batch_size`` before its threads wait for the loop."""

_POLL = 0.25
"""Seconds between looks at the loop while a thread waits for it (a loop that stopped never answers)."""


def _wait_on_loop(loop: asyncio.AbstractEventLoop, ready: Callable[[float], bool]) -> bool:
    """Call ``ready(timeout)`` until it returns True; False once ``loop`` has stopped for good.

    A thread waiting for the loop would otherwise wait forever when the loop stops (application shutdown) before
    it ran what the thread asked for. A loop seen not running twice in a row is taken as stopped: between the
    ``run_until_complete`` calls of a shutdown it is briefly not running and then runs again.
    """
    stopped = 0
    while not ready(_POLL):
        stopped = stopped + 1 if not loop.is_running() else 0  # a closed loop is not running either
        if stopped >= 2 or loop.is_closed():
            return ready(0)  # a last look: what finished just before the loop stopped still counts
    return True


class _Feed:
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

                def has_room(timeout: float) -> bool:
                    return self.room.wait_for(
                        lambda: len(self.buffer) < self.limit or self.stopped or self.finished, timeout
                    )

                if not _wait_on_loop(self.loop, has_room):
                    self.stopped = True  # the loop stopped: nobody will ever drain this feed
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
        max_bytes, short = self.max_bytes, self.max_bytes // 4
        lock, buffer, append = self.lock, self.buffer, self.buffer.append
        try:
            for item in iterator:
                # The hot path, inlined: a short str needs no normalize(), and room in the buffer no waiting.
                event = (None, item) if type(item) is str and len(item) <= short else normalize(item, max_bytes)
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

    async def drain_into(self, run: _Run) -> None:
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
        """The stream takes no more events: waiting threads wake, and every later :meth:`put` returns False."""
        with self.lock:
            self.stopped = True
            self.room.notify_all()


async def pump_in_thread(run: _Run, source: Iterable[object]) -> None:
    """Drain the blocking ``source`` into ``run`` without blocking the event loop.

    A :class:`SyncStreamer` feed is drained directly (its threads are the caller's). Any other iterable, e.g. a
    plain generator given to :func:`~resumable_sse.resumable_handler`, is pulled by a new daemon thread. Cancelling
    this coroutine stops the thread at the source's next event (a ``next()`` already blocking cannot be
    interrupted; the thread is a daemon so that it never holds up interpreter exit).
    """
    if isinstance(source, _Feed):
        await source.drain_into(run)
        return
    streamer = run.streamer
    feed = _Feed(run.stream_id, asyncio.get_running_loop(), streamer.max_event_bytes, streamer.batch_size)

    def work() -> None:
        try:
            iterator = iter(source)
        except BaseException as exc:
            feed.end(exc)
            return
        feed.pull(iterator)

    threading.Thread(target=work, name=f"resumable-sse producer {run.stream_id}", daemon=True).start()
    await feed.drain_into(run)


def call_in_loop(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    """The portal: run ``coroutine`` on ``loop``, which runs in another thread, and block until it returns or raises.

    Raises :class:`~resumable_sse.exceptions.StreamerClosed` when the loop stops before it finished the call. The
    caller makes sure this is not the loop's own thread (it would wait for itself).
    """
    try:
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    except BaseException:
        coroutine.close()
        raise
    try:
        if not _wait_on_loop(loop, lambda timeout: bool(concurrent.futures.wait([future], timeout)[0])):
            future.cancel()
            raise StreamerClosed("the event loop stopped before it finished this call")
        return future.result()
    except BaseException:
        future.cancel()  # interrupted here (KeyboardInterrupt): do not leave the coroutine running
        raise


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The body of a loop thread: run until stopped, then cancel what is left, close async generators, close."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


class LoopThread:
    """An event loop on a daemon thread of its own, for code that has none.

    Used by :meth:`SyncStreamer.from_url` (a worker process) and by the blocking client
    (:func:`~resumable_sse.client.iter_events`). :meth:`call` runs a coroutine there and waits for it; :meth:`stop`
    ends the loop (what still runs is cancelled) and waits for the thread.
    """

    def __init__(self, name: str) -> None:
        self.loop: Final = asyncio.new_event_loop()
        self.thread: Final = threading.Thread(target=_run_loop, args=(self.loop,), name=name, daemon=True)
        self.thread.start()

    def in_thread(self) -> bool:
        """True when called from the loop's own thread (where waiting for the loop would deadlock)."""
        return threading.get_ident() == self.thread.ident

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and block until it returns or raises (see :func:`call_in_loop`)."""
        if self.in_thread():
            coroutine.close()
            raise EventLoopError("a LoopThread was called from its own thread, where it would wait for itself")
        return call_in_loop(self.loop, coroutine)

    def stop(self) -> None:
        """Stop the loop and wait for the thread to end; from the loop's own thread, only stop it."""
        if not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_thread():
            self.thread.join()


def _shutdown(portal: LoopThread, streamer: Streamer, grace_period: float | None) -> None:
    """Close a SyncStreamer's own Streamer on its loop thread, then stop the thread and wait for it.

    Also the finalizer of a SyncStreamer that was never closed (collected, or at interpreter exit): its running
    streams end as ``cancelled`` at once rather than being declared ``lost`` a lease later.
    """
    if portal.in_thread():  # collected on its own loop thread: it cannot wait for itself
        portal.stop()
        return
    try:
        if portal.loop.is_running():
            portal.call(streamer.close(grace_period))
    finally:
        portal.stop()


class SyncStreamer:
    """The resumable streams of a :class:`~resumable_sse.Streamer`, for blocking code. Safe from many threads.

    ::

        sync = SyncStreamer(streamer)              # share the aiohttp app's Streamer (same process)
        sync = SyncStreamer.from_url("redis://")   # a worker process: a Streamer on a loop thread of its own

        state = sync.publish("answer-42", legacy_sdk_stream())   # blocks until the stream ends
        with sync.writer("answer-43") as w:                      # callback-style SDKs: on_token=w.send
            w.send("Hello")

    There is one implementation underneath: every call runs the Streamer's own coroutine on the Streamer's event
    loop and waits for it. Call it from any thread but that loop's own (that raises
    :class:`~resumable_sse.exceptions.EventLoopError`; use the Streamer directly there).

    :param streamer: the Streamer to use. Its event loop is the one it is bound to (by :func:`~resumable_sse.setup`
        at application startup, or by its first use), else the one running where this SyncStreamer is created.
    :param loop: the Streamer's event loop, if it must be named (it then wins over both).
    """

    def __init__(self, streamer: Streamer, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.streamer = streamer
        self._loop = loop
        # Made inside a running loop: that one, unless the Streamer binds another (the application's) before use.
        self._running_loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):
            self._running_loop = asyncio.get_running_loop()
        self._own_loop: LoopThread | None = None  # from_url(): the loop thread of its own
        self._finalizer: weakref.finalize[Any, Any] | None = None  # from_url(): shuts that thread down if forgotten
        self._closed = False
        self._feeds: dict[str, _Feed] = {}  # streams this facade produces now; touched on the loop only

    @classmethod
    def from_url(
        cls, url: str, *, store_options: Mapping[str, Any] | None = None, **streamer_options: Any
    ) -> SyncStreamer:
        """A SyncStreamer with a Streamer of its own on the store at ``url``, run by a loop thread of its own.

        For code with no event loop, e.g. a worker process publishing through Redis while an aiohttp process
        serves the readers. ``store_options`` go to the store (see :func:`~resumable_sse.from_url`),
        ``streamer_options`` to the :class:`~resumable_sse.Streamer`. Call :meth:`close` (or use ``with``) to
        finish running streams and stop the thread.
        """
        from .stores import from_url as store_from_url

        portal = LoopThread("resumable-sse SyncStreamer loop")

        async def make() -> Streamer:
            streamer = Streamer(store_from_url(url, **(store_options or {})), **streamer_options)
            streamer.bind_loop()
            return streamer

        try:
            streamer = portal.call(make())
        except BaseException:
            portal.stop()
            raise
        sync = cls(streamer, loop=portal.loop)
        sync._own_loop = portal
        sync._finalizer = weakref.finalize(sync, _shutdown, portal, streamer, 0.0)
        return sync

    def __repr__(self) -> str:
        state = "closed" if self._closed else "own loop thread" if self._own_loop else "shared loop"
        return f"SyncStreamer({self.streamer!r}, {state})"

    def __enter__(self) -> SyncStreamer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the portal -------------------------------------------------------------------------------------------------

    def _target_loop(self, *, new_work: bool = True) -> asyncio.AbstractEventLoop:
        if self._closed and new_work:
            raise StreamerClosed("this SyncStreamer is closed")
        loop = self._loop or self.streamer.loop or self._running_loop
        if loop is None:
            raise EventLoopError(
                "the Streamer has no event loop yet: start the aiohttp application (setup(app, streamer) binds it), "
                "create the SyncStreamer inside the running loop, or pass SyncStreamer(streamer, loop=...)"
            )
        if loop.is_closed() or not loop.is_running():
            raise StreamerClosed("the Streamer's event loop is not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise EventLoopError(
                "SyncStreamer was called from its Streamer's own event loop thread, where it would wait for itself "
                "forever: await the Streamer there, or call SyncStreamer from another thread (asyncio.to_thread)"
            )
        return loop

    def _call(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any, new_work: bool = True) -> T:
        """Run ``function(*args)`` on the Streamer's loop and block this thread until it returns or raises.

        ``new_work=False`` for waiting on what is already running, which a closed SyncStreamer still allows.
        """
        loop = self._target_loop(new_work=new_work)
        return call_in_loop(loop, function(*args))

    # -- producers --------------------------------------------------------------------------------------------------

    async def _claim(self, stream_id: str) -> tuple[_Feed, Producer]:
        """On the loop: claim ``stream_id`` with a feed as its producer source; StreamAlreadyClaimed if taken."""
        streamer = self.streamer
        feed = _Feed(stream_id, asyncio.get_running_loop(), streamer.max_event_bytes, streamer.batch_size)
        producer = await streamer.start(stream_id, lambda: feed)
        if producer is None:
            raise StreamAlreadyClaimed(stream_id)
        self._feeds[stream_id] = feed

        def ended(_task: object) -> None:
            # However the run ends (even before its pump started), senders must stop waiting.
            feed.stop()
            if self._feeds.get(stream_id) is feed:
                del self._feeds[stream_id]

        producer._run.task.add_done_callback(ended)
        return feed, producer

    async def _cancel(self, stream_id: str) -> bool:
        ended = await self.streamer.cancel(stream_id)
        feed = self._feeds.get(stream_id)
        if feed is not None:
            feed.stop()  # before cancel() returns: the producer's very next event is refused
        return ended

    def _outcome(self, producer: Producer) -> Status:
        """Wait for a producer this facade started to end; its end state."""
        task = producer._run.task
        if not task.done():
            try:
                return self._call(producer.wait, new_work=False)
            except StreamerClosed:
                if not task.done():  # the loop stopped under a running stream
                    raise
        return task.result()  # done: readable from any thread, even once the loop has stopped

    def publish(self, stream_id: str, source: Iterable[Payload]) -> Status:
        """Claim ``stream_id``, drain the blocking ``source`` into it in this thread, and return the end state.

        Returns ``done`` when ``source`` is exhausted, ``error`` when it raised (the traceback is logged; clients
        get the message of a :class:`~resumable_sse.ProducerError`, else a generic one), ``cancelled`` when
        :meth:`cancel` (from any thread or process) stopped it: ``source`` is then not pulled again and is closed.
        Raises :class:`~resumable_sse.StreamAlreadyClaimed` when the stream already exists (running or finished).
        """
        if isinstance(source, AsyncIterable) and not isinstance(source, Iterable):
            raise TypeError("publish() takes a plain iterable; start an async generator with Streamer.start()")
        iterator = iter(source)
        try:
            feed, producer = self._call(self._claim, stream_id)
        except BaseException:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            raise
        error = feed.pull(iterator)
        if error is not None and not isinstance(error, Exception):
            raise error  # KeyboardInterrupt and friends: the stream ends with error on the loop; do not wait
        return self._outcome(producer)

    def writer(self, stream_id: str) -> SyncWriter:
        """Claim ``stream_id`` and return a :class:`SyncWriter` whose ``send()`` appends to it.

        Use it as a context manager: leaving the block ends the stream with ``done``, or with ``error`` when the
        block raised. Raises :class:`~resumable_sse.StreamAlreadyClaimed` when the stream already exists.
        """
        feed, producer = self._call(self._claim, stream_id)
        return SyncWriter(self, stream_id, feed, producer)

    def cancel(self, stream_id: str) -> bool:
        """End a running stream with ``cancelled``, wherever it is produced; True if this call ended it.

        A stream produced by :meth:`publish` stops pulling its source at the next event; a writer's next
        ``send()`` raises :class:`~resumable_sse.StreamFenced`.
        """
        return self._call(self._cancel, stream_id)

    def status(self, stream_id: str) -> StreamState | None:
        """The stream's current state (``.status`` is ``running`` or its end state), or None if it is unknown."""
        return self._call(self.streamer.status, stream_id)

    def close(self, grace_period: float | None = None) -> None:
        """Stop taking calls. With a Streamer of its own (:meth:`from_url`): give running streams
        ``grace_period`` seconds (default: the Streamer's), close the Streamer and its store, stop the loop thread.

        A shared Streamer is left alone: the application that owns it closes it.
        """
        if self._closed:
            return
        portal, finalizer = self._own_loop, self._finalizer
        if portal is None or finalizer is None:
            self._closed = True
            return
        self._target_loop()  # refuses the loop's own thread
        self._closed = True
        if finalizer.detach() is not None:
            _shutdown(portal, self.streamer, grace_period)


class SyncWriter:
    """A stream a blocking caller writes to event by event; from :meth:`SyncStreamer.writer`. Thread-safe.

    ``send()`` calls from several threads are appended in the order they take the writer's lock. Each call costs a
    lock, not a thread crossing: events sent while the loop is busy go over together.
    """

    def __init__(self, sync: SyncStreamer, stream_id: str, feed: _Feed, producer: Producer) -> None:
        self.stream_id = stream_id
        self._sync = sync
        self._feed = feed
        self._producer = producer
        self._state: Status | None = None

    def __repr__(self) -> str:
        return f"SyncWriter({self.stream_id!r}, state={self.state!r})"

    @property
    def state(self) -> Status | None:
        """How the stream ended (``done``, ``error``, ``cancelled``, ``lost``) once closed; None while open."""
        return self._state

    @property
    def stopped(self) -> bool:
        """True once the stream takes no more events (closed, cancelled, lost, or its Streamer shut down)."""
        return self._feed.stopped or self._feed.finished

    def send(self, data: Payload) -> None:
        """Append one event: ``str``, ``bytes`` (UTF-8), a JSON-able ``dict``/``list``, or an Event.

        Returns at once unless the loop is far behind (then it waits for room). Raises
        :class:`~resumable_sse.StreamFenced` once the stream takes no more events (cancelled, lost, closed,
        shutdown), so that a callback-driven SDK stops; :class:`~resumable_sse.EventTooLarge` for an oversized
        event (nothing is written).
        """
        feed = self._feed
        if not feed.put(normalize(data, feed.max_bytes)):
            raise StreamFenced(self.stream_id)

    def close(self) -> Status:
        """End the stream with ``done`` (unless it already ended) and return how it ended."""
        return self._finish(None)

    def _finish(self, error: BaseException | None) -> Status:
        if self._state is not None:
            return self._state
        self._feed.end(error)
        state = self._sync._outcome(self._producer)
        self._state = state
        return state

    def __enter__(self) -> SyncWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        """End the stream: ``done``, or ``error`` when the block raised (the exception propagates).

        The one exception swallowed is the :class:`~resumable_sse.StreamFenced` that ``send()`` raised because the
        stream was stopped from outside (cancelled, lost, shutdown): the block was told to stop and did;
        :attr:`state` says how the stream ended.
        """
        feed = self._feed
        if exc is not None and not isinstance(exc, Exception):
            feed.end(exc)  # KeyboardInterrupt and friends: end the stream, do not wait for it
            return False
        stopped_from_outside = feed.stopped and not feed.finished
        self._finish(exc)
        return isinstance(exc, StreamFenced) and exc.stream_id == self.stream_id and stopped_from_outside
