"""Group commit: the appends of every producer of a process travel together, one round trip per group.

While a group is in flight, the appends that arrive queue and go in the next group, sent as soon as the reply comes.
In the steady state that is one group at a time: several in flight at once were measured, and made the groups
smaller and the CPU per token higher for no better latency (``benchmarks/fleet.py``, Redis row).

A burst is different (every paced producer appends at once after the event loop stood still): a queue longer than
:data:`GROUP_SIZE` goes as several groups in flight at once (up to :data:`SENDERS`, each on a connection of its
own), so Redis runs one while this process delivers another and the first streams hear back after one small group
(one group of a thousand appends took ~13 ms in Redis and ~18 ms here to apply and deliver).

Order: a stream's appends go to Redis in the order they were submitted. Groups in flight on different connections
may run in any order, so an append whose stream has an append in another group still in flight waits for the next
group (a run appends one batch at a time, so that only happens to direct callers of ``submit_append``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .._tasks import spawn
from ._redis_format import Pending

__all__ = ["GROUP_SIZE", "SENDERS", "GroupCommit"]

GROUP_SIZE = 256
"""The most appends one group takes when more are queued (a steady fleet's groups are far smaller)."""

SENDERS = 4
"""The most groups in flight at once (only while the queue holds more than one group's worth)."""


class GroupCommit:
    """The queue of appends not yet sent, and the tasks that send them: ``send(group)`` sends one group and settles
    the future of each of its appends (a failure of the store comes through each append's future)."""

    def __init__(self, send: Callable[[list[Pending]], Awaitable[None]]) -> None:
        self.send = send
        self.queue: list[Pending] = []
        # Senders that have not returned: each leaves the set itself as it returns (in step with the queue, which a
        # done callback, a turn later, would not be), or through never_ran() when it never started.
        self.senders: set[asyncio.Task[None]] = set()
        self.in_flight: dict[str, int] = {}  # stream id -> its appends in groups in flight
        self.round_trips = 0

    def add(self, item: Pending) -> None:
        """Queue an append: it goes in the next group (in the next turn of the event loop, when none is in flight,
        or at once on another connection when the queue holds more than a group)."""
        queue = self.queue
        queue.append(item)
        running = len(self.senders)
        if running == 0 or (running < SENDERS and len(queue) > running * GROUP_SIZE):
            task = spawn(self.run(), "resumable-sse redis group commit")
            self.senders.add(task)  # at once, so the appends of this very turn do not start a sender each
            task.add_done_callback(self.never_ran)

    def never_ran(self, task: asyncio.Task[None]) -> None:
        """A sender cancelled before its first step (a loop shutting down) did not leave the set: do it here."""
        self.senders.discard(task)

    def take(self) -> list[Pending]:
        """The next group: the queue's first :data:`GROUP_SIZE` appends, leaving (in order) those of a stream with
        an append in flight in another group, and every later one of that stream."""
        queue, in_flight = self.queue, self.in_flight
        if not in_flight and len(queue) <= GROUP_SIZE:
            group, self.queue = queue, []
        else:
            group, rest = [], []
            held: set[str] = set()
            for index, item in enumerate(queue):
                if len(group) == GROUP_SIZE:
                    rest += queue[index:]  # (a flood is not scanned to its end by every group)
                    break
                stream_id = item.stream_id
                if stream_id in in_flight or stream_id in held:
                    held.add(stream_id)
                    rest.append(item)
                else:
                    group.append(item)
            self.queue = rest
        for item in group:
            in_flight[item.stream_id] = in_flight.get(item.stream_id, 0) + 1
        return group

    async def run(self) -> None:
        """Send what is queued, one group per round trip, until nothing this sender may take is queued."""
        try:
            while self.queue:
                group = self.take()
                if not group:
                    return  # what is left waits for an append in flight: the sender of that one takes it next
                self.round_trips += 1
                try:
                    await self.send(group)
                finally:
                    in_flight = self.in_flight
                    for item in group:
                        left = in_flight[item.stream_id] - 1
                        if left:
                            in_flight[item.stream_id] = left
                        else:
                            del in_flight[item.stream_id]
        finally:
            task = asyncio.current_task()
            if task is not None:
                self.senders.discard(task)

    async def close(self) -> None:
        """Wait for the groups in flight, and the ones queued behind them."""
        while self.senders:
            await asyncio.wait(set(self.senders))
