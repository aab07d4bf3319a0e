"""Observing the engine: what happens to streams, readers, requests and store calls, told to an :class:`Observer`.

An operator asks how many streams are live, how many readers, how often a resume continues exactly and how often it
needs a ``reset``, how long the store takes, whether producers die, whether readers lag. The engine answers by calling
the observer given to the :class:`~resumable_sse.Streamer` (``Streamer(observer=...)``) at the moment each of these is
decided: the producer runtime when a stream starts, appends and ends; readers when they open, are served a batch and
close; the HTTP adapter once per request, with how it was answered; and every store call, timed.

The observer is a dependency-free interface: :mod:`resumable_sse.prometheus` implements it with
``prometheus_client``, and an application can implement it for anything else (OpenTelemetry, StatsD, a test). With no
observer (the default) nothing is called and nothing is timed: the hot paths pay one ``is None`` test per batch.

Counts are per batch, not per event (an append of 500 events is one call with ``count=500``), and exact: an event is
counted once when the store confirmed it, however many times its append was retried.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Sequence
from typing import Final, Literal, TypeVar, get_args

from ._event import Status
from ._log import Claim, EventLog, NewEvent, OnChange, Page, StreamState, Watch
from ._logger import logger
from .exceptions import StreamFenced, StreamNotFound

__all__ = [
    "REQUEST_OUTCOMES",
    "STORE_OPERATIONS",
    "GuardedObserver",
    "HookFailures",
    "ObservedLog",
    "Observer",
    "RequestOutcome",
    "StoreOperation",
]

T = TypeVar("T")

RequestOutcome = Literal[
    "new",
    "resumed",
    "reset",
    "no_content",
    "gone",
    "bad_request",
    "forbidden",
    "unavailable",
    "method_not_allowed",
    "error",
]
"""How a request for a stream was answered (the status table of ``docs/protocol.md``):

``new`` 200 from the first retained event (no position given); ``resumed`` 200 continuing exactly after the position;
``reset`` 200 starting with a ``reset`` event (the position could not be continued; also a stream re-run with
``on_unknown="restart"``); ``no_content`` 204 (the position is the end of a finished stream); ``gone`` 410 (unknown or
expired); ``bad_request`` 400 (a malformed position or stream id); ``forbidden`` 403 (``authorize`` said no);
``unavailable`` 503 (the store is unreachable or full, or the server is shutting down); ``method_not_allowed`` 405;
``error`` 500 (the application's ``authorize`` or ``stream_id`` function raised).
"""
REQUEST_OUTCOMES: Final[tuple[RequestOutcome, ...]] = get_args(RequestOutcome)

StoreOperation = Literal["claim", "append", "renew", "end", "abandon", "audit", "state", "read"]
"""The :class:`~resumable_sse.EventLog` methods the engine calls, each timed as one operation."""
STORE_OPERATIONS: Final[tuple[StoreOperation, ...]] = get_args(StoreOperation)

# The store's answers that are part of the protocol, not failures: the stream moved on (it was ended or taken
# elsewhere, or it expired). Anything else a store call raises counts as an error of that operation.
_ANSWERS: Final = (StreamFenced, StreamNotFound)


class Observer:
    """What the engine reports, one method per fact; every method here does nothing, so a subclass implements only
    what it needs.

    Methods are called on the event loop, synchronously, from the engine's own code paths: they must be quick and
    must not block. One that raises changes nothing it measures: the engine calls it through a guard
    (:class:`GuardedObserver`), logs its first failure and goes on as if it had returned (see :class:`HookFailures`).
    ``stream_id`` is the stream's id; ``None`` only for a request refused before it named a valid stream.
    """

    def stream_started(self, stream_id: str) -> None:
        """A producer started in this process (its claim succeeded): a stream is running."""

    def stream_ended(self, stream_id: str, status: Status) -> None:
        """A producer of this process ended, and its stream with it: ``done``, ``error``, ``cancelled`` (from any
        process, or at shutdown) or ``lost`` (the store lost the stream or stayed unreachable, or it was declared
        lost). Called once per :meth:`stream_started`."""

    def events_appended(self, stream_id: str, count: int) -> None:
        """``count`` events a producer yielded are in the store (confirmed; the terminal entry is not counted)."""

    def reader_opened(self, stream_id: str) -> None:
        """A reader started to be served (a response, or an iteration of a subscription)."""

    def reader_closed(self, stream_id: str) -> None:
        """A reader stopped being served (the stream ended, the client went away, the server shuts down)."""

    def reader_served(self, stream_id: str, behind: int) -> None:
        """A reader was given a batch (one socket write); ``behind``: how many events the stream's head is still
        ahead of it after that batch (0: it is live)."""

    def request(self, stream_id: str | None, outcome: RequestOutcome) -> None:
        """An HTTP request for a stream was answered with ``outcome`` (see :data:`RequestOutcome`)."""

    def store_call(self, operation: StoreOperation, seconds: float, error: BaseException | None) -> None:
        """A call to the store took ``seconds``; ``error`` is what it raised when it failed (unreachable, full, or
        anything unexpected), None when it answered (the answers ``StreamFenced`` and ``StreamNotFound`` included).
        A call cancelled by its caller is not reported."""


class HookFailures:
    """The failures of an application's code that the engine calls (an :class:`Observer`'s methods, ``authorize``,
    a ``stream_id`` function), counted per hook for one :class:`~resumable_sse.Streamer`.

    The policy: the first failure of each hook is logged (ERROR, logger ``resumable_sse``, with its traceback, the
    stream id and the hook's name in ``extra``); later ones are only counted, so a hook that raises at every call
    does not flood the log. :meth:`Streamer.close <resumable_sse.Streamer.close>` logs each hook's total when it
    failed more than once, and :attr:`Streamer.hook_failures <resumable_sse.Streamer.hook_failures>` reads them.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def failed(self, hook: str, stream_id: str | None, error: BaseException) -> None:
        """``hook`` raised ``error`` (for ``stream_id``); the caller goes on as if it had returned."""
        count = self.counts[hook] = self.counts.get(hook, 0) + 1
        if count == 1:
            logger.error(
                "%s raised for stream %r; the engine went on as if it had returned (later failures of %s are "
                "counted, not logged)",
                hook,
                stream_id,
                hook,
                exc_info=error,
                extra={"stream_id": stream_id, "hook": hook},
            )

    def summary(self) -> None:
        """Log the total of every hook that failed more than once (at shutdown)."""
        for hook, count in self.counts.items():
            if count > 1:
                logger.warning("%s raised %d times in all", hook, count, extra={"stream_id": None, "hook": hook})


class GuardedObserver(Observer):
    """An application's :class:`Observer` as the engine calls it: a method that raises is reported to
    :class:`HookFailures` and the call returns as if it had returned, so instrumentation that has a bug never
    changes what it measures (a stream, a reader's response, a store's group commit, a shutdown).

    The one place where observer failures are isolated: every call site of the engine goes through it.
    ``BaseException`` that is not an ``Exception`` (a cancel, ``KeyboardInterrupt``) is not caught.
    """

    def __init__(self, observer: Observer, failures: HookFailures) -> None:
        self.wrapped: Final = observer
        """The application's observer."""
        self.failures: Final = failures

    def __repr__(self) -> str:
        return f"GuardedObserver({self.wrapped!r})"

    def stream_started(self, stream_id: str) -> None:
        try:
            self.wrapped.stream_started(stream_id)
        except Exception as exc:
            self.failures.failed("Observer.stream_started", stream_id, exc)

    def stream_ended(self, stream_id: str, status: Status) -> None:
        try:
            self.wrapped.stream_ended(stream_id, status)
        except Exception as exc:
            self.failures.failed("Observer.stream_ended", stream_id, exc)

    def events_appended(self, stream_id: str, count: int) -> None:
        try:
            self.wrapped.events_appended(stream_id, count)
        except Exception as exc:
            self.failures.failed("Observer.events_appended", stream_id, exc)

    def reader_opened(self, stream_id: str) -> None:
        try:
            self.wrapped.reader_opened(stream_id)
        except Exception as exc:
            self.failures.failed("Observer.reader_opened", stream_id, exc)

    def reader_closed(self, stream_id: str) -> None:
        try:
            self.wrapped.reader_closed(stream_id)
        except Exception as exc:
            self.failures.failed("Observer.reader_closed", stream_id, exc)

    def reader_served(self, stream_id: str, behind: int) -> None:
        try:
            self.wrapped.reader_served(stream_id, behind)
        except Exception as exc:
            self.failures.failed("Observer.reader_served", stream_id, exc)

    def request(self, stream_id: str | None, outcome: RequestOutcome) -> None:
        try:
            self.wrapped.request(stream_id, outcome)
        except Exception as exc:
            self.failures.failed("Observer.request", stream_id, exc)

    def store_call(self, operation: StoreOperation, seconds: float, error: BaseException | None) -> None:
        try:
            self.wrapped.store_call(operation, seconds, error)
        except Exception as exc:
            self.failures.failed("Observer.store_call", None, exc)


class ObservedLog:
    """The :class:`~resumable_sse.EventLog` the engine calls when it has an observer: the store it wraps, every call
    timed and reported by :meth:`Observer.store_call`.

    Timing at the engine's boundary measures every store alike, a custom one too, as the engine waits for it (a Redis
    append's wait for its group commit included); the stores themselves know nothing of observers. Without an
    observer the engine calls the store directly, and nothing is timed.
    """

    def __init__(self, store: EventLog, observer: Observer) -> None:
        self.store: Final = store
        self._report = observer.store_call

    def __repr__(self) -> str:
        return f"ObservedLog({self.store!r})"

    async def _timed(self, operation: StoreOperation, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            result = await call
        except _ANSWERS:
            self._report(operation, time.perf_counter() - started, None)
            raise
        except Exception as exc:
            self._report(operation, time.perf_counter() - started, exc)
            raise
        self._report(operation, time.perf_counter() - started, None)
        return result

    async def claim(self, stream_id: str, token: str, lease: float) -> Claim:
        return await self._timed("claim", self.store.claim(stream_id, token, lease))

    async def append(
        self, stream_id: str, token: str, events: Sequence[NewEvent], *, after: int, final: Status | None = None
    ) -> int:
        return await self._timed("append", self.store.append(stream_id, token, events, after=after, final=final))

    async def renew(self, leases: Sequence[tuple[str, str]], lease: float) -> list[int]:
        return await self._timed("renew", self.store.renew(leases, lease))

    async def end(self, stream_id: str, status: Status, data: str) -> bool:
        return await self._timed("end", self.store.end(stream_id, status, data))

    async def abandon(self, stream_id: str, token: str, data: str) -> StreamState | None:
        return await self._timed("abandon", self.store.abandon(stream_id, token, data))

    async def audit(self, stream_ids: Sequence[str], lost: str) -> list[StreamState | None]:
        return await self._timed("audit", self.store.audit(stream_ids, lost))

    async def state(self, stream_id: str) -> StreamState | None:
        return await self._timed("state", self.store.state(stream_id))

    async def read(self, stream_id: str, after: int, limit: int, *, epoch: str | None = None) -> Page | None:
        return await self._timed("read", self.store.read(stream_id, after, limit, epoch=epoch))

    def watch(self, on_change: OnChange) -> Watch:
        return self.store.watch(on_change)

    async def close(self) -> None:
        await self.store.close()
