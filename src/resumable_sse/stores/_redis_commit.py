"""Group commit: the appends of every producer of a process travel together, one round trip per group.

While a group is in flight, the appends that arrive queue and go in the next group, sent as soon as the reply comes.
One group at a time: several in flight at once (each on a connection of its own) were measured, and made the groups
smaller, the CPU per token higher and the latency no better (``benchmarks/fleet.py``, Redis row).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .._tasks import spawn
from ._redis_format import Pending

__all__ = ["GroupCommit"]


class GroupCommit:
    """The queue of appends not yet sent, and the task that sends them: ``send(group)`` sends one group and settles
    the future of each of its appends (a failure of the store comes through each append's future)."""

    def __init__(self, send: Callable[[list[Pending]], Awaitable[None]]) -> None:
        self.send = send
        self.queue: list[Pending] = []
        self.task: asyncio.Task[None] | None = None
        self.round_trips = 0

    def add(self, item: Pending) -> None:
        """Queue an append: it goes in the next group (in the next turn of the event loop, when none is in flight)."""
        self.queue.append(item)
        if self.task is None or self.task.done():
            self.task = spawn(self.run(), "resumable-sse redis group commit")

    async def run(self) -> None:
        """Send what is queued, one group per round trip, until nothing is queued."""
        while self.queue:
            group, self.queue = self.queue, []
            self.round_trips += 1
            await self.send(group)

    async def close(self) -> None:
        """Wait for the group in flight, and the ones queued behind it."""
        if self.task is not None and not self.task.done():
            await asyncio.wait({self.task})
