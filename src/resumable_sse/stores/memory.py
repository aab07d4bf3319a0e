"""The embedded memory store: one process, no dependencies, bounded.

Streams live in a dict; each keeps its retained events as two lists of strings (event types and data), with a moving
head so that appends, trims and reads from any position are O(1) amortized plus the entries returned. Nothing runs in
the background: expired streams are swept when the store is used, so an idle store holds no task, no timer and no
future. An append is its own notification: it calls the watches that follow the stream, with the new entries, before
it returns.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final

from .._event import Entry, Status, new_epoch
from .._log import Claim, NewEvent, OnChange, Page, StreamState
from ..exceptions import StoreFull, StreamFenced, StreamNotFound

__all__ = ["MemoryStore"]


class _Stream:
    """One stream's events and state: ``types[i]`` and ``texts[i]`` are the event type and data of sequence number
    ``base + i``; from index ``head`` on they are retained.

    Rule: an event is kept as its two strings, never as an object of its own (an :class:`Entry`, or the producer's
    tuple). Strings are not tracked by the garbage collector, so a kept event adds nothing to the count that starts
    a collection, nor to the full collections that pause the event loop; a kept tuple did, once per token until
    the collector untracked it (``benchmarks/fleet.py --streams 500 --only memory``: 194 collections and a 73 ms full
    one with tuples, 18 to 28 and no full one without). Entries are made when read.
    """

    __slots__ = (
        "base",
        "epoch",
        "expires_at",
        "head",
        "last_token",
        "lease_until",
        "status",
        "texts",
        "token",
        "types",
    )

    def __init__(self, epoch: str, token: str, lease_until: float) -> None:
        self.epoch = epoch
        self.status: Status = "running"
        self.token: str | None = token
        self.last_token: str | None = None  # who made the last append (to recognise a retried append)
        self.lease_until = lease_until
        self.expires_at = 0.0  # set when the stream finishes
        self.types: list[str | None] = []
        self.texts: list[str] = []
        self.base = 1
        self.head = 0

    @property
    def last_seq(self) -> int:
        return self.base + len(self.texts) - 1

    @property
    def first_seq(self) -> int:
        return self.base + self.head

    def after(self, after: int, limit: int) -> list[Entry]:
        # Sequence numbers are contiguous, so an event's index follows from its seq.
        start = max(self.head, after + 1 - self.base)
        return self.entries(start, start + limit)

    def entries(self, start: int, stop: int | None = None) -> list[Entry]:
        """The events at indexes ``start`` to ``stop`` (the last, by default) as entries."""
        texts = self.texts
        epoch, seq = self.epoch, self.base + start
        if start == len(texts) - 1:  # a paced token's append: no slice, no comprehension (fleet.py --profile)
            return [Entry(epoch, seq, self.types[start], texts[start])]
        pairs = zip(self.types[start:stop], texts[start:stop], strict=True)
        return [Entry(epoch, seq + i, event, data) for i, (event, data) in enumerate(pairs)]

    def keep(self, events: Sequence[NewEvent]) -> None:
        """Add ``events`` at the end (their strings: see the class docstring)."""
        if len(events) == 1:
            event, data = events[0]
            self.types.append(event)
            self.texts.append(data)
        else:
            self.types.extend([event for event, _ in events])
            self.texts.extend([data for _, data in events])

    def drop(self, count: int) -> None:
        """Let go of the first ``count`` kept events (trimmed ones: ``count`` is at most :attr:`head`)."""
        del self.types[:count]
        del self.texts[:count]
        self.base += count
        self.head -= count


class _MemoryWatch:
    """A :class:`~resumable_sse.Watch` on a memory store: the store calls it from its writes."""

    def __init__(self, store: MemoryStore, on_change: OnChange) -> None:
        self.store = store
        self.on_change = on_change
        self.followed: set[str] = set()

    def follow(self, stream_id: str, entries: bool = True) -> None:
        # Every change is made in this process: entries come either way. A stream followed anew is announced like
        # the Redis watch announces an effective subscription, so that its follower reads it once more: what it
        # knew of the stream may be older than the store (a subscription made before the stream changed).
        if stream_id not in self.followed:
            self.followed.add(stream_id)
            self.on_change(stream_id, None)

    def unfollow(self, stream_id: str) -> None:
        self.followed.discard(stream_id)

    async def close(self) -> None:
        self.followed.clear()
        if self in self.store._watches:
            self.store._watches.remove(self)


class MemoryStore:
    """An :class:`~resumable_sse.EventLog` in this process's memory.

    Streams are shared by every reader in the process and lost when it exits (a new stream after a restart gets a
    new epoch, so resuming clients are told, never silently misled). Use
    :class:`~resumable_sse.stores.redis.RedisStore` to share streams between processes.

    :param max_events: entries kept per stream; older ones are trimmed (a reader that falls further behind is sent
        a ``reset``).
    :param ttl: seconds a finished stream is kept for late readers and reconnects.
    :param max_streams: streams kept at once; beyond it the oldest finished streams are dropped early, and when
        all are running a new stream is refused with :class:`~resumable_sse.exceptions.StoreFull`.
    """

    def __init__(
        self,
        *,
        max_events: int = 10_000,
        ttl: float = 600.0,
        max_streams: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        self.max_events: Final = max_events
        self.ttl: Final = ttl
        self.max_streams: Final = max_streams
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        # Finished streams in the order they finished, which is also the order they expire in (one ttl for all).
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._watches: list[_MemoryWatch] = []

    def __repr__(self) -> str:
        return (
            f"MemoryStore(max_events={self.max_events}, ttl={self.ttl}, max_streams={self.max_streams}, "
            f"streams={len(self._streams)})"
        )

    def __len__(self) -> int:
        """The number of streams held now, expired ones excluded."""
        self._sweep()
        return len(self._streams)

    # -- bookkeeping ------------------------------------------------------------------------------------------

    def _sweep(self, now: float | None = None) -> None:
        if now is None:
            now = self._clock()
        while self._finished:
            stream_id = next(iter(self._finished))
            if self._streams[stream_id].expires_at > now:
                break
            self._forget(stream_id)

    def _forget(self, stream_id: str) -> None:
        self._streams.pop(stream_id)
        self._finished.pop(stream_id, None)

    def _notify(self, stream_id: str, stream: _Stream, start: int | None = None) -> None:
        """Tell the watches that follow the stream of its change: its new shape and the events just appended, those
        from index ``start`` of its events on (made into entries once, and only when somebody follows)."""
        page: Page | None = None
        for watch in self._watches:
            if stream_id in watch.followed:
                if page is None:
                    page = Page(self._state(stream_id, stream), () if start is None else stream.entries(start))
                watch.on_change(stream_id, page)

    def _get(self, stream_id: str) -> _Stream | None:
        # Every operation sweeps (O(1) when nothing expired), so a busy store frees expired streams as it goes, not
        # only when their own id is touched again; after it, a finished stream still held has not expired. One clock
        # read serves both checks.
        now = self._clock()
        if self._finished:
            self._sweep(now)
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        if stream.status == "running" and stream.lease_until + self.ttl <= now:
            # A producer that vanished long ago and that nobody marked lost: forget it like a finished stream.
            self._forget(stream_id)
            return None
        return stream

    def _state(self, stream_id: str, stream: _Stream) -> StreamState:
        base = stream.base  # first_seq and last_seq inlined: this runs for every append
        return StreamState(stream_id, stream.epoch, stream.status, base + stream.head, base + len(stream.texts) - 1)

    def _add(self, stream_id: str, stream: _Stream, events: Sequence[NewEvent]) -> int:
        start = len(stream.texts)
        stream.keep(events)
        excess = len(stream.texts) - stream.head - self.max_events
        if excess > 0:
            stream.head += excess
            if stream.head > len(stream.texts) // 2:  # compact now and then: amortized O(1) per event
                start -= stream.head
                stream.drop(stream.head)
        self._notify(stream_id, stream, max(start, stream.head))
        return stream.last_seq

    def _finish(self, stream_id: str, stream: _Stream, status: Status) -> None:
        stream.status = status
        stream.token = None
        stream.expires_at = self._clock() + self.ttl
        self._finished[stream_id] = None

    # -- EventLog ---------------------------------------------------------------------------------------------

    async def claim(self, stream_id: str, token: str, lease: float) -> Claim:
        """See :meth:`EventLog.claim <resumable_sse.EventLog.claim>`."""
        stream = self._get(stream_id)
        if stream is not None:
            return Claim(False, self._state(stream_id, stream))
        if len(self._streams) >= self.max_streams:
            if not self._finished:
                raise StoreFull(f"the memory store holds max_streams={self.max_streams} running streams")
            self._forget(next(iter(self._finished)))
        stream = self._streams[stream_id] = _Stream(new_epoch(), token, self._clock() + lease)
        self._notify(stream_id, stream)
        return Claim(True, self._state(stream_id, stream))

    async def append(
        self, stream_id: str, token: str, events: Sequence[NewEvent], *, after: int, final: Status | None = None
    ) -> int:
        """See :meth:`EventLog.append <resumable_sse.EventLog.append>`."""
        return self._append(stream_id, token, events, after, final)

    def submit_append(
        self, stream_id: str, token: str, events: Sequence[NewEvent], *, after: int, final: Status | None = None
    ) -> asyncio.Future[int]:
        """See :meth:`SubmitsAppends.submit_append <resumable_sse.SubmitsAppends.submit_append>`: appended before
        it returns (the future is done)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        try:
            future.set_result(self._append(stream_id, token, events, after, final))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def append_at_once(
        self, stream_id: str, token: str, events: Sequence[NewEvent], *, after: int, final: Status | None = None
    ) -> int:
        """:meth:`append`, applied and notified before it returns, without a future (what a producer in this
        process calls when nothing observes the Streamer)."""
        return self._append(stream_id, token, events, after, final)

    def _append(self, stream_id: str, token: str, events: Sequence[NewEvent], after: int, final: Status | None) -> int:
        stream = self._get(stream_id)
        if stream is None:
            raise StreamNotFound(stream_id)
        last_seq = stream.last_seq
        if last_seq != after:
            if stream.last_token == token and last_seq == after + len(events):
                return last_seq  # a retry of an append that was applied
            raise StreamFenced(stream_id)
        if stream.status != "running" or stream.token != token:
            raise StreamFenced(stream_id)
        if final is not None and not events:
            raise ValueError("a final append needs the terminal entry")
        stream.last_token = token
        if final is not None:
            self._finish(stream_id, stream, final)
        return self._add(stream_id, stream, events)

    async def renew(self, leases: Sequence[tuple[str, str]], lease: float) -> list[int]:
        """See :meth:`EventLog.renew <resumable_sse.EventLog.renew>`."""
        kept = []
        until = self._clock() + lease
        for stream_id, token in leases:
            stream = self._get(stream_id)
            if stream is None or stream.status != "running" or stream.token != token:
                kept.append(-1)
            else:
                stream.lease_until = until
                kept.append(stream.last_seq)
        return kept

    def _end(self, stream_id: str, stream: _Stream, status: Status, data: str) -> None:
        self._finish(stream_id, stream, status)
        stream.last_token = None
        self._add(stream_id, stream, [(status, data)])

    async def end(self, stream_id: str, status: Status, data: str) -> bool:
        """See :meth:`EventLog.end <resumable_sse.EventLog.end>`."""
        stream = self._get(stream_id)
        if stream is None or stream.status != "running":
            return False
        self._end(stream_id, stream, status, data)
        return True

    async def abandon(self, stream_id: str, token: str, data: str) -> StreamState | None:
        """See :meth:`EventLog.abandon <resumable_sse.EventLog.abandon>`."""
        stream = self._get(stream_id)
        if stream is None or stream.status != "running" or stream.token != token:
            return None
        stream = self._streams[stream_id] = _Stream(new_epoch(), token, stream.lease_until)
        self._end(stream_id, stream, "lost", data)
        return self._state(stream_id, stream)

    async def audit(self, stream_ids: Sequence[str], lost: str) -> list[StreamState | None]:
        """See :meth:`EventLog.audit <resumable_sse.EventLog.audit>`."""
        states: list[StreamState | None] = []
        now = self._clock()
        for stream_id in stream_ids:
            stream = self._get(stream_id)
            if stream is not None and stream.status == "running" and stream.lease_until <= now:
                self._end(stream_id, stream, "lost", lost)
            states.append(None if stream is None else self._state(stream_id, stream))
        return states

    async def state(self, stream_id: str) -> StreamState | None:
        """See :meth:`EventLog.state <resumable_sse.EventLog.state>`."""
        stream = self._get(stream_id)
        return None if stream is None else self._state(stream_id, stream)

    async def read(self, stream_id: str, after: int, limit: int, *, epoch: str | None = None) -> Page | None:
        """See :meth:`EventLog.read <resumable_sse.EventLog.read>`."""
        stream = self._get(stream_id)
        if stream is None:
            return None
        if after > stream.last_seq or (epoch is not None and epoch != stream.epoch):
            after = 0
        return Page(self._state(stream_id, stream), stream.after(after, limit))

    def watch(self, on_change: OnChange) -> _MemoryWatch:
        """See :meth:`EventLog.watch <resumable_sse.EventLog.watch>`: appends notify before they return."""
        watch = _MemoryWatch(self, on_change)
        self._watches.append(watch)
        return watch

    async def close(self) -> None:
        """Stop every watch; the streams stay readable until the store is dropped."""
        for watch in list(self._watches):
            await watch.close()
