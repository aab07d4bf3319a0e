"""Group commit: the appends of every producer of a process travel together, one round trip per group.

While groups are in flight, the appends that arrive queue and go in the next group. Several groups may be in flight
at once (each on a connection of its own), so a group never waits for the round trip of the one before: under load
that would hold every token for a whole round trip plus a turn of a busy event loop. The order of one stream's
appends does not depend on it: a producer has at most one append in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

from .._tasks import spawn
from ._redis_format import Pending

__all__ = ["GroupCommit"]

MAX_IN_FLIGHT: Final = 8
"""Group commits in flight at once."""


class GroupCommit:
    """The queue of appends not yet sent, and the tasks that send them: ``send(group)`` sends one group and settles
    the future of each of its appends (it never raises for a failure of the store: each append's future carries it).
    """

    def __init__(self, send: Callable[[list[Pending]], Awaitable[None]]) -> None:
        self.send = send
        self.queue: list[Pending] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.gathering = False  # a group commit has been started and has not yet taken the queue
        self.round_trips = 0

    def add(self, item: Pending) -> None:
        """Queue an append: it is sent in the next turn of the event loop, in one group with the others queued by
        then, unless :data:`MAX_IN_FLIGHT` groups are in flight (the first of them to be done then takes it)."""
        self.queue.append(item)
        if not self.gathering and len(self.tasks) < MAX_IN_FLIGHT:
            self.gathering = True
            task = spawn(self.run(), "resumable-sse redis group commit")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def run(self) -> None:
        """Send what is queued, one group per round trip, until nothing is queued or another commit takes it."""
        while True:
            self.gathering = False
            group, self.queue = self.queue, []
            if not group:
                return
            self.round_trips += 1
            await self.send(group)
            if self.gathering:
                return  # another commit takes what came meanwhile

    async def close(self) -> None:
        """Wait for the groups in flight."""
        if self.tasks:
            await asyncio.wait(self.tasks)
