"""The library's background tasks: each one's outcome is retrieved, a failure logged by ``resumable_sse``.

asyncio reports an exception nobody retrieved only when the task is collected ("Task exception was never
retrieved", on the ``asyncio`` logger, maybe never). Every task the library starts on its own behalf (producer
runs, the lease keeper, the auditor, Redis watch listeners and group commits) is started here instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._logger import logger

__all__ = ["spawn"]

T = TypeVar("T")


def spawn(coroutine: Coroutine[Any, Any, T], name: str, stream_id: str | None = None) -> asyncio.Task[T]:
    """Start ``coroutine`` as a task named ``name`` whose failure, if any, is logged once (with ``stream_id``, the
    stream the task serves, None for a task that serves many)."""
    loop = asyncio.get_running_loop()
    report = _SHARED if stream_id is None else _Report(stream_id)
    if sys.version_info >= (3, 11):
        # One context copy shared by task and callback (benchmarks/idle.py).
        context = contextvars.copy_context()
        task = loop.create_task(coroutine, name=name, context=context)
        task.add_done_callback(report, context=context)
    else:
        task = loop.create_task(coroutine, name=name)
        task.add_done_callback(report)
    return task


class _Report:
    """A task's done callback that logs its failure (a cancelled task is not a failure). Slotted for memory: a
    running stream holds one (``benchmarks/idle.py``)."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: str | None) -> None:
        self.stream_id = stream_id

    def __call__(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            logger.error("%s failed", task.get_name(), exc_info=error, extra={"stream_id": self.stream_id})


_SHARED = _Report(None)  # for tasks that serve many streams
