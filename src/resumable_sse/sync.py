"""Where blocking code meets the event loop: the only module of resumable-sse that crosses threads.

:func:`pump_in_thread` runs a plain (blocking) iterable in a worker thread and hands its events to the loop in
batches: the thread appends to a shared buffer and schedules one wake-up on the loop only when none is pending, so
a fast generator crosses threads once per batch, not once per event, and a slow one's event crosses at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._event import normalize
from ._log import NewEvent

if TYPE_CHECKING:
    from ._streamer import _Run

__all__ = ["pump_in_thread"]


class _ThreadPump:
    """A blocking iterable drained by a daemon thread into a buffer the loop takes from."""

    def __init__(self, run: _Run, source: Iterable[object], loop: asyncio.AbstractEventLoop) -> None:
        self.run = run
        self.source = source
        self.loop = loop
        self.max_bytes = run.streamer.max_event_bytes
        self.limit = run.streamer.batch_size
        self.lock = threading.Lock()
        self.room = threading.Condition(self.lock)
        self.buffer: list[NewEvent] = []
        self.finished = False
        self.error: BaseException | None = None
        self.stopped = False
        self.wake: asyncio.Future[None] | None = None
        self.wake_scheduled = False

    # -- worker thread --------------------------------------------------------------------------------------------

    def _signal(self) -> None:
        """Called with the lock held: make sure the loop will look at the buffer."""
        if not self.wake_scheduled:
            self.wake_scheduled = True
            self.loop.call_soon_threadsafe(self._on_loop_wake)

    def work(self) -> None:
        iterator = iter(self.source)
        try:
            for item in iterator:
                event = normalize(item, self.max_bytes)
                with self.lock:
                    while len(self.buffer) >= self.limit and not self.stopped:
                        self.room.wait()
                    if self.stopped:  # cancelled (maybe while next() was blocking): pull nothing more
                        break
                    self.buffer.append(event)
                    self._signal()
        except BaseException as exc:
            self.error = exc
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    self.error = self.error or exc
            with self.lock:
                self.finished = True
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                    self._signal()

    # -- event loop -----------------------------------------------------------------------------------------------

    def _on_loop_wake(self) -> None:
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def drain(self) -> None:
        while True:
            with self.lock:
                events, self.buffer = self.buffer, []
                finished = self.finished
                self.wake_scheduled = False
                if not events and not finished:
                    self.wake = self.loop.create_future()
                self.room.notify()
            if events:
                self.run.push_many(events)
                await self.run.has_space()
            elif finished:
                if self.error is not None:
                    raise self.error
                return
            else:
                assert self.wake is not None
                await self.wake

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            self.room.notify()


async def pump_in_thread(run: _Run, source: Iterable[object]) -> None:
    """Drain the blocking ``source`` in a worker thread into ``run``; never blocks the event loop.

    Cancelling this coroutine stops the thread at the source's next event (a ``next()`` already blocking cannot be
    interrupted; the thread is a daemon so it never holds up interpreter exit).
    """
    pump = _ThreadPump(run, source, asyncio.get_running_loop())
    thread = threading.Thread(target=pump.work, name=f"resumable-sse producer {run.stream_id}", daemon=True)
    thread.start()
    try:
        await pump.drain()
    finally:
        pump.stop()
