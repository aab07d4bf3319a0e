"""The library's background tasks (each one's outcome is retrieved, a failure logged by ``resumable_sse``), and
the small task primitives the producer runtime uses on the path of every event.

asyncio reports an exception nobody retrieved only when the task is collected ("Task exception was never
retrieved", on the ``asyncio`` logger, maybe never). Every task the library starts on its own behalf (producer
supervisors, the lease keeper, the auditor, Redis watch listeners and group commits) is started here instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["Signal", "spawn", "stopped"]

logger = logging.getLogger("resumable_sse")

T = TypeVar("T")


def spawn(coroutine: Coroutine[Any, Any, T], name: str, stream_id: str | None = None) -> asyncio.Task[T]:
    """Start ``coroutine`` as a task named ``name`` whose failure, if any, is logged once (with ``stream_id``, the
    stream the task serves, None for a task that serves many)."""
    task = asyncio.get_running_loop().create_task(coroutine, name=name)
    task.add_done_callback(lambda done: _report(done, stream_id))
    return task


def _report(task: asyncio.Task[Any], stream_id: str | None) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        logger.error("%s failed", task.get_name(), exc_info=error, extra={"stream_id": stream_id})


class Signal:
    """The writer's wake-up: set by the pump at every event (a no-op when already set); the writer, its one
    waiter, clears it when it wakes. Lighter than :class:`asyncio.Event`, which keeps a queue of waiters and makes a
    coroutine per wait: this is on the path of every event."""

    __slots__ = ("future", "is_set")

    def __init__(self) -> None:
        self.is_set = False
        self.future: asyncio.Future[None] | None = None

    def set(self) -> None:
        if not self.is_set:
            self.is_set = True
            future = self.future
            if future is not None and not future.done():
                future.set_result(None)

    async def wait(self) -> None:
        """Return once the signal is set, and clear it."""
        if not self.is_set:
            self.future = asyncio.get_running_loop().create_future()
            try:
                await self.future
            finally:
                self.future = None
        self.is_set = False


async def stopped(pump: asyncio.Task[None]) -> None:
    """Cancel ``pump`` and wait for it to end, without taking a cancel aimed at the caller for the pump's."""
    pump.cancel()
    await asyncio.wait({pump})
    if not pump.cancelled():
        pump.exception()  # retrieved: the run reports how the stream ended
