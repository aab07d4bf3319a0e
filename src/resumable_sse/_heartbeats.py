"""Heartbeats of every response of an event loop, on one timer per heartbeat interval.

The responses due for a heartbeat wait in one queue per interval. Every response joins at the back, so each queue
stays in due order and only its first entry needs a timer. When the timer fires, each response now due sends its
heartbeat through its ``beat()``, which never waits. A response whose heartbeat could wait (a write in progress, a
full socket buffer) writes it from a task made for that one heartbeat, bounded by ``send_timeout``, and rejoins the
queue when it is written; a response whose connection is closing stops its heartbeat and says the client is gone.
No response keeps a task of its own for its heartbeats, as aiohttp-sse's responses do (idle CPU and memory per
connection: ``benchmarks/idle.py``).
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from typing import Any, Protocol

__all__ = ["MESSAGE", "Beating", "Heartbeats", "heartbeats"]

MESSAGE = b": ping\n"
"""The heartbeat: one SSE comment line, which clients ignore (no blank line after it: see ``_http.HEARTBEAT``)."""

SLACK = 1 / 64
"""A heartbeat is sent at most this share of the interval late (0.23 s of the default 15 s), so that one timer
serves the many due together."""


class Beating(Protocol):
    """What a response offers its heartbeats."""

    @property
    def heartbeat(self) -> float:
        """Seconds between heartbeats."""

    heartbeat_at: float
    """When its next heartbeat is due (the loop's clock); kept by :class:`Heartbeats`."""

    heartbeat_ref: weakref.ReferenceType[Any] | None
    """A weak reference to the response itself, made by :class:`Heartbeats` once."""

    def beat(self) -> bool:
        """Send the heartbeat now if that cannot wait; else have a task write it (the response joins the queue again
        when it is written), or do nothing when the response stopped. True when it was sent."""


class _Interval:
    """The responses of one heartbeat interval, in due order, and the timer for the first of them."""

    __slots__ = ("interval", "queue", "timer")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        # Weak references (one a response, made once): an ended response is not kept until its turn comes.
        self.queue: collections.deque[weakref.ReferenceType[Any]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None


class Heartbeats:
    """The heartbeat timers of one event loop (see the module's docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.intervals: dict[float, _Interval] = {}

    def add(self, response: Beating) -> None:
        """Send ``response`` a heartbeat one interval from now (and every interval after, while it can be sent at
        once)."""
        interval = response.heartbeat
        group = self.intervals.get(interval)
        if group is None:
            group = self.intervals[interval] = _Interval(interval)
        response.heartbeat_at = self.loop.time() + interval
        ref = response.heartbeat_ref
        if ref is None:
            ref = response.heartbeat_ref = weakref.ref(response)
        group.queue.append(ref)
        if group.timer is None:
            self._arm(group)

    def _arm(self, group: _Interval) -> None:
        """Set the timer for the first live response of ``group``, or forget the group when none is left."""
        queue = group.queue
        while queue:
            first: Beating | None = queue[0]()
            if first is not None:
                group.timer = self.loop.call_at(first.heartbeat_at + group.interval * SLACK, self._beat, group)
                return
            queue.popleft()
        if self.intervals.get(group.interval) is group:
            del self.intervals[group.interval]

    def _beat(self, group: _Interval) -> None:
        group.timer = None
        queue, now = group.queue, self.loop.time()
        again = now + group.interval
        while queue:
            response: Beating | None = queue[0]()
            if response is not None and response.heartbeat_at > now:
                break
            ref = queue.popleft()
            if response is not None and response.beat():
                response.heartbeat_at = again
                queue.append(ref)
        self._arm(group)


_HEARTBEATS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Heartbeats] = weakref.WeakKeyDictionary()


def heartbeats() -> Heartbeats:
    """The running loop's heartbeats."""
    loop = asyncio.get_running_loop()
    found = _HEARTBEATS.get(loop)
    if found is None:
        found = _HEARTBEATS[loop] = Heartbeats(loop)
    return found
