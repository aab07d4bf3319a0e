"""The event log protocol: what a store must do, and the state types it returns.

A store keeps and reads; the rules (who may produce, when a stream ends, what a client is sent) live in the
:class:`~resumable_sse.Streamer`. A custom store implements :class:`EventLog` and passes the contract suite in
``tests/test_log_contract.py`` unchanged. Every method that changes a stream is atomic in the store: two processes
sharing a store can never both claim a stream, and a producer that lost its claim can never append (fencing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ._event import Entry, EventId, Status

__all__ = ["Claim", "EventLog", "NewEvent", "StreamState"]

NewEvent = tuple[str | None, str]
"""An event to append: ``(event type or None, data text)``; the store assigns its sequence number."""


@dataclass(frozen=True, slots=True)
class StreamState:
    """A snapshot of one stream.

    ``first_seq`` is the sequence number of the earliest retained entry (``last_seq + 1`` when none is retained);
    ``last_seq`` that of the newest (0 before the first append). Once ``status`` is not ``running`` the entry at
    ``last_seq`` is the terminal entry and nothing more is ever appended in this epoch.
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
    def last_id(self) -> str | None:
        """The id of the newest entry, or None when the stream has none yet."""
        return self.id_of(self.last_seq) if self.last_seq else None


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of :meth:`EventLog.claim`: whether this caller became the producer, and the stream's state."""

    acquired: bool
    state: StreamState


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
        stream's producer and the stream is running (or, for a retry, was ended by this very append).

        With ``final`` (a terminal status) the last of ``events`` is
        the terminal entry: the stream becomes finished, its claim is released, and its time to live starts.
        Trims the oldest entries beyond the store's ``max_events``. All of it is one atomic step.
        """
        ...

    async def renew(self, stream_id: str, token: str, lease: float) -> bool:
        """Extend the producer's claim by ``lease`` seconds; False (and no change) if ``token`` lost it."""
        ...

    async def end(self, stream_id: str, status: Status, data: str, *, only_if_expired: bool = False) -> bool:
        """End a running stream from outside its producer: append the terminal entry ``(status, data)``.

        Used for ``cancelled`` (any process may cancel) and ``lost`` (with ``only_if_expired``: only when the
        producer's lease has run out). Atomic and at most once: returns True only for the call that wrote the
        terminal entry. After it, the producer's appends and renewals fail (it is fenced).
        """
        ...

    async def state(self, stream_id: str) -> StreamState | None:
        """The stream's current state, or None when it is unknown (never created, or expired)."""
        ...

    async def read(self, stream_id: str, after: int, limit: int) -> list[Entry]:
        """Up to ``limit`` retained entries with ``seq > after``, oldest first, of the stream's current epoch.

        When entries after ``after`` were trimmed the result starts at the earliest retained one: callers detect
        the gap from the first entry's ``seq``. Raises :class:`~resumable_sse.exceptions.StreamNotFound` when the
        stream is unknown.
        """
        ...

    async def wait(self, stream_id: str, after: int, limit: int, timeout: float) -> list[Entry]:
        """Like :meth:`read`, but when nothing follows ``after`` wait up to ``timeout`` seconds for an append.

        Returns an empty list on timeout. This is the live tail; the Streamer calls it once per stream per process,
        never once per reader.
        """
        ...

    async def close(self) -> None:
        """Release connections and wake every waiter; the store is not used afterwards."""
        ...
