"""The live tail: one per process, fanned out in memory to each stream's readers.

:class:`Hub` follows every stream that has a reader (or a producer) in this process through one store
:class:`~resumable_sse.Watch`: the store pushes each append with its entries, the hub keeps a short window of recent
entries per stream (a :class:`Tail`) and hands them to that stream's readers: written for a reader that waits and
takes them at once (:meth:`Reader.deliver`), else by waking it. There is no task or timer per stream: one auditor
looks at the streams that have been quiet for a while (one batched store call), which is how a stream that the store
lost, rewound or recreated without a word is noticed, and how a dead producer is declared ``lost``.

Readers themselves (:class:`~._subscription.Subscription`) judge what they are served with :func:`judge`, which
compares the stream's shape with what the reader holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Final, Protocol

from ._event import Entry
from ._log import EventLog, NewEvent, Page, StreamState, Watch
from ._logger import logger
from ._observe import Observer
from ._tasks import spawn
from .exceptions import StoreUnavailable

__all__ = ["Hub", "Owner", "Reader", "Tail", "data_size", "judge", "take_within", "terminal_data", "within"]


_AUDIT_CHUNK: Final = 1000  # streams per audit call


class Reader(Protocol):
    """What the live tail needs of a reader that waits (:class:`~._subscription.Subscription`)."""

    @property
    def waiting(self) -> bool: ...  # its iteration waits for the live tail

    def wake(self) -> None: ...  # look at the stream again
    def close(self) -> None: ...  # stop (the server shuts down)
    def deliver(self, state: StreamState, after: int, last: int, chunk: bytes) -> bool: ...  # written for it


class Owner(Protocol):
    """What readers need of the engine that owns them (the :class:`~resumable_sse.Streamer`)."""

    @property
    def log(self) -> EventLog: ...  # the store as the engine calls it (timed when there is an observer)

    @property
    def observer(self) -> Observer | None: ...
    @property
    def window(self) -> int: ...
    @property
    def window_bytes(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def max_batch_bytes(self) -> int: ...
    @property
    def liveness_interval(self) -> float: ...
    @property
    def readers_ended(self) -> bool: ...

    def produces(self, state: StreamState) -> bool: ...  # this process runs the producer of that stream's epoch
    def ended(self, state: StreamState) -> None: ...  # the store says the stream ended
    def opened(self, subscription: Reader) -> None: ...  # a subscription started being iterated
    def forget(self, subscription: Reader) -> None: ...  # a subscription ended


def terminal_data(status: str, message: str = "") -> str:
    """The JSON data of a terminal event: ``{"state": ..., "message": ...}``."""
    body = {"state": status, "message": message} if message else {"state": status}
    return json.dumps(body, separators=(",", ":"))


def judge(state: StreamState, epoch: str, cursor: int, entries: Sequence[Entry] = ()) -> str | None:
    """Whether ``entries`` (read after ``cursor`` in a stream of shape ``state``) continue what a reader holds
    (None) or why not: ``epoch``, ``position`` or ``trimmed``. The one place where readers, live or resuming,
    compare the log with their position."""
    if state.epoch != epoch:
        return "epoch"
    if cursor > state.last_seq:
        return "position"
    if entries:
        return None if entries[0].seq == cursor + 1 else "trimmed"
    return "trimmed" if cursor < state.first_seq - 1 else None


def data_size(entries: Sequence[Entry]) -> int:
    """What ``entries`` count against a byte budget: the length of their data (bytes for ASCII text)."""
    if len(entries) == 1:
        return len(entries[0].data)
    return sum([len(entry.data) for entry in entries])


def take_within(pending: list[NewEvent], budget: int) -> list[NewEvent]:
    """Take from ``pending`` the events of a producer's next append: all of them, or as many as fit ``budget`` bytes
    of data (at least one: a single event is never larger than ``max_event_bytes``, which is at most that)."""
    if len(pending) == 1 or 4 * sum([len(data) for _, data in pending]) <= budget:  # (UTF-8: <= 4 bytes a char)
        batch = pending.copy()  # the pump keeps appending to the same list object
        pending.clear()
        return batch
    size = 0
    cut = 0
    for _, data in pending:
        size += len(data) if data.isascii() else len(data.encode("utf-8"))
        if size > budget and cut:
            break
        cut += 1
    batch = pending[:cut]
    del pending[:cut]
    return batch


def within(entries: Sequence[Entry], budget: int) -> Sequence[Entry]:
    """The longest prefix of ``entries`` whose data fits ``budget``, and at least the first entry."""
    size = 0
    for index, entry in enumerate(entries):
        size += len(entry.data)
        if size > budget and index:
            return entries[:index]
    return entries


class Tail:
    """What this process knows of one followed stream: its latest shape and a window of recent entries, at most
    ``window`` of them and ``window_bytes`` of their data (:class:`~resumable_sse.Streamer`'s options): a reader
    further behind reads the store, in batches, rather than this process keeping the stream for it."""

    __slots__ = ("heard", "parked", "producing", "readers", "size", "state", "stream_id", "version", "window")

    def __init__(self, stream_id: str, state: StreamState) -> None:
        self.stream_id = stream_id
        self.state: StreamState | None = state  # None: the store no longer has the stream
        self.window: list[Entry] = []  # contiguous entries of state's epoch, ending at most at state.last_seq
        self.size = 0  # data_size(window), never above the byte budget once notice() returns
        self.version = 0  # bumped at every change; a reader that saw no change since it looked waits
        self.readers = 0  # readers and local producers following the stream
        self.producing = 0  # of them, local producers: their appends come as local notifications
        self.parked: list[Reader] = []  # readers waiting for the next change (some take entries written for them)
        self.heard = time.monotonic()

    def take(self, epoch: str, after: int, limit: int, budget: int) -> Page | None:
        """A page after ``after`` from memory (at most ``limit`` entries and ``budget`` bytes of data, at least one
        entry), or None when the store must be asked."""
        state = self.state
        if state is None or state.epoch != epoch or after > state.last_seq:
            return None
        if after == state.last_seq:
            return Page(state)
        window = self.window
        if not window or window[0].seq > after + 1 or window[-1].seq <= after:
            return None
        start = after + 1 - window[0].seq
        entries = window[start : start + limit]
        return Page(state, within(entries, budget) if self.size > budget else entries)

    def notice(self, page: Page, window: int, window_bytes: int) -> None:
        """A change pushed by the store: pushes of one stream come in the store's order, so each is the truth of its
        moment, even one that goes back (the store was rewound, and an audit had not said so yet)."""
        state, entries = page.state, page.entries
        old = self.state
        same_epoch = old is not None and old.epoch == state.epoch
        if not entries and state == old:  # entries first: a state compares field by field (fleet.py --profile)
            return  # nothing new
        written = bool(entries and self.parked and same_epoch and state.status == "running")  # (not .finished: a call)
        if written:
            self.deliver(state, entries)
        if entries and self.readers > self.producing:  # a producer alone needs no window
            follows = same_epoch and self.window and self.window[-1].seq + 1 == entries[0].seq
            if follows and not self._all_waiting():
                self.window.extend(entries)
                self.size += data_size(entries)
            else:
                # In place, not a new list per token (benchmarks/fleet.py).
                self.window[:] = entries[-window:]
                self.size = data_size(self.window)
            if len(self.window) > window or self.size > window_bytes:
                self._trim(window, window_bytes)
        else:
            self.window.clear()
            self.size = 0
        self.changed(state, wake=not written)

    def _trim(self, window: int, window_bytes: int) -> None:
        """Drop the oldest entries until the window holds at most ``window`` of them and ``window_bytes`` of data
        (none at all when its newest alone is larger: its readers then read the store)."""
        entries = self.window
        cut = max(0, len(entries) - window)
        size = self.size - data_size(entries[:cut]) if cut else self.size
        while size > window_bytes and cut < len(entries):
            size -= len(entries[cut].data)
            cut += 1
        del entries[:cut]
        self.size = size

    def deliver(self, state: StreamState, entries: Sequence[Entry]) -> None:
        """Write ``entries`` for each waiting reader that takes them (:meth:`Reader.deliver`), in the step that
        appended them, encoded once for all of them. Those go on waiting; the others are woken now."""
        chunk = entries[0].wire() if len(entries) == 1 else b"".join([entry.wire() for entry in entries])
        after, last = entries[0].seq - 1, entries[-1].seq
        parked = self.parked
        refused = [reader for reader in parked if not reader.deliver(state, after, last, chunk)]
        if refused:
            if len(refused) == len(parked):  # none takes written entries (an ASGI server's readers, say)
                self.parked = []
            else:
                refusing = {id(reader) for reader in refused}
                self.parked = [reader for reader in parked if id(reader) not in refusing]
            for reader in refused:
                reader.wake()

    def park(self, reader: Reader) -> None:
        """A reader waits for the stream's next change. Readers that stopped waiting for another reason (closed)
        are dropped from time to time, so a quiet stream whose readers come and go does not collect them."""
        if len(self.parked) > 2 * self.readers:
            self.parked = [other for other in self.parked if other.waiting]
        self.parked.append(reader)

    def _all_waiting(self) -> bool:
        """True when every reader waits for what comes next: each has had all the window holds, so the window need
        keep only what comes now. Readers that keep up then hold a window of one page; a reader that falls behind
        keeps the window growing (up to ``window`` entries and ``window_bytes`` of data) until it catches up."""
        waiting = 0
        for reader in self.parked:
            waiting += reader.waiting
        return waiting >= self.readers - self.producing

    def audited(self, state: StreamState | None, *, heard: bool = True) -> None:
        """The store's answer to an audit (or a read, which does not count as hearing from the stream), taken only
        when no push came while it was asked."""
        if heard:
            self.heard = time.monotonic()
        old = self.state
        if state == old:
            return
        if state is None or old is None or state.epoch != old.epoch or state.last_seq < old.last_seq:
            self.window.clear()  # gone, recreated or rewound: readers go to the store, which tells them why
            self.size = 0
        self.changed(state)

    def changed(self, state: StreamState | None, *, wake: bool = True) -> None:
        """Take the stream's new shape and wake its waiting readers (``wake=False``: they were dealt with already,
        by :meth:`deliver`)."""
        self.state = state
        self.version += 1
        self.heard = time.monotonic()
        if wake and self.parked:
            parked, self.parked = self.parked, []
            for reader in parked:
                reader.wake()


class Hub:
    """The live tail of every stream followed in this process (see the module docstring)."""

    def __init__(self, streamer: Owner) -> None:
        self.streamer = streamer
        self.tails: dict[str, Tail] = {}
        self._watch: Watch | None = None
        self._suspects: set[str] = set()
        self._audit_now: asyncio.Event | None = None
        self._auditor: asyncio.Task[None] | None = None
        self._outage = False

    def attach(self, state: StreamState, *, producer: bool = False) -> Tail:
        """Follow ``state.stream_id`` for one more reader, or for the stream's producer in this process."""
        stream_id = state.stream_id
        tail = self.tails.get(stream_id)
        if tail is None:
            tail = self.tails[stream_id] = Tail(stream_id, state)
            if self._watch is None:
                self._watch = self.streamer.log.watch(self._on_change)
            if self._auditor is None or self._auditor.done():
                self._audit_now = asyncio.Event()
                self._auditor = spawn(self._audit(), "resumable-sse auditor")
        tail.readers += 1
        tail.producing += producer
        self._follow(tail)
        return tail

    def detach(self, tail: Tail, *, producer: bool = False) -> None:
        tail.readers -= 1
        tail.producing -= producer
        if self.tails.get(tail.stream_id) is not tail:
            return
        if tail.readers <= 0:
            del self.tails[tail.stream_id]
            if self._watch is not None:
                self._watch.unfollow(tail.stream_id)
        else:
            self._follow(tail)

    def _follow(self, tail: Tail) -> None:
        """Follow the stream's every change, or (while this process produces it) only the ends others write."""
        if self._watch is not None:
            self._watch.follow(tail.stream_id, entries=not tail.producing)

    def suspect(self, stream_id: str) -> None:
        """Ask the store about ``stream_id`` now rather than when it has been quiet for a while."""
        if stream_id in self.tails and self._audit_now is not None:
            self._suspects.add(stream_id)
            self._audit_now.set()

    def _on_change(self, stream_id: str, page: Page | None) -> None:
        tail = self.tails.get(stream_id)
        if tail is None:
            return
        if page is None:
            self.suspect(stream_id)
            return
        streamer = self.streamer
        tail.notice(page, streamer.window, streamer.window_bytes)
        if page.state.finished:
            self.streamer.ended(page.state)

    async def _audit(self) -> None:
        """Every ``liveness_interval``: ask the store about the streams nothing was heard of meanwhile."""
        streamer = self.streamer
        interval = streamer.liveness_interval
        lost = terminal_data("lost", "the producer stopped responding")
        assert self._audit_now is not None
        while self.tails:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._audit_now.wait(), interval)
            self._audit_now.clear()
            quiet = time.monotonic() - interval
            suspects, self._suspects = self._suspects, set()
            # A stream this process produces is never audited: its producer's renewals and appends vouch for it
            # (and tell of a loss or rewind); an audit could declare it lost while a busy loop delays a renewal.
            due = {
                stream_id
                for stream_id, tail in self.tails.items()
                if (stream_id in suspects or (tail.heard <= quiet and tail.state is not None))
                and (tail.state is None or not streamer.produces(tail.state))
            }
            ordered = sorted(due)
            for start in range(0, len(ordered), _AUDIT_CHUNK):
                await self._audit_some(ordered[start : start + _AUDIT_CHUNK], lost)

    async def _audit_some(self, stream_ids: list[str], lost: str) -> None:
        versions = {stream_id: tail.version for stream_id in stream_ids if (tail := self.tails.get(stream_id))}
        try:
            states = await self.streamer.log.audit(list(versions), lost)
        except StoreUnavailable as exc:
            if not self._outage:
                logger.warning(
                    "store unreachable while auditing %d streams: %s; their readers wait, asked again in %.1f s",
                    len(versions),
                    exc,
                    self.streamer.liveness_interval,
                    extra={"stream_id": None, "stream_ids": list(versions)[:100]},
                )
            self._outage = True
            self._suspects.update(versions)  # ask again next time
            return
        except Exception:
            logger.exception(
                "auditing %d streams failed; their readers wait, asked again in %.1f s",
                len(versions),
                self.streamer.liveness_interval,
                extra={"stream_id": None, "stream_ids": list(versions)[:100]},
            )
            return
        self._outage = False
        for stream_id, state in zip(versions, states, strict=True):
            tail = self.tails.get(stream_id)
            if tail is not None and tail.version == versions[stream_id]:  # else a push came: it is newer
                self.learned(tail, state)

    def learned(self, tail: Tail, state: StreamState | None, *, read: bool = False) -> None:
        """The store's answer about a followed stream, taken only when no push came while it was asked: an audit's,
        or (``read``) a reader's read of the store.

        A read counts because the store may change and change back between two audits (rewound, then restored): a
        reader that met the change must not wait on a tail that never heard of it. It counts only for what a push
        may never announce (gone, another epoch, ended, gone back); a state merely ahead is a push on its way (or
        a silent change, which an audit asked now settles). A read is no audit: it does not make the stream count
        as heard from, so a dead producer's lease is judged on time however many readers come."""
        had = tail.state
        if read:
            if state == had:
                return
            if (
                state is not None
                and had is not None
                and state.epoch == had.epoch
                and not state.finished
                and state.last_seq >= had.last_seq
            ):
                self.suspect(tail.stream_id)  # a push on its way, or a change that an audit now settles
                return
        tail.audited(state, heard=not read)
        if state is None:
            if had is not None:
                logger.warning(
                    "stream %r is no longer in the store; its readers are told it is lost",
                    tail.stream_id,
                    extra={"stream_id": tail.stream_id},
                )
        elif state.finished:
            self.streamer.ended(state)

    async def close(self) -> None:
        """Stop following; wake every reader."""
        tasks = []
        if self._auditor is not None:
            self._auditor.cancel()
            tasks.append(self._auditor)
        for tail in self.tails.values():
            tail.changed(tail.state)
        if self._watch is not None:
            await self._watch.close()
        await asyncio.gather(*tasks, return_exceptions=True)
