"""The producer runtime: each stream's producer run once, its events batched into appends, its lease kept.

A :class:`_Run` pumps the user's source into a pending batch while its writer appends batches to the store: while one
append is in flight the next events queue and go in the next append, and a slow producer's event is appended at once.
:class:`Producers` holds every run of this process, keyed by ``(stream id, epoch)`` and removed by identity, and
renews all their leases in one store call per period (no timer per stream). Every run ends exactly once, and its
outcome is always retrieved: a failure is logged by the ``resumable_sse`` logger with the stream id, never left to
asyncio's "exception was never retrieved".
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any, Protocol, Union

from ._event import Status, normalize
from ._feed import call_in_thread, pump_in_thread
from ._log import EventLog, NewEvent, StreamState
from ._observe import Observer
from ._readers import Hub, terminal_data
from ._tasks import Signal, spawn, stopped
from .exceptions import EventTooLarge, InvalidEventData, ProducerError, StoreUnavailable, StreamFenced, StreamNotFound

__all__ = ["Factory", "Producer", "Producers", "Source", "check_factory"]

logger = logging.getLogger("resumable_sse")


Source = Union[AsyncIterable[Any], Iterable[Any]]  # noqa: UP007 (a runtime alias on 3.10)
"""What a producer factory returns: an async iterable (run on the loop) or a plain iterable (run in a thread)."""

Factory = Callable[[], Union[Source, Awaitable[Source]]]  # noqa: UP007 (a runtime alias on 3.10)
"""A producer function: an async generator function, an async function returning the events, or a plain function
(called in a thread of its own) returning them."""


class Settings(Protocol):
    """What the producer runtime needs of the engine that owns it (the :class:`~resumable_sse.Streamer`)."""

    @property
    def log(self) -> EventLog: ...  # the store as the engine calls it (timed when there is an observer)

    @property
    def observer(self) -> Observer | None: ...
    @property
    def hub(self) -> Hub: ...
    @property
    def lease(self) -> float: ...
    @property
    def idle_timeout(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def max_event_bytes(self) -> int: ...
    @property
    def max_batch_bytes(self) -> int: ...
    @property
    def error_message(self) -> str: ...
    @property
    def store_retry_timeout(self) -> float: ...

    async def append(
        self, stream_id: str, token: str, events: list[NewEvent], after: int, *, final: Status | None = None
    ) -> int:
        """A producer's append, retried while the store is unreachable."""


def check_factory(producer: object) -> None:
    """Refuse at once what cannot be a producer function (a generator object, an iterable, None)."""
    if callable(producer):
        return
    kind = type(producer).__name__
    if isinstance(producer, (AsyncIterable, Iterable)):
        raise TypeError(
            f"a producer must be a function that returns the events, not a {kind} object: pass the generator "
            "function itself (or lambda: gen), so that it runs once, only when the stream is claimed"
        )
    raise TypeError(f"a producer must be a function that returns the events, not {kind}")


class Producer:
    """A producer this process runs: await :meth:`wait` for the terminal state it ended its stream with."""

    def __init__(self, run: _Run) -> None:
        self._run = run

    @property
    def stream_id(self) -> str:
        """The stream it produces."""
        return self._run.stream_id

    @property
    def epoch(self) -> str:
        """The epoch of the stream it created."""
        return self._run.epoch

    def done(self) -> bool:
        """True once the stream has its terminal entry (or the producer was fenced out)."""
        return self._run.task.done()

    def result(self) -> Status:
        """The end state; raises :class:`asyncio.InvalidStateError` while the producer runs."""
        return self._run.task.result()

    def add_done_callback(self, callback: Callable[[Producer], None]) -> None:
        """Call ``callback(self)`` on the event loop once the stream has ended."""
        self._run.task.add_done_callback(lambda _task: callback(self))

    async def wait(self) -> Status:
        """Wait until the stream ends; return its terminal state."""
        return await asyncio.shield(self._run.task)


class _Run:
    """One producer: its pump (the only code that touches the user's source) and its writer (see module)."""

    def __init__(self, producers: Producers, token: str, state: StreamState, factory: Factory) -> None:
        self.producers = producers
        self.streamer = streamer = producers.streamer
        self.stream_id = state.stream_id
        self.token = token
        self.epoch = state.epoch
        self.factory = factory
        self.pending: list[NewEvent] = []
        self.wake = Signal()
        self.space: asyncio.Future[None] | None = None
        self.limit = min(16, streamer.batch_size)  # how far the pump may run ahead of the writer
        self.stop_reason: tuple[Status, str] | None = None  # why we stopped the pump ourselves
        self.fenced = False
        self.ending = False  # the final append is on its way: its notification is no end from elsewhere
        self.last_seq = 0  # what the log holds of this run; appends name it so that a retry cannot duplicate
        self.last_progress = time.monotonic()
        self.pump: asyncio.Task[None] | None = None
        self.task: asyncio.Task[Status] = spawn(
            self.supervise(), f"resumable-sse producer {self.stream_id}", self.stream_id
        )

    # -- the pump ---------------------------------------------------------------------------------------------------

    def push_many(self, events: list[NewEvent]) -> None:
        """Queue events normalized elsewhere (a worker thread)."""
        self.pending.extend(events)
        self.wake.set()

    async def has_space(self) -> None:
        """Wait until the writer has taken the pending batch (backpressure on a fast producer)."""
        if len(self.pending) >= self.limit:
            self.space = asyncio.get_running_loop().create_future()
            await self.space

    async def pump_source(self) -> None:
        factory = self.factory
        if inspect.iscoroutinefunction(factory):
            source = await factory()
        elif inspect.isasyncgenfunction(factory):
            source = factory()
        else:
            # A plain function may block before it returns (a legacy SDK's create(stream=True) connects first):
            # it is called in a thread of its own, never on the event loop.
            source = await call_in_thread(factory, f"resumable-sse producer {self.stream_id}")
        if isinstance(source, AsyncIterable):
            iterator = aiter(source)
            try:
                # The hot loop: a plain ASCII token skips normalize() (is_plain_token, inlined); anything else is
                # checked fully.
                pending, append, wake = self.pending, self.pending.append, self.wake.set
                max_bytes = self.streamer.max_event_bytes
                async for item in iterator:
                    if type(item) is str and item.isascii() and len(item) <= max_bytes:
                        append((None, item))
                    else:
                        append(normalize(item, max_bytes))
                    wake()
                    if len(pending) >= self.limit:
                        await self.has_space()
            finally:
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
        elif isinstance(source, Iterable):
            await pump_in_thread(self, source)
        else:
            raise TypeError(f"a producer must return an async iterable or an iterable, not {type(source).__name__}")

    # -- the writer and supervisor ----------------------------------------------------------------------------------

    def stop(self, status: Status, message: str) -> None:
        """Stop the pump; the stream is ended with ``status`` unless another end was already written."""
        if self.stop_reason is None:
            self.stop_reason = (status, message)
        if self.pump is not None:
            self.pump.cancel()

    def fence(self, status: Status, message: str) -> None:
        """The stream was ended (or taken) elsewhere: stop without writing."""
        self.fenced = True
        self.stop(status, message)

    async def append(self, events: list[NewEvent], final: Status | None = None) -> None:
        streamer = self.streamer
        if streamer.observer is None:  # the common case without the retry's frames (this is on every event's path)
            try:
                self.last_seq = await streamer.log.append(
                    self.stream_id, self.token, events, after=self.last_seq, final=final
                )
                return
            except StoreUnavailable:
                pass  # retried by Streamer.append, which also reports to the observer and times the store
        self.last_seq = await streamer.append(self.stream_id, self.token, events, self.last_seq, final=final)

    def take(self) -> list[NewEvent]:
        """The pending events that go in the next append: all of them, or as many as fit ``max_batch_bytes`` (at
        least one: a single event is never larger than ``max_event_bytes``, which is at most that)."""
        pending = self.pending
        budget = self.streamer.max_batch_bytes
        # UTF-8 takes at most 4 bytes a character: the common case (short tokens) is decided by one pass of len().
        if 4 * sum([len(data) for _, data in pending]) <= budget:
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
        self.wake.set()  # what is left goes in the next append, without waiting for the producer
        return batch

    async def flush(self) -> None:
        batch = self.take()
        # Start small so the first events go out at once, then grow to batch_size for throughput.
        self.limit = min(self.limit * 2, self.streamer.batch_size)
        space = self.space
        if space is not None and not space.done():
            space.set_result(None)
        await self.append(batch)
        self.last_progress = time.monotonic()

    async def supervise(self) -> Status:
        pump = self.pump = asyncio.get_running_loop().create_task(self.pump_source())
        pump.add_done_callback(lambda _: self.wake.set())
        try:
            try:
                while not pump.done() and not self.fenced:
                    await self.wake.wait()
                    if self.pending and not pump.done():
                        await self.flush()
            except StreamFenced:
                self.fenced = True
            if self.fenced:
                await stopped(pump)
                return await self._outside_end()
            status, message = self._outcome(pump)
            self.ending = True
            self.pending.append((status, terminal_data(status, message)))
            try:
                while True:  # what is pending, in appends of at most max_batch_bytes; the last holds the terminal
                    batch = self.take()
                    if not self.pending:
                        await self.append(batch, final=status)
                        break
                    await self.append(batch)
            except StreamFenced:
                return await self._outside_end()
            self.pending.clear()
            return status
        except asyncio.CancelledError:
            await stopped(pump)  # cancelled itself (shutdown): the pump first, then the cancel goes on
            raise
        except (StoreUnavailable, StreamNotFound) as exc:
            self.fenced = True
            await stopped(pump)
            logger.error(
                "stream %r: %s; its producer stops and readers are told it is lost",
                self.stream_id,
                "the store stayed unreachable" if isinstance(exc, StoreUnavailable) else "the store lost it",
                extra={"stream_id": self.stream_id},
            )
            self.streamer.hub.suspect(self.stream_id)
            return "lost"
        except Exception:
            self.fenced = True
            await stopped(pump)
            logger.exception(
                "the run of stream %r failed; it stops, and its readers get lost once its lease runs out",
                self.stream_id,
                extra={"stream_id": self.stream_id},
            )
            self.streamer.hub.suspect(self.stream_id)
            return "error"
        finally:
            self.producers.forget(self)

    def _outcome(self, pump: asyncio.Task[None]) -> tuple[Status, str]:
        if pump.cancelled():
            if self.stop_reason is not None:
                return self.stop_reason
            return "cancelled", "the producer was cancelled"
        exc = pump.exception()
        if exc is None:
            return "done", ""
        if isinstance(exc, ProducerError):
            return "error", str(exc)
        extra = {"stream_id": self.stream_id}
        if isinstance(exc, (EventTooLarge, InvalidEventData)):
            said = "an event was too large" if isinstance(exc, EventTooLarge) else "an event was not valid text"
            logger.error("stream %r: %s; it ends with error (clients get %r)", self.stream_id, exc, said, extra=extra)
            return "error", said
        logger.error(
            "producer of stream %r raised; the stream ends with error (clients get the generic message)",
            self.stream_id,
            exc_info=exc,
            extra=extra,
        )
        return "error", self.streamer.error_message

    async def _outside_end(self) -> Status:
        """The stream ended, or changed, without this run (a cancel from any process, declared lost, expired, lost or
        rewound by the store): report how it ended; a stream this run cannot continue is ended as lost. Anything but
        a cancel is logged once, here, with the stream id."""
        store, stream_id = self.streamer.log, self.stream_id
        try:
            state = await store.state(stream_id)
        except StoreUnavailable:
            why = "the store stayed unreachable"
        else:
            if state is None:
                why = "the store lost it"
            elif state.epoch != self.epoch:
                why = "it was created again"
            elif state.status == "lost":
                why = "it was declared lost (its lease ran out: its process or the store did not answer in time)"
            elif state.finished:
                return state.status  # cancelled elsewhere (or ended there): said by whoever ended it
            else:
                # Still running but not continuable by this run (the store went back in time under it): end it as a
                # new epoch, so that no reader is left waiting and no id a reader holds names another event.
                why = "the store went back in time under it"
                data = terminal_data("lost", "the store lost events of this stream")
                with contextlib.suppress(StoreUnavailable):  # else declared lost by an audit after the lease
                    await store.abandon(stream_id, self.token, data)
        extra = {"stream_id": stream_id}
        logger.error(
            "stream %r: %s; its producer stops and the stream ends lost (readers get lost)", stream_id, why, extra=extra
        )
        self.streamer.hub.suspect(stream_id)
        return "lost"


def _status(task: asyncio.Task[Status]) -> Status:
    """How a run's task ended its stream (a run returns its status; a task cancelled outright was cancelled)."""
    return "cancelled" if task.cancelled() else "error" if task.exception() is not None else task.result()


class Producers:
    """Every producer this process runs (see the module docstring)."""

    def __init__(self, streamer: Settings) -> None:
        self.streamer = streamer
        self.runs: dict[tuple[str, str], _Run] = {}
        self._keeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.runs)

    def start(self, token: str, state: StreamState, factory: Factory) -> Producer:
        """Run ``factory()`` as the producer of the stream just claimed with ``token`` (shape ``state``)."""
        run = _Run(self, token, state, factory)
        self.runs[state.stream_id, state.epoch] = run
        # Follow the stream while its producer runs, like a reader would: an end written by another process
        # (cancel) then stops the producer at once instead of at its next append or lease renewal.
        hub, observer = self.streamer.hub, self.streamer.observer
        tail = hub.attach(state, producer=True)
        run.task.add_done_callback(lambda _task: hub.detach(tail, producer=True))
        if observer is not None:
            observer.stream_started(run.stream_id)
            run.task.add_done_callback(lambda task: observer.stream_ended(run.stream_id, _status(task)))
        if self._keeper is None or self._keeper.done():
            self._keeper = spawn(self._keep_leases(), "resumable-sse leases")
        return Producer(run)

    def get(self, stream_id: str, epoch: str) -> _Run | None:
        return self.runs.get((stream_id, epoch))

    def of(self, stream_id: str) -> list[_Run]:
        """The runs of ``stream_id`` in this process (more than one while an old epoch's run winds down)."""
        return [run for (sid, _), run in self.runs.items() if sid == stream_id]

    def forget(self, run: _Run) -> None:
        if self.runs.get((run.stream_id, run.epoch)) is run:
            del self.runs[run.stream_id, run.epoch]

    async def _keep_leases(self) -> None:
        """Renew every local producer's lease in one store call; stop producers that lost it or went idle."""
        streamer = self.streamer
        while self.runs:
            await asyncio.sleep(streamer.lease / 3)
            runs = [run for run in self.runs.values() if not run.task.done()]
            try:
                kept = await streamer.log.renew([(run.stream_id, run.token) for run in runs], streamer.lease)
            except Exception as exc:
                logger.warning(
                    "could not renew the leases of %d producers: %s; tried again in %.1f s (readers notice nothing "
                    "unless it lasts the lease: those streams then end lost)",
                    len(runs),
                    exc,
                    streamer.lease / 3,
                    extra={"stream_id": None, "stream_ids": [run.stream_id for run in runs[:100]]},
                )
                continue
            now = time.monotonic()
            for run, last_seq in zip(runs, kept, strict=True):
                if last_seq < 0:
                    run.fence("lost", "")
                    streamer.hub.suspect(run.stream_id)
                elif last_seq < run.last_seq:
                    streamer.hub.suspect(run.stream_id)  # the store went back in time: readers must hear of it
                elif not run.pending and now - run.last_progress > streamer.idle_timeout:
                    logger.error(
                        "producer of stream %r yielded nothing for %.0f s; the stream ends with error (clients get "
                        "'the producer was idle too long')",
                        run.stream_id,
                        streamer.idle_timeout,
                        extra={"stream_id": run.stream_id},
                    )
                    run.stop("error", "the producer was idle too long")

    async def close(self, grace: float) -> None:
        """Give running producers ``grace`` seconds, then cancel them (``cancelled``, "server shutdown"); wait for
        every one of them to end."""
        tasks = [run.task for run in self.runs.values()]
        if tasks:
            _, running = await asyncio.wait(tasks, timeout=grace)
            for run in list(self.runs.values()):
                run.stop("cancelled", "server shutdown")
            if running:
                await asyncio.wait(running)
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
