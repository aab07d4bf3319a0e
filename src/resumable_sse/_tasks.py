"""The library's background tasks: each one's outcome is retrieved, a failure logged by ``resumable_sse``.

asyncio reports an exception nobody retrieved only when the task is collected ("Task exception was never
retrieved", on the ``asyncio`` logger, maybe never). Every task the library starts on its own behalf (producer
runs, the lease keeper, the auditor, Redis watch listeners and group commits) is started here instead.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["spawn"]

logger = logging.getLogger("resumable_sse")

T = TypeVar("T")


def spawn(coroutine: Coroutine[Any, Any, T], name: str, stream_id: str | None = None) -> asyncio.Task[T]:
    """Start ``coroutine`` as a task named ``name`` whose failure, if any, is logged once (with ``stream_id``, the
    stream the task serves, None for a task that serves many)."""
    task = asyncio.get_running_loop().create_task(coroutine, name=name)
    task.add_done_callback(functools.partial(_report, stream_id))  # (lighter than a closure)
    return task


def _report(stream_id: str | None, task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        logger.error("%s failed", task.get_name(), exc_info=error, extra={"stream_id": stream_id})
