"""A reader: one position in one stream, with the events from there on, in order, each exactly once.

A :class:`Subscription` holds an epoch and a cursor, never a copy of the stream. Whatever it is served, from the
live tail's window or from the store, goes through one judgement (:func:`~._readers.judge`) that compares the
stream's shape with what the reader holds; any discontinuity becomes the answer a reconnect would get: a
:class:`Reset` and every retained event, or a terminal (:class:`Gone` when the store no longer has the stream).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import ClassVar, Final

from ._event import Entry, EventId, Reset, encode_event
from ._log import Page, StreamState
from ._logger import logger
from ._readers import Hub, data_size, judge, terminal_data, within

__all__ = ["Gone", "Item", "Reset", "Subscription"]


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


class Subscription:
    """One reader's position in a stream, with the events from there on, in order, each exactly once.

    Obtain one from :meth:`Streamer.subscribe`. Iterate :meth:`batches` (lists of entries that are ready together,
    for one socket write each) or the subscription itself (one entry at a time). Iteration ends after the terminal
    entry, or early when the Streamer shuts down or :meth:`close` is called. A reader holds a cursor and a future;
    it never holds a copy of the stream.
    """

    def __init__(
        self, hub: Hub, state: StreamState, cursor: int, reset: Reset | None, first: Page | None = None
    ) -> None:
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
        self._write_now: Callable[[bytes], bool] | None = None
        self._entry_bytes = 0  # data per entry in what was last read of the store (0: nothing read yet)
        self._first = first  # a page read when it was made, served first (let go of when the iteration starts)

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
        self.wake()

    def write_directly(self, write_now: Callable[[bytes], bool]) -> None:
        """While the iteration waits for the live tail, hand what is appended to ``write_now`` instead of waking it.

        ``write_now(chunk)`` is a synchronous write that takes all of ``chunk`` (the entries' wire bytes) and returns
        True, or takes none of it and returns False (it would have to wait: the client is behind, another write is
        in progress); what it refuses is yielded by the iteration as usual, and the cursor moves past what it took.
        It is called in the step that appended the entries (the producer's, or the store's notification): its
        failure is the reader's alone (logged; the reader writes for itself from then on). Only a caller that writes
        every batch it iterates to the same connection, as the aiohttp adapter does, may use it (a reader that keeps
        up then costs no task step per token: ``benchmarks/fleet.py``).
        """
        self._write_now = write_now

    @property
    def waiting(self) -> bool:
        """True while the iteration waits for the live tail."""
        return self._waiter is not None and not self._waiter.done()

    def wake(self) -> None:
        """Make a waiting iteration look at the stream again."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def deliver(self, state: StreamState, after: int, last: int, chunk: bytes) -> bool:
        """Write the entries ``after`` + 1 .. ``last`` of ``state`` (``chunk``) through :meth:`write_directly`'s
        writer when the iteration waits right after them; True when written (the cursor is moved past them)."""
        write_now = self._write_now
        if write_now is None or self._closed or self.cursor != after or self._epoch != state.epoch or not self.waiting:
            return False
        try:
            if not write_now(chunk):
                return False
        except Exception:
            # A writer's failure is the reader's alone: never the producer's, in whose step it runs. The reader
            # writes for itself from now on (its own write reports what is wrong with the connection).
            self._write_now = None
            logger.exception(
                "writing directly to a reader of %r failed; it writes for itself from now on",
                self.stream_id,
                extra={"stream_id": self.stream_id},
            )
            return False
        self.cursor = last
        observer = self._hub.streamer.observer
        if observer is not None:
            observer.reader_served(self.stream_id, state.last_seq - last)
        return True

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

    def _read_limit(self, limit: int, budget: int) -> int:
        """How many entries to read of the store: ``limit``, or fewer when the entries read before suggest that
        ``limit`` of them would hold more than ``budget`` bytes (a reader behind a stream of large events reads it
        in batches of about ``budget``, rather than holding ``limit`` large events at once)."""
        entry_bytes = self._entry_bytes
        return limit if not entry_bytes else max(1, min(limit, budget // entry_bytes))

    def _bounded(self, page: Page, budget: int) -> Page:
        """``page`` cut to ``budget`` bytes of data (at least one entry); what it held teaches :meth:`_read_limit`."""
        entries = page.entries
        size = data_size(entries)
        self._entry_bytes = size // len(entries) + 1
        return page if size <= budget else Page(page.state, within(entries, budget))

    async def batches(self, limit: int | None = None) -> AsyncGenerator[Sequence[Item], None]:
        """Yield the entries ready together (up to ``limit`` each), oldest first, then wait for the live tail.

        The first batch starts with :attr:`reset` when there is one.
        """
        hub = self._hub
        streamer, store, observer = hub.streamer, hub.streamer.log, hub.streamer.observer
        limit = limit or streamer.batch_size
        budget = streamer.max_batch_bytes  # of event data in one batch (at least one entry)
        pending: list[Item] = [self.reset] if self.reset is not None else []
        first, self._first = self._first, None
        if first is not None and len(first.entries) > limit:
            first = Page(first.state, first.entries[:limit])
        tail = hub.attach(self.state)
        streamer.opened(self)
        if observer is not None:
            observer.reader_opened(self.stream_id)
        try:
            while not self._closed and not streamer.readers_ended:
                version = tail.version
                page: Page | None
                if first is not None:
                    # Read before the tail was attached, so maybe older than what it heard since: the reader never
                    # waits on it (version -1 matches no tail's), it looks again.
                    page, first, version = self._bounded(first, budget) if first.entries else first, None, -1
                else:
                    page = tail.take(self._epoch, self.cursor, limit, budget)
                if page is None:
                    page = await store.read(
                        self.stream_id, self.cursor, self._read_limit(limit, budget), epoch=self._epoch
                    )
                    if tail.version == version:
                        hub.learned(tail, page.state if page is not None else None, read=True)
                    if page is None:
                        yield [*pending, Gone()]
                        return
                    if page.entries:
                        page = self._bounded(page, budget)
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
                del page, batch  # a waiting reader holds nothing (memory: benchmarks/fleet.py --idle)
                if tail.version == version and not self._closed:
                    waiter = self._waiter = asyncio.get_running_loop().create_future()
                    tail.park(self)
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
