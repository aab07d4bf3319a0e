"""The producer runtime: each stream's producer run once, its events batched into appends.

A :class:`Run` is one task: it pulls the user's source and starts each append itself, without waiting for it. While
one append is in flight the next events queue and go in the next append; a slow producer's event is appended at once,
in the step that yielded it (a store that offers :class:`~._log.SubmitsAppends` needs no task per append: memory
appends synchronously, Redis queues it for the next group commit). What a producer yields without waiting, after the
first event of a loop turn, goes in appends of up to ``limit`` events, with the loop run between them: a producer that
never waits is batched and cannot hold the loop. Every run ends exactly once (the registry, :mod:`._producers`, keeps
it until then), and its outcome is always retrieved: a failure is logged with the stream id.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, Union

from ._event import Status, normalize
from ._feed import call_in_thread, pump_in_thread
from ._log import EventLog, NewEvent, StreamState, SubmitsAppends
from ._logger import logger
from ._observe import Observer
from ._readers import Hub, terminal_data
from ._tasks import spawn
from .exceptions import EventTooLarge, InvalidEventData, ProducerError, StoreUnavailable, StreamFenced, StreamNotFound

__all__ = ["Factory", "Registry", "Run", "Settings", "Source"]


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
        self, stream_id: str, token: str, events: Sequence[NewEvent], after: int, *, final: Status | None = None
    ) -> int:
        """A producer's append, retried while the store is unreachable."""


class Registry(Protocol):
    """Where a run is kept while it runs (:class:`~._producers.Producers`)."""

    @property
    def streamer(self) -> Settings: ...

    def forget(self, run: Run) -> None:
        """The run ended: drop it (if it is still the one kept for its stream and epoch)."""


class _Halted(Exception):
    """The run stopped its own pump (a store verdict, or a stop asked for from within the pump's own step)."""


class Run:
    """One producer: one task that pumps the user's source and starts the appends (see the module docstring).

    The pump puts each event in :attr:`pending`; when no append is in flight it starts one with everything pending
    (:meth:`kick`), in its own step, and goes on pulling the source while the append travels; the append's
    completion starts the next one. A store that appends synchronously (memory) is written before the pump's next
    ``await``, so a paced token reaches its readers one loop turn after the producer yielded it, not three."""

    __slots__ = (
        "ending",
        "epoch",
        "factory",
        "failure",
        "fenced",
        "halted",
        "in_step",
        "interrupted",
        "last_progress",
        "last_seq",
        "limit",
        "pending",
        "producers",
        "pumping",
        "retrying",
        "space",
        "stop_reason",
        "stream_id",
        "streamer",
        "submitter",
        "tail",
        "task",
        "token",
        "writing",
        "written",
    )

    def __init__(self, producers: Registry, token: str, state: StreamState, factory: Factory) -> None:
        self.producers = producers
        self.streamer = streamer = producers.streamer
        self.stream_id = state.stream_id
        self.token = token
        self.epoch = state.epoch
        self.factory: Factory | None = factory
        self.pending: list[NewEvent] = []
        self.space: asyncio.Future[None] | None = None
        self.limit = min(16, streamer.batch_size)  # how far the pump may run ahead of the appends
        self.writing: asyncio.Future[int] | None = None  # the append in flight
        self.written: Sequence[NewEvent] = ()  # its events (sent again by a retry); let go once appended
        self.retrying = False  # the append in flight is the retry of one that met an unreachable store
        self.failure: BaseException | None = None  # why appends cannot go on (the store's verdict)
        self.stop_reason: tuple[Status, str] | None = None  # why we stopped the pump ourselves
        self.halted = False  # the pump was told to stop (stop, fence, failure)
        self.interrupted = False  # ... by a cancel of the task
        self.pumping = False
        self.in_step = False  # an append was started in this turn of the loop: what follows in it is batched
        self.fenced = False
        self.ending = False  # the final append is on its way: its notification is no end from elsewhere
        self.last_seq = 0  # what the log holds of this run; appends name it so that a retry cannot duplicate
        self.last_progress = time.monotonic()
        # Direct submission when the store offers it and nothing is observed (an observer times appends, and counts
        # them, through Streamer.append).
        log = streamer.log
        self.submitter = log if streamer.observer is None and isinstance(log, SubmitsAppends) else None
        # The run follows its stream, like a reader would, until it ends: an end written by another process (cancel)
        # then stops the producer at once instead of at its next append or lease renewal.
        self.tail = streamer.hub.attach(state, producer=True)
        self.task: asyncio.Task[Status] = spawn(self.main(), f"resumable-sse producer {self.stream_id}", self.stream_id)

    # -- the pump ---------------------------------------------------------------------------------------------------

    def push_many(self, events: list[NewEvent]) -> None:
        """Queue events normalized elsewhere (a worker thread)."""
        self.pending.extend(events)
        self.kick()

    async def has_space(self) -> None:
        """Wait until the pending events have been taken by an append (backpressure on a fast producer)."""
        if self.halted:
            raise _Halted
        if len(self.pending) >= self.limit and self.writing is not None:
            self.space = asyncio.get_running_loop().create_future()
            await self.space

    # -- the appends ------------------------------------------------------------------------------------------------

    def step_over(self) -> None:
        """The loop turn in which the pump started an append is over (a callback): what a producer that did not wait
        yielded after it, in the same turn, is appended now."""
        self.in_step = False
        self.kick()

    def kick(self) -> None:
        """Start appending what is pending, unless an append is in flight (its completion calls this again)."""
        while self.pending and self.writing is None and self.pumping and not self.halted:
            batch = self.take()
            # Start small so the first events go out at once, then grow to batch_size for throughput.
            self.limit = min(self.limit * 2, self.streamer.batch_size)
            space = self.space
            if space is not None and not space.done():
                space.set_result(None)
            if self.submitter is not None:
                future = self.submitter.submit_append(self.stream_id, self.token, batch, after=self.last_seq)
            else:
                future = self.append_in_task(batch)
            self.writing, self.written, self.retrying = future, batch, self.submitter is None
            if not future.done():
                future.add_done_callback(self.appended)
                return
            self.settle(future)  # appended synchronously: go on with what is pending

    def append_in_task(self, events: Sequence[NewEvent]) -> asyncio.Future[int]:
        """The append of ``events`` after :attr:`last_seq` through :meth:`Streamer.append` (retried while the store is
        unreachable, reported to the observer), in a task of its own."""
        return asyncio.ensure_future(self.streamer.append(self.stream_id, self.token, events, self.last_seq))

    def appended(self, future: asyncio.Future[int]) -> None:
        """The append in flight completed (a done callback)."""
        self.settle(future)
        self.kick()

    def settle(self, future: asyncio.Future[int]) -> None:
        """Take an append's outcome: progress, a retry (an unreachable store), or the end of this run's appends."""
        self.writing = None
        if future.cancelled():
            self.fail(StoreUnavailable("the append was cancelled (the event loop is shutting down)"))
            return
        error = future.exception()
        if error is None:
            self.written = ()  # (a quiet stream would hold its last batch for as long as it runs)
            self.last_seq = future.result()
            self.last_progress = time.monotonic()
            return
        if isinstance(error, StoreUnavailable) and not self.retrying:
            # Retried (with backoff, up to store_retry_timeout) by Streamer.append in a task: idempotent, it names
            # the sequence number it follows.
            retry = self.append_in_task(self.written)
            self.writing, self.retrying = retry, True
            retry.add_done_callback(self.appended)
            return
        self.fail(error)

    def fail(self, error: BaseException) -> None:
        if self.failure is None:
            self.failure = error
        self.halt()

    def halt(self) -> None:
        """Stop the pump: from outside its step by a cancel; from within (a store's notification of its own append)
        by :class:`_Halted`, raised where the pump looks after starting an append."""
        self.halted = True
        if self.pumping and not self.interrupted and asyncio.current_task() is not self.task:
            self.interrupted = True
            self.task.cancel()

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
        return batch

    async def append(self, events: list[NewEvent], final: Status | None = None) -> None:
        """An append awaited by the run itself (the final ones)."""
        self.last_seq = await self.streamer.append(self.stream_id, self.token, events, self.last_seq, final=final)

    # -- the run ----------------------------------------------------------------------------------------------------

    def stop(self, status: Status, message: str) -> None:
        """Stop the pump; the stream is ended with ``status`` unless another end was already written."""
        if self.stop_reason is None:
            self.stop_reason = (status, message)
        self.halt()

    def fence(self, status: Status, message: str) -> None:
        """The stream was ended (or taken) elsewhere: stop without writing."""
        self.fenced = True
        self.stop(status, message)

    async def open(self) -> object:
        """Call the factory, once: the run lets go of it (and of what it binds: the request that claimed the stream)
        rather than hold it for as long as it runs; the source holds whatever it needs."""
        factory, self.factory = self.factory, None
        if factory is None:
            raise RuntimeError("a producer run opens its source once")
        if inspect.iscoroutinefunction(factory):
            return await factory()
        if inspect.isasyncgenfunction(factory):
            return factory()
        # A plain function may block before it returns (a legacy SDK's create(stream=True) connects first): it is
        # called in a thread of its own, never on the event loop.
        return await call_in_thread(factory, f"resumable-sse producer {self.stream_id}")

    async def main(self) -> Status:
        """The run's task: pull the source (in this very frame: a quiet stream holds its frames for as long as it
        runs), then write the end (:meth:`finish`)."""
        try:
            status, message = self.stop_reason or ("cancelled", "the producer was cancelled")
            if not self.halted:  # (halted: stopped before it started, by a shutdown right after the claim)
                self.pumping = True
                try:
                    source = await self.open()
                    if isinstance(source, AsyncIterable):
                        iterator = aiter(source)
                        try:
                            # The hot loop: a plain ASCII token skips normalize(); anything else is checked fully.
                            pending, append = self.pending, self.pending.append
                            loop = asyncio.get_running_loop()
                            max_bytes = self.streamer.max_event_bytes
                            async for item in iterator:
                                if type(item) is str and item.isascii() and len(item) <= max_bytes:
                                    append((None, item))
                                else:
                                    append(normalize(item, max_bytes))
                                if self.writing is None:
                                    if not self.in_step:  # the first event since the pump last waited: now
                                        self.in_step = True
                                        loop.call_soon(self.step_over)
                                        self.kick()
                                    elif len(pending) >= self.limit:  # a producer that does not wait: batches
                                        self.kick()
                                        await asyncio.sleep(0)  # and the loop runs between them
                                    if self.halted:
                                        raise _Halted
                                elif len(pending) >= self.limit:
                                    await self.has_space()
                        finally:
                            aclose = getattr(iterator, "aclose", None)
                            if aclose is not None:
                                await aclose()
                    elif isinstance(source, Iterable):
                        await pump_in_thread(self, source)
                    else:
                        kind = type(source).__name__
                        raise TypeError(f"a producer must return an async iterable or an iterable, not {kind}")
                except asyncio.CancelledError:
                    if not self.interrupted:  # a cancel of the task itself (shutdown), or the producer raised it
                        cancelling = getattr(self.task, "cancelling", None)  # 3.11+; on 3.10 any cancel is the task's
                        if cancelling is None or cancelling():
                            raise
                    status, message = self.stop_reason or ("cancelled", "the producer was cancelled")
                except _Halted:
                    status, message = self.stop_reason or ("done", "")
                except ProducerError as exc:
                    status, message = "error", str(exc)
                except Exception as exc:
                    status, message = "error", self._failed(exc)
                else:
                    status, message = self.stop_reason or ("done", "")  # a stop reason is only given with a halt
                finally:
                    self.pumping = False
                    uncancel = getattr(self.task, "uncancel", None)  # Python 3.11+
                    if self.interrupted and uncancel is not None:
                        uncancel()  # the cancel was ours: the run goes on to write the end
            return await self.finish(status, message)
        finally:
            self.pending.clear()
            self.streamer.hub.detach(self.tail, producer=True)
            self.producers.forget(self)

    def _failed(self, exc: Exception) -> str:
        """Log a producer's failure; what clients are told of it."""
        extra = {"stream_id": self.stream_id}
        if isinstance(exc, (EventTooLarge, InvalidEventData)):
            said = "an event was too large" if isinstance(exc, EventTooLarge) else "an event was not valid text"
            logger.error("stream %r: %s; it ends with error (clients get %r)", self.stream_id, exc, said, extra=extra)
            return said
        logger.error(
            "producer of stream %r raised; the stream ends with error (clients get the generic message)",
            self.stream_id,
            exc_info=exc,
            extra=extra,
        )
        return self.streamer.error_message

    def _refused(self, exc: EventTooLarge) -> str:
        """Log the store's refusal of an append (an event longer than it takes); what clients are told of it."""
        logger.error(
            "stream %r: the store refused an append: %s; it ends with error",
            self.stream_id,
            exc,
            extra={"stream_id": self.stream_id},
        )
        return str(exc)

    async def finish(self, status: Status, message: str) -> Status:
        """Wait for the append in flight, then end the stream with ``status`` (or report how it ended elsewhere)."""
        try:
            try:
                while self.writing is not None:  # the append in flight (and its retry)
                    await asyncio.wait({self.writing})
                if isinstance(self.failure, EventTooLarge):  # the store refused an append: the end says why
                    status, message = "error", self._refused(self.failure)
                    self.pending.clear()  # (nothing after the refused event is written, as after a raise)
                elif self.failure is not None:
                    raise self.failure
            except StreamFenced:
                self.fenced = True
            if self.fenced:
                return await self._outside_end()
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
            except EventTooLarge as exc:  # the store refused an event of the last appends: the end says why
                self.pending.clear()
                await self.append([("error", terminal_data("error", self._refused(exc)))], final="error")
                return "error"
            return status
        except (StoreUnavailable, StreamNotFound) as exc:
            self.fenced = True
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
            logger.exception(
                "the run of stream %r failed; it stops, and its readers get lost once its lease runs out",
                self.stream_id,
                extra={"stream_id": self.stream_id},
            )
            self.streamer.hub.suspect(self.stream_id)
            return "error"

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
