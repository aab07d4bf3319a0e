"""Blocking code producing resumable streams: :class:`SyncStreamer` and its :class:`SyncWriter`.

A facade over the async :class:`~resumable_sse.Streamer`, nothing more. Each call runs the Streamer's own
coroutine on the Streamer's event loop through the portal (:mod:`resumable_sse._portal`) and waits for it; the
events of a stream produced here cross from the caller's threads to the loop through a feed
(:mod:`resumable_sse._feed`), which the Streamer drains into the same run (batched appends, leases, cancel, terminal
entry) as an async generator's events. The loop is the application's (a SyncStreamer sharing the aiohttp app's
Streamer) or a :class:`~resumable_sse._portal.LoopThread` of its own (:meth:`SyncStreamer.from_url`, for worker
processes with no event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterable, Callable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from ._event import Payload, Status, normalize
from ._feed import Feed
from ._log import StreamState
from ._portal import LoopThread, call_in_loop
from ._streamer import Producer, Streamer
from .exceptions import EventLoopError, StreamAlreadyClaimed, StreamerClosed, StreamFenced

__all__ = ["SyncStreamer", "SyncWriter"]

T = TypeVar("T")


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
        self._feeds: dict[str, Feed] = {}  # streams this facade produces now; touched on the loop only

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

    async def _claim(self, stream_id: str) -> tuple[Feed, Producer]:
        """On the loop: claim ``stream_id`` with a feed as its producer source; StreamAlreadyClaimed if taken."""
        streamer = self.streamer
        feed = Feed(stream_id, asyncio.get_running_loop(), streamer.max_event_bytes, streamer.batch_size)

        async def source() -> Feed:  # async: handed over on the loop (a plain function would get a thread)
            return feed

        producer = await streamer.start(stream_id, source)
        if producer is None:
            raise StreamAlreadyClaimed(stream_id)
        self._feeds[stream_id] = feed

        def ended(_producer: Producer) -> None:
            # However the run ends (even before its pump started), senders must stop waiting.
            feed.stop()
            if self._feeds.get(stream_id) is feed:
                del self._feeds[stream_id]

        producer.add_done_callback(ended)
        return feed, producer

    async def _cancel(self, stream_id: str) -> bool:
        ended = await self.streamer.cancel(stream_id)
        feed = self._feeds.get(stream_id)
        if feed is not None:
            feed.stop()  # before cancel() returns: the producer's very next event is refused
        return ended

    def _outcome(self, producer: Producer) -> Status:
        """Wait for a producer this facade started to end; its end state."""
        if not producer.done():
            try:
                return self._call(producer.wait, new_work=False)
            except StreamerClosed:
                if not producer.done():  # the loop stopped under a running stream
                    raise
        return producer.result()  # done: readable from any thread, even once the loop has stopped

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

    def __init__(self, sync: SyncStreamer, stream_id: str, feed: Feed, producer: Producer) -> None:
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
