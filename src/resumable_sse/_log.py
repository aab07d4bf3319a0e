"""The event log protocol: what a store must do, and the shapes it answers with.

A store keeps and reads; the rules (who may produce, when a stream ends, what a client is sent) live in the
:class:`~resumable_sse.Streamer`. A custom store implements :class:`EventLog` and passes the contract suite in
``tests/test_log_contract.py`` unchanged. Every method that changes a stream is atomic in the store: two processes
sharing a store can never both claim a stream, and a producer that lost its claim can never append (fencing).

Every read answers with a :class:`Page`: the stream's shape (epoch, status, first and last retained sequence number)
beside the entries. A store may lose a stream (a restart without persistence, eviction, a flush), rewind it (a
restore from an older snapshot) or see it created again under a new epoch; readers compare the shape with what they
hold, so none of these can pass as a continuation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from ._event import Entry, EventId, Status

__all__ = [
    "AppendsAtOnce",
    "AppendsThen",
    "Claim",
    "EventLog",
    "NewEvent",
    "OnChange",
    "Outcome",
    "Page",
    "StreamState",
    "SubmitsAppends",
    "Watch",
]

NewEvent = tuple[str | None, str]
"""An event to append: ``(event type or None, data text)``; the store assigns its sequence number."""


class StreamState(NamedTuple):
    """A snapshot of one stream (immutable; ``state._replace(last_seq=...)`` makes a changed copy).

    ``first_seq`` is the sequence number of the earliest retained entry (``last_seq + 1`` when none is retained);
    ``last_seq`` that of the newest (0 before the first append). Once ``status`` is not ``running`` the entry at
    ``last_seq`` is the terminal entry and nothing more is ever appended in this epoch.

    Rule: the shapes a store answers with (this, :class:`Page`, :class:`Claim`) are named tuples, not frozen
    dataclasses: one of each is made for every append and compared for every token, which a tuple does in C (1.7 us
    less per token, timed; ``benchmarks/fleet.py --profile`` had the dataclasses' ``__init__`` at 3 % of a row).
    """

    stream_id: str
    epoch: str
    status: Status
    first_seq: int
    last_seq: int

    @property
    def finished(self) -> bool:
        """True once the stream has its terminal entry."""
        return self.status != "running"

    def id_of(self, seq: int) -> str:
        """The event id of sequence number ``seq`` in this epoch."""
        return str(EventId(self.epoch, seq))

    @property
    def first_id(self) -> str | None:
        """The id of the earliest retained entry, or None when none is retained."""
        return self.id_of(self.first_seq) if self.first_seq <= self.last_seq else None

    @property
    def last_id(self) -> str | None:
        """The id of the newest entry, or None when the stream has none yet."""
        return self.id_of(self.last_seq) if self.last_seq else None


class Page(NamedTuple):
    """A read's answer: the stream's state at the moment of the read, and entries of that state's epoch.

    ``entries`` are contiguous and oldest first; they start after the position asked for, or at ``state.first_seq``
    when that position was trimmed (or lies in no retained range).
    """

    state: StreamState
    entries: Sequence[Entry] = ()


class Claim(NamedTuple):
    """The outcome of :meth:`EventLog.claim`: whether this caller became the producer, and the stream's state."""

    acquired: bool
    state: StreamState


OnChange = Callable[[str, "Page | None"], None]
"""``on_change(stream_id, page)``, called on the event loop for a followed stream.

``page`` holds the stream's new state and the entries just appended (none for a new epoch); None means the store may
have missed changes (it reconnected, or has just started following) and the stream must be read again.
"""


class Watch(Protocol):
    """Change notifications for the streams one process follows, from :meth:`EventLog.watch`.

    One watch serves every stream its owner follows (one connection, not one per stream). Notifications of one stream
    arrive in the order of its changes; a change made through this store object may be notified twice (at once, and
    again from the store's server), which followers recognise by its sequence number. A loss or rewind of the store
    is not notified (it cannot be): the owner audits quiet streams with :meth:`EventLog.audit`.
    """

    def follow(self, stream_id: str, entries: bool = True) -> None:
        """Start notifying changes of ``stream_id``; called again, change what is notified.

        ``entries=False`` when this process runs the stream's producer: the appends it makes itself are notified
        by the store at once (the append is its own notification), so only what others write must come from
        outside (an end: cancel, lost). Fewer messages; nothing is missed.
        """
        ...

    def unfollow(self, stream_id: str) -> None:
        """Stop notifying changes of ``stream_id``."""
        ...

    async def close(self) -> None:
        """Stop notifying anything and release what the watch holds."""
        ...


@runtime_checkable
class EventLog(Protocol):
    """The contract every store meets. All times are in seconds; ``lease`` is counted on the store's clock.

    Stores bound what they keep (events per stream, time a finished stream is kept); those limits are store
    settings because only the store can enforce them atomically.
    """

    async def claim(self, stream_id: str, token: str, lease: float) -> Claim:
        """Create ``stream_id`` with a new epoch and make ``token`` its producer for ``lease`` seconds.

        Atomic: of any number of concurrent callers (in any process) exactly one gets ``acquired=True``. When the
        stream already exists (running or finished) nothing changes and its current state comes back with
        ``acquired=False``. May raise :class:`~resumable_sse.exceptions.StoreFull`.
        """
        ...

    async def append(
        self, stream_id: str, token: str, events: Sequence[NewEvent], *, after: int, final: Status | None = None
    ) -> int:
        """Append ``events`` in order, numbered from ``after + 1``, and return the new ``last_seq``.

        ``after`` is the ``last_seq`` the producer knows; it makes the append idempotent: when ``last_seq`` already
        equals ``after + len(events)`` (a retry of an append whose reply was lost) nothing is written and that
        ``last_seq`` is returned. Any other mismatch writes nothing and raises ``StreamFenced``.

        Fenced: raises :class:`~resumable_sse.exceptions.StreamFenced` and writes nothing unless ``token`` is the
        stream's producer and the stream is running (or, for a retry, was ended by this very append). Raises
        :class:`~resumable_sse.exceptions.StreamNotFound` when the stream is gone.

        With ``final`` (a terminal status) the last of ``events`` is the terminal entry: the stream becomes
        finished, its claim is released, and its time to live starts. Trims the oldest entries beyond the store's
        ``max_events``. All of it is one atomic step, notified to every watch that follows the stream.
        """
        ...

    async def renew(self, leases: Sequence[tuple[str, str]], lease: float) -> list[int]:
        """Extend the claim of each ``(stream_id, token)`` by ``lease`` seconds, in one round trip.

        For each: the stream's ``last_seq`` when ``token`` still owns the running stream, else -1 (nothing changed).
        """
        ...

    async def end(self, stream_id: str, status: Status, data: str) -> bool:
        """End a running stream from outside its producer: append the terminal entry ``(status, data)``.

        Used for ``cancelled`` (any process may cancel). Atomic and at most once: returns True only for the call
        that wrote the terminal entry. After it, the producer's appends and renewals fail (it is fenced).
        """
        ...

    async def abandon(self, stream_id: str, token: str, data: str) -> StreamState | None:
        """The producer ``token`` gives up a running stream it can no longer continue (the store went back in time
        under it): atomically the stream becomes a new epoch holding only the terminal entry ``("lost", data)``.

        Ending it in place would number the terminal entry with an id that readers already hold for another event;
        a new epoch cannot be mistaken for what they have (they get a reset, then ``lost``). Returns the new state,
        or None (nothing changed) when ``token`` does not own the running stream.
        """
        ...

    async def audit(self, stream_ids: Sequence[str], lost: str) -> list[StreamState | None]:
        """The current state of each stream (None: unknown), in one round trip.

        A running stream whose producer's lease has run out is first ended with the terminal entry
        ``("lost", lost)``, atomically and at most once across processes, so that readers never wait on a dead
        producer.
        """
        ...

    async def state(self, stream_id: str) -> StreamState | None:
        """The stream's current state, or None when it is unknown (never created, or expired)."""
        ...

    async def read(self, stream_id: str, after: int, limit: int, *, epoch: str | None = None) -> Page | None:
        """Up to ``limit`` retained entries with ``seq > after`` of the stream's current epoch, with its state.

        The entries start at the earliest retained one instead when entries after ``after`` were trimmed, when
        ``after`` lies beyond ``last_seq`` (the stream was rewound), or when ``epoch`` is given and is not the
        stream's (it was created again): the caller compares the page's state with what it holds. None when the
        stream is unknown.
        """
        ...

    def watch(self, on_change: OnChange) -> Watch:
        """A :class:`Watch` calling ``on_change`` for the streams it follows (see :data:`OnChange`)."""
        ...

    async def close(self) -> None:
        """Release connections and stop every watch; the store is not used afterwards."""
        ...


@runtime_checkable
class SubmitsAppends(Protocol):
    """What a store may offer beside :class:`EventLog`: an append started at once, without a coroutine.

    A store that implements it is called directly by the producer, in the producer's own step (when the Streamer
    has no observer), which saves a turn of the event loop between each token and its readers
    (``benchmarks/fleet.py``); one that does not is called through :meth:`EventLog.append` in a task.
    """

    def submit_append(
        self, stream_id: str, token: str, events: Sequence[NewEvent], *, after: int, final: Status | None = None
    ) -> asyncio.Future[int]:
        """:meth:`EventLog.append`, started before this returns; its outcome (the new ``last_seq``, or the same
        exceptions) comes through the returned future. Appends submitted one after the other by one caller, each
        after the previous one's outcome, are applied in that order. A store that appends synchronously returns a
        future that is already done (the caller then goes on without waiting)."""
        ...


class AppendsAtOnce(Protocol):
    """A store's ``append_at_once`` method, which an in-process store may offer beside :class:`SubmitsAppends`
    (internal: the memory store's): :meth:`EventLog.append` applied, and notified to the watches, before it returns,
    its outcome returned or raised, with no future made and settled per append. A producer's run uses it when the
    store has it (and it is not None) and nothing observes the Streamer."""

    def __call__(
        self, stream_id: str, token: str, events: Sequence[NewEvent], *, after: int, final: Status | None = None
    ) -> int: ...


class Outcome(Protocol):
    """Where an append's outcome goes: an :class:`asyncio.Future` (what :meth:`SubmitsAppends.submit_append` returns)
    or an object of the same three methods that takes it in the store's own step (see :class:`AppendsThen`).

    Rule: ``set_result`` and ``set_exception`` never raise (the store settles a whole group of appends in a row)."""

    def done(self) -> bool: ...
    def set_result(self, result: int, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


class AppendsThen(Protocol):
    """A store's ``append_then`` method, which a store that replies later may offer beside :class:`SubmitsAppends`
    (internal: the Redis store's): :meth:`SubmitsAppends.submit_append`, its outcome given to ``outcome`` in the
    step that learns it (the group commit's), not a step later through a future's callbacks. A producer's run then
    appends what it has pending in that very step (the same group commit goes on with it), and makes no future per
    append. Used when the store has it and nothing observes the Streamer. It never settles ``outcome`` before it
    returns (a store that knows at once offers :class:`AppendsAtOnce`)."""

    def __call__(
        self,
        stream_id: str,
        token: str,
        events: Sequence[NewEvent],
        *,
        after: int,
        final: Status | None = None,
        outcome: Outcome,
    ) -> None: ...
