"""The portal: a blocking thread runs a coroutine on an event loop running in another thread, and waits for it.

Shared by :class:`~resumable_sse.SyncStreamer` (server side) and the blocking client
(:func:`~resumable_sse.client.iter_events`). The loop is either someone else's (a *foreign* loop: the aiohttp
application's, which a SyncStreamer shares with its :class:`~resumable_sse.Streamer`) or a :class:`LoopThread` of
our own (for code that has no event loop).

**A waiting thread is released when the loop stops, without polling.** The portal keeps every call it handed to a
loop (a registry per loop) until the call settles, and fails what is still pending with
:class:`~resumable_sse.exceptions.StreamerClosed` on the first signal that the loop will not finish it:

* A :class:`LoopThread` says so itself: its thread body fails the pending calls the moment ``run_forever`` returns,
  before it cancels what is left.
* A foreign loop has no "stopped" callback (``loop.stop()`` only sets a flag, and a stopped loop may run again), so
  the portal uses the hooks that do exist:

  - **the call's task is cancelled or destroyed**: every call runs inside a small wrapper task; ``asyncio.run``,
    ``aiohttp.web.run_app`` and ``asyncio.Runner`` cancel all tasks when they shut down, and a task dropped pending
    has its coroutine closed. Either way the wrapper fails the call on its way out.
  - **the loop is closed with the call still queued**: ``loop.close()`` drops the queued callbacks, and the callback
    the portal queued fails its call when it is dropped unrun.
  - **the thread that ran the loop ends**: the portal notes the thread that runs each call and leaves a marker in a
    thread-local there; a thread's locals are discarded when it ends, and the marker's finalizer then fails the
    pending calls of the loops that thread ran. This covers a thread that stops its loop and returns without
    closing it. It needs no extra thread and no timer. The main thread is not marked (its locals outlive the
    interpreter's shutdown): the loops it runs end by being closed (``asyncio.run``, ``run_app``), the hooks above.

  The Streamer's :meth:`~resumable_sse.Streamer.close` is deliberately not a hook: an application closes its
  Streamer while the loop still runs (aiohttp's cleanup runs on the loop), so calls queued then still run and the
  Streamer itself refuses them; and a loop can stop without its Streamer ever being closed.

  A loop that is merely stopped while its thread goes on is not dead (it may run again): calls wait for it as they
  wait for a busy loop, and are released when it is closed or its thread ends.

Code that waits for the loop in other ways (a :class:`~resumable_sse._feed.Feed`'s producer threads waiting for room)
registers with :func:`on_loop_stop` to be told the same way. A call that failed is never run later: if the loop
does come back, the call's coroutine is closed unstarted or its task cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Final, Generic, TypeVar

from .exceptions import EventLoopError, StreamerClosed

__all__ = ["LoopThread", "call_in_loop", "on_loop_stop"]

T = TypeVar("T")

_STOPPED: Final = "the event loop stopped before it finished this call"


class _LoopCalls:
    """What the portal knows about one event loop: the calls it waits for, and who to tell when the loop stops.

    ``lock`` guards every field. It is re-entrant because a dropped call's finalizer may run in any thread at any
    point, including one that already holds it.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.calls: set[_Call[Any]] = set()
        self.listeners: dict[object, Callable[[], None]] = {}
        self.thread: threading.Thread | None = None  # the thread last seen running the loop
        self.own = False  # a LoopThread's loop: it reports its own stop, no watcher needed
        self.stopped = False  # declared stopped (until seen running again)

    def seen_running(self) -> None:
        """On the loop: note the thread running it, and watch that thread's end (once per thread)."""
        thread = threading.current_thread()
        with self.lock:
            self.stopped = False
            if self.thread is thread:
                return
            self.thread = thread
        if not self.own:
            _watch(self)

    def stop(self) -> None:
        """The loop stopped for good: fail every pending call and tell every listener (once)."""
        with self.lock:
            self.stopped = True
            calls, self.calls = list(self.calls), set()
            listeners, self.listeners = list(self.listeners.values()), {}
        for call in calls:
            call.fail(StreamerClosed(_STOPPED))
        for listener in listeners:
            listener()


_records: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopCalls] = weakref.WeakKeyDictionary()
_records_lock: Final = threading.Lock()


def _record_for(loop: asyncio.AbstractEventLoop) -> _LoopCalls:
    with _records_lock:
        record = _records.get(loop)
        if record is None:
            record = _records[loop] = _LoopCalls()
        return record


class _ThreadEnd:
    """Kept in a thread-local of each thread that runs a loop: discarded when that thread ends, it then declares
    stopped the loops the thread ran (unless another thread has run them since)."""

    __slots__ = ("records", "thread")

    def __init__(self) -> None:
        self.thread = threading.current_thread()
        self.records: weakref.WeakSet[_LoopCalls] = weakref.WeakSet()

    def __del__(self) -> None:
        # Runs in the ending thread while its thread-locals are cleared. Nothing here may ask threading which
        # thread this is (that would register a new dummy thread on its way out).
        with contextlib.suppress(Exception):  # at interpreter exit there may be nobody left to tell
            for record in list(self.records):
                if record.thread is self.thread:
                    record.stop()


_thread_ends = threading.local()


def _watch(record: _LoopCalls) -> None:
    """On a loop's thread: have ``record``'s loop declared stopped when this thread ends."""
    if threading.current_thread() is threading.main_thread():
        return  # its thread-locals outlive the interpreter's shutdown; its loops end by closing (see above)
    end = getattr(_thread_ends, "end", None)
    if end is None:
        end = _thread_ends.end = _ThreadEnd()
    end.records.add(record)


class _Call(Generic[T]):
    """One coroutine handed to a loop by a waiting thread: ``future`` is what the thread waits on."""

    __slots__ = ("coroutine", "future", "loop", "record", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, record: _LoopCalls, coroutine: Coroutine[Any, Any, T]) -> None:
        self.loop = loop
        self.record = record
        self.coroutine = coroutine
        self.future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """On the loop: run the coroutine in a task, unless the call was failed or abandoned meanwhile."""
        record = self.record
        record.seen_running()
        with record.lock:
            if not self.future.done() and self.future.set_running_or_notify_cancel():
                self.task = self.loop.create_task(self._run())
                return
            record.calls.discard(self)
        self.coroutine.close()

    async def _run(self) -> None:
        try:
            result = await self.coroutine
        except (asyncio.CancelledError, GeneratorExit):  # cancelled, or destroyed pending, by the loop's shutdown
            self._settle(StreamerClosed("the event loop cancelled this call (it is shutting down)"))
            raise
        except BaseException as exc:
            self._settle(exc)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: the loop's business too
        else:
            self._settle(None, result)

    def _settle(self, error: BaseException | None, result: Any = None) -> None:
        with self.record.lock:
            self.record.calls.discard(self)
            if self.future.done():  # failed from outside meanwhile
                return
            if error is None:
                self.future.set_result(result)
            else:
                self.future.set_exception(error)

    def fail(self, error: BaseException) -> None:
        """From any thread: release the waiter with ``error``; what already runs on the loop is cancelled there."""
        with self.record.lock:
            self.record.calls.discard(self)
            if self.future.done():
                return
            self.future.set_exception(error)
            task = self.task
        if task is not None:
            self._cancel(task)
        else:  # never started, and now never will: start() sees the failure
            self.coroutine.close()

    def abandon(self) -> None:
        """The waiter gives up (e.g. KeyboardInterrupt): do not start the call, or cancel it if it runs."""
        with self.record.lock:
            cancelled = self.future.cancel()  # False once running
            task = self.task
        if cancelled:
            self.coroutine.close()  # never started, and now never will
        elif task is not None:
            self._cancel(task)

    def _cancel(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the task will never run again anyway
            self.loop.call_soon_threadsafe(task.cancel)


class _Starter:
    """The callback queued on the loop for one call. Dropped unrun (the loop was closed), it fails the call."""

    __slots__ = ("call",)

    def __init__(self, call: _Call[Any]) -> None:
        self.call: _Call[Any] | None = call

    def __call__(self) -> None:
        call, self.call = self.call, None
        if call is not None:
            call.start()

    def __del__(self) -> None:
        call = self.call
        if call is not None:
            # At interpreter exit even this may fail; there is nobody left to tell then.
            with contextlib.suppress(Exception):
                call.fail(StreamerClosed("the event loop was closed before it ran this call"))


def call_in_loop(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on ``loop``, which runs in another thread, and block until it returns or raises.

    Raises :class:`~resumable_sse.exceptions.StreamerClosed` at once when the loop is closed or known to have
    stopped, and as soon as it stops (see the module docstring) before it finished the call. The caller makes sure
    this is not the loop's own thread (it would wait for itself).
    """
    record = _record_for(loop)
    with record.lock:
        refused = loop.is_closed() or (record.stopped and not loop.is_running())
        if not refused:
            call = _Call(loop, record, coroutine)
            record.calls.add(call)
    if refused:
        coroutine.close()
        raise StreamerClosed("the event loop has stopped")
    try:
        loop.call_soon_threadsafe(_Starter(call))
    except RuntimeError:  # closed meanwhile
        call.fail(StreamerClosed("the event loop is closed"))
    try:
        return call.future.result()
    except BaseException:
        call.abandon()  # interrupted here (KeyboardInterrupt): do not leave the coroutine running
        raise


def on_loop_stop(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback()`` once, from whichever thread notices, when the portal sees ``loop`` stop for good.

    Call it on ``loop`` itself, so that the portal knows (and watches) the thread running it. Returns a function
    that cancels the registration (safe to call more than once, from any thread).
    """
    if asyncio.get_running_loop() is not loop:
        raise RuntimeError("on_loop_stop() must be called on the loop it watches")
    record = _record_for(loop)
    record.seen_running()
    token = object()
    with record.lock:
        record.listeners[token] = callback

    def cancel() -> None:
        with record.lock:
            record.listeners.pop(token, None)

    return cancel


class LoopThread:
    """An event loop on a daemon thread of its own, for code that has none.

    Used by :meth:`SyncStreamer.from_url <resumable_sse.SyncStreamer.from_url>` (a worker process) and by the
    blocking client (:func:`~resumable_sse.client.iter_events`). :meth:`call` runs a coroutine there and waits for it;
    :meth:`stop` ends the loop (calls still waiting raise :class:`~resumable_sse.exceptions.StreamerClosed` at once,
    what still runs is cancelled) and waits for the thread.
    """

    def __init__(self, name: str) -> None:
        self.loop: Final = asyncio.new_event_loop()
        _record_for(self.loop).own = True
        self._running = True  # run_forever has not returned yet; read and written on the loop's thread only
        self.thread: Final = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        """The thread's body: run until stopped, release the waiters, cancel what is left, close."""
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            self._running = False  # a stop() arriving from now on must not cut the cleanup's run short
            try:
                _record_for(loop).stop()  # first: the cleanup below runs the loop again and may take a while
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def _stop_running(self) -> None:
        if self._running:
            self.loop.stop()

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
                self.loop.call_soon_threadsafe(self._stop_running)
        if not self.in_thread():
            self.thread.join()
