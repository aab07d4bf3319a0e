"""Readers: one live tail per process, fanned out in memory, and each reader's cursor.

:class:`Hub` follows every stream that has a reader (or a producer) in this process through one store
:class:`~resumable_sse.Watch`: the store pushes each append with its entries, the hub keeps a short window of recent
entries per stream and wakes that stream's readers. There is no task or timer per stream: one auditor looks at the
streams that have been quiet for a while (one batched store call), which is how a stream that the store lost,
rewound or recreated without a word is noticed, and how a dead producer is declared ``lost``.

A :class:`Subscription` is one reader: an epoch and a cursor. Whatever it is served, from the window or from the
store, goes through one judgement (:func:`judge`) that compares the stream's shape with what the reader holds; any
discontinuity becomes the answer a reconnect would get: a :class:`Reset` and every retained event, or a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import ClassVar, Final, Protocol

from ._event import Entry, EventId, Reset, encode_event
from ._log import EventLog, Page, StreamState, Watch
from ._observe import Observer
from ._tasks import spawn
from .exceptions import StoreUnavailable

__all__ = ["Gone", "Hub", "Owner", "Reset", "Subscription", "judge", "terminal_data"]

logger = logging.getLogger("resumable_sse")

_AUDIT_CHUNK: Final = 1000  # streams per audit call


class Owner(Protocol):
    """What readers need of the engine that owns them (the :class:`~resumable_sse.Streamer`)."""

    @property
    def log(self) -> EventLog: ...  # the store as the engine calls it (timed when there is an observer)

    @property
    def observer(self) -> Observer | None: ...
    @property
    def window(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def liveness_interval(self) -> float: ...
    @property
    def readers_ended(self) -> bool: ...

    def produces(self, state: StreamState) -> bool: ...  # this process runs the producer of that stream's epoch
    def ended(self, state: StreamState) -> None: ...  # the store says the stream ended
    def opened(self, subscription: Subscription) -> None: ...  # a subscription started being iterated
    def forget(self, subscription: Subscription) -> None: ...  # a subscription ended


def terminal_data(status: str, message: str = "") -> str:
    """The JSON data of a terminal event: ``{"state": ..., "message": ...}``."""
    body = {"state": status, "message": message} if message else {"state": status}
    return json.dumps(body, separators=(",", ":"))


class Gone:
    """The end of a stream the store no longer has (expired, or lost by the store): a ``lost`` event with no id.

    It carries no id because it is not in the log: a client that reconnects with its last id is told what the store
    says then (410 when the stream is unknown, a reset when it was created again).
    """

    __slots__ = ()
    event: ClassVar[str] = "lost"
    terminal: ClassVar[bool] = True
    data: ClassVar[str] = terminal_data("lost", "the stream is no longer in the store")

    def __repr__(self) -> str:
        return "Gone()"

    def wire(self) -> bytes:
        """The event as it goes on the wire."""
        return encode_event(self.data, event=self.event)


Item = Entry | Reset | Gone


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


class _Tail:
    """What this process knows of one followed stream: its latest shape and a window of recent entries."""

    __slots__ = ("heard", "producing", "readers", "state", "stream_id", "version", "waiters", "window")

    def __init__(self, stream_id: str, state: StreamState) -> None:
        self.stream_id = stream_id
        self.state: StreamState | None = state  # None: the store no longer has the stream
        self.window: list[Entry] = []  # contiguous entries of state's epoch, ending at most at state.last_seq
        self.version = 0  # bumped at every change; a reader that saw no change since it looked waits
        self.readers = 0  # readers and local producers following the stream
        self.producing = 0  # of them, local producers: their appends come as local notifications
        self.waiters: list[asyncio.Future[None]] = []
        self.heard = time.monotonic()

    def take(self, epoch: str, after: int, limit: int) -> Page | None:
        """A page after ``after`` from memory, or None when the store must be asked."""
        state = self.state
        if state is None or state.epoch != epoch or after > state.last_seq:
            return None
        if after == state.last_seq:
            return Page(state)
        window = self.window
        if not window or window[0].seq > after + 1 or window[-1].seq <= after:
            return None
        start = after + 1 - window[0].seq
        return Page(state, window[start : start + limit])

    def notice(self, page: Page, window: int) -> None:
        """A change pushed by the store: pushes of one stream come in the store's order, so each is the truth of its
        moment, even one that goes back (the store was rewound, and an audit had not said so yet)."""
        state, entries = page.state, page.entries
        old = self.state
        same_epoch = old is not None and old.epoch == state.epoch
        if state == old and not entries:
            return  # nothing new
        if entries and self.readers > self.producing:  # a producer alone needs no window
            if same_epoch and self.window and self.window[-1].seq + 1 == entries[0].seq and not self._all_waiting():
                self.window.extend(entries)
                excess = len(self.window) - window
                if excess > 0:
                    del self.window[:excess]
            else:
                self.window = list(entries[-window:])
        else:
            self.window = []
        self.changed(state)

    def _all_waiting(self) -> bool:
        """True when every reader waits for what comes next: each has had all the window holds, so the window need
        keep only what comes now. Readers that keep up (paced streams, the common case) then hold a window of one
        page, not thousands of entries per stream that the garbage collector would walk again and again; a reader
        that falls behind keeps the window growing (up to ``window``) until it catches up."""
        waiting = 0
        for waiter in self.waiters:
            if not waiter.done():
                waiting += 1
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
            self.window = []  # gone, recreated or rewound: readers go to the store, which tells them why
        self.changed(state)

    def changed(self, state: StreamState | None) -> None:
        self.state = state
        self.version += 1
        self.heard = time.monotonic()
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class Hub:
    """The live tail of every stream followed in this process (see the module docstring)."""

    def __init__(self, streamer: Owner) -> None:
        self.streamer = streamer
        self.tails: dict[str, _Tail] = {}
        self._watch: Watch | None = None
        self._suspects: set[str] = set()
        self._audit_now: asyncio.Event | None = None
        self._auditor: asyncio.Task[None] | None = None
        self._outage = False

    def attach(self, state: StreamState, *, producer: bool = False) -> _Tail:
        """Follow ``state.stream_id`` for one more reader, or for the stream's producer in this process."""
        stream_id = state.stream_id
        tail = self.tails.get(stream_id)
        if tail is None:
            tail = self.tails[stream_id] = _Tail(stream_id, state)
            if self._watch is None:
                self._watch = self.streamer.log.watch(self._on_change)
            if self._auditor is None or self._auditor.done():
                self._audit_now = asyncio.Event()
                self._auditor = spawn(self._audit(), "resumable-sse auditor")
        tail.readers += 1
        tail.producing += producer
        self._follow(tail)
        return tail

    def detach(self, tail: _Tail, *, producer: bool = False) -> None:
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

    def _follow(self, tail: _Tail) -> None:
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
        tail.notice(page, self.streamer.window)
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

    def learned(self, tail: _Tail, state: StreamState | None, *, read: bool = False) -> None:
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


class Subscription:
    """One reader's position in a stream, with the events from there on, in order, each exactly once.

    Obtain one from :meth:`Streamer.subscribe`. Iterate :meth:`batches` (lists of entries that are ready together,
    for one socket write each) or the subscription itself (one entry at a time). Iteration ends after the terminal
    entry, or early when the Streamer shuts down or :meth:`close` is called. A reader holds a cursor and a future;
    it never holds a copy of the stream.
    """

    def __init__(self, hub: Hub, state: StreamState, cursor: int, reset: Reset | None) -> None:
        self.stream_id: Final = state.stream_id
        self.state: StreamState = state
        """The stream's state when the subscription was made."""
        self.reset = reset
        """The reset to send before the first event, or None when the position continues without a gap."""
        self.cursor = cursor
        """Sequence number of the last entry delivered (0: none)."""
        self._hub = hub
        self._epoch = state.epoch
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def at_end(self) -> bool:
        """True when the position named is the terminal entry of a finished stream: nothing more will come."""
        return self.state.finished and self.reset is None and self.cursor >= self.state.last_seq

    @property
    def last_event_id(self) -> str | None:
        """The id of the last entry delivered, for resuming later."""
        return str(EventId(self._epoch, self.cursor)) if self.cursor else None

    def close(self) -> None:
        """Stop iterating (e.g. the client went away); an iteration waiting for events ends at once."""
        self._closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _accept(self, page: Page) -> list[Entry | Reset]:
        """What to send of ``page``, the reader's cursor moved past it: the continuation, or a reset and the
        replay from the earliest retained entry (pages read from the store start there on a discontinuity)."""
        state, entries = page.state, page.entries
        reason = judge(state, self._epoch, self.cursor, entries)
        if reason is None:
            if entries:
                self.cursor = entries[-1].seq
            return list(entries)
        self._epoch = state.epoch
        self.cursor = entries[-1].seq if entries else state.first_seq - 1
        return [Reset(reason, entries[0].id if entries else state.first_id), *entries]

    async def batches(self, limit: int | None = None) -> AsyncGenerator[Sequence[Item], None]:
        """Yield the entries ready together (up to ``limit`` each), oldest first, then wait for the live tail.

        The first batch starts with :attr:`reset` when there is one.
        """
        hub = self._hub
        streamer, store, observer = hub.streamer, hub.streamer.log, hub.streamer.observer
        limit = limit or streamer.batch_size
        pending: list[Item] = [self.reset] if self.reset is not None else []
        tail = hub.attach(self.state)
        streamer.opened(self)
        if observer is not None:
            observer.reader_opened(self.stream_id)
        try:
            while not self._closed and not streamer.readers_ended:
                version = tail.version
                page = tail.take(self._epoch, self.cursor, limit)
                if page is None:
                    page = await store.read(self.stream_id, self.cursor, limit, epoch=self._epoch)
                    if tail.version == version:
                        hub.learned(tail, page.state if page is not None else None, read=True)
                    if page is None:
                        yield [*pending, Gone()]
                        return
                batch: list[Item] = [*pending, *self._accept(page)]
                pending = []
                if batch:
                    if observer is not None:
                        observer.reader_served(self.stream_id, page.state.last_seq - self.cursor)
                    yield batch
                    if batch[-1].terminal:
                        return
                    continue
                if page.state.finished:
                    return  # the terminal entry was delivered before
                if tail.version == version and not self._closed:
                    waiter = self._waiter = asyncio.get_running_loop().create_future()
                    tail.waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        self._waiter = None
        finally:
            hub.detach(tail)
            streamer.forget(self)
            if observer is not None:
                observer.reader_closed(self.stream_id)

    async def __aiter__(self) -> AsyncIterator[Item]:
        async for batch in self.batches():
            for item in batch:
                yield item
