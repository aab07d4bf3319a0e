"""The producer runtime: each stream's producer run once, its events batched into appends.

A :class:`Run` is one task that pulls the user's source (the *pump*) and starts each append itself, without waiting
for it: while one append is in flight the next events queue and go in the next one, and a slow producer's event is
appended in the step that yielded it. A producer that never waits is batched (``limit`` events an append, the loop
run between them) and cannot hold the loop. Rules every run keeps:

* Its life is one state; the moves it may make are listed once, and checked (:mod:`._run_state`).
* It ends its stream exactly once: with its own terminal entry, or by reporting the end written elsewhere.
* A cancel of its task from outside (a shutdown, anyone's ``Task.cancel()``) is never swallowed: it stops the pump at
  once, never cuts a store call short (appends, the terminal entry, the read of an end written elsewhere: each is
  bounded by the store's timeouts and ``store_retry_timeout``), and is re-raised once the stream has its end
  (``cancelled``, unless another end was decided first). Python 3.10 counts no cancels: one that lands while the
  run's own interrupt (INTERRUPTED) is on its way merges with it; the stream gets its end, the task returns it.
* Its outcome is always retrieved (:func:`~._tasks.spawn`): a failure is logged once, with the stream id.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterable, Iterable, Sequence
from typing import Any

from ._event import Status, normalize
from ._feed import pump_in_thread
from ._log import AppendsAtOnce, AppendsThen, NewEvent, StreamState, SubmitsAppends
from ._logger import logger
from ._readers import take_within, terminal_data
from ._receiver import Receiver
from ._run_state import (
    DRAINING,
    ENDED,
    ENDING,
    FENCED,
    HALTING,
    INTERRUPTED,
    OPENING,
    PUMPING,
    STARTING,
    Factory,
    IllegalMove,
    Registry,
    Settings,
    Source,
    State,
    Stop,
    append_refused,
    check_move,
    open_source,
    producer_failed,
)
from ._tasks import spawn
from .exceptions import EventTooLarge, ProducerError, StoreUnavailable, StreamFenced, StreamNotFound

__all__ = ["Factory", "IllegalMove", "Registry", "Run", "Settings", "Source", "State"]


class _Halted(Exception):
    """Raised in the pump's own step where it looks after starting an append: the run is no longer PUMPING."""


class Run:
    """One producer (see the module docstring). The pump puts each event in :attr:`pending`; while PUMPING, with no
    append in flight, it starts one with everything pending (:meth:`kick`) and pulls on while it travels; its
    completion starts the next. Once the pump is over, :meth:`finish` appends what is left, then the end."""

    __slots__ = (
        "at_once",
        "epoch",
        "factory",
        "failure",
        "in_step",
        "last_progress",
        "last_seq",
        "limit",
        "outcome",
        "outside_cancel",
        "pending",
        "producers",
        "receiver",
        "retrying",
        "space",
        "state",
        "stop_reason",
        "stream_id",
        "streamer",
        "submitter",
        "tail",
        "task",
        "then",
        "token",
        "writing",
        "written",
    )

    def __init__(self, producers: Registry, token: str, shape: StreamState, factory: Factory) -> None:
        self.producers = producers
        self.streamer = streamer = producers.streamer
        self.stream_id = shape.stream_id
        self.token = token
        self.epoch = shape.epoch
        self.factory: Factory | None = factory
        self.state = STARTING
        self.pending: list[NewEvent] = []  # yielded, not yet in an append
        self.space: asyncio.Future[None] | None = None  # the pump waits for an append to take what is pending
        self.limit = min(16, streamer.batch_size)  # how far the pump may run ahead of the appends
        self.in_step = False  # an append was started in this turn of the loop: what follows in it is batched
        # The append in flight: its future, its events (sent again by a retry; let go once appended), and whether
        # it is a retry through Streamer.append (which retries an unreachable store itself: never retried again).
        self.writing: asyncio.Future[int] | Receiver | None = None
        self.written: Sequence[NewEvent] = ()
        self.retrying = False
        self.last_seq = 0  # what the log holds of this run; appends name it so that a retry cannot duplicate
        self.last_progress = time.monotonic()
        self.failure: BaseException | None = None  # the store's verdict that appends cannot go on
        self.stop_reason: Stop | None = None
        self.outside_cancel: asyncio.CancelledError | None = None  # re-raised once the run has ended
        self.outcome: Status | None = None  # how the run ended its stream (also when its task ends cancelled)
        # Direct submission (or an append at once) when the store offers it and nothing is observed (an observer
        # times appends, and counts them, through Streamer.append).
        log = streamer.log
        self.submitter = log if streamer.observer is None and isinstance(log, SubmitsAppends) else None
        self.at_once: AppendsAtOnce | None = getattr(log, "append_at_once", None) if self.submitter else None
        self.then: AppendsThen | None = getattr(log, "append_then", None) if self.submitter else None
        self.receiver: Receiver | None = None  # made at the first append through then
        # The run follows its stream, like a reader would, until it ends: an end written by another process (cancel)
        # then stops the producer at once instead of at its next append or lease renewal.
        self.tail = streamer.hub.attach(shape, producer=True)
        self.task: asyncio.Task[Status] = spawn(self.main(), f"resumable-sse producer {self.stream_id}", self.stream_id)

    def move(self, to: State) -> None:
        """Make a move the run's life allows (:data:`~._run_state.MOVES`); any other raises :class:`IllegalMove`."""
        check_move(self.stream_id, self.state, to)
        self.state = to

    @property
    def fenced(self) -> bool:
        """The run no longer vouches for its stream (it ended, or its end is written or taken elsewhere)."""
        stop = self.stop_reason
        return self.state is FENCED or self.state is ENDED or (stop is not None and stop.elsewhere)

    @property
    def ending(self) -> bool:
        """The run's own terminal entry is on its way."""
        return self.state is ENDING

    # -- the pump ---------------------------------------------------------------------------------------------------

    def push_many(self, events: list[NewEvent]) -> None:
        """Queue events normalized elsewhere (a worker thread)."""
        self.pending.extend(events)
        self.kick()

    async def has_space(self) -> None:
        """Wait until the pending events have been taken by an append (backpressure on a fast producer)."""
        if self.state is not PUMPING:
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
        """While PUMPING, append what is pending unless an append is in flight (its completion calls this again)."""
        while self.pending and self.writing is None and self.state is PUMPING:
            batch = self.take()
            # Start small so the first events go out at once, then grow to batch_size for throughput.
            self.limit = min(self.limit * 2, self.streamer.batch_size)
            space = self.space
            if space is not None and not space.done():
                space.set_result(None)
            if self.at_once is not None:  # applied now: no future per append, 1 to 2.5 us a token less (memory store)
                self.retrying = False
                try:
                    last_seq = self.at_once(self.stream_id, self.token, batch, after=self.last_seq)
                except Exception as exc:
                    self.written = batch
                    self.refused(exc)
                else:
                    self.progressed(last_seq)
                continue
            if self.then is not None:  # settled in the store's own step, see _receiver.py
                receiver = self.receiver
                if receiver is None:
                    receiver = self.receiver = Receiver(self.stream_id, self.received, self.not_received)
                self.then(self.stream_id, self.token, batch, after=self.last_seq, outcome=receiver.start())
                self.writing, self.written, self.retrying = receiver, batch, False  # (then never settles at once)
                return
            if self.submitter is not None:
                future = self.submitter.submit_append(self.stream_id, self.token, batch, after=self.last_seq)
            else:
                future = self.append_in_task(batch)
            self.writing, self.written, self.retrying = future, batch, self.submitter is None
            if not future.done():
                future.add_done_callback(self.appended)
                return
            self.settle(future)  # appended synchronously: go on with what is pending

    def append_in_task(self, events: Sequence[NewEvent], final: Status | None = None) -> asyncio.Future[int]:
        """:meth:`Streamer.append` of ``events`` after :attr:`last_seq` (retried, observed) in a task of its own."""
        append = self.streamer.append(self.stream_id, self.token, events, self.last_seq, final=final)
        return asyncio.ensure_future(append)

    def appended(self, future: asyncio.Future[int]) -> None:
        """The append in flight completed (a done callback)."""
        self.settle(future)
        self.kick()

    def received(self, last_seq: int) -> None:
        """The append in flight through :attr:`then` was applied (in the store's step)."""
        self.writing = None
        self.progressed(last_seq)
        self.kick()

    def not_received(self, error: BaseException) -> None:
        """The append in flight through :attr:`then` failed (in the store's step)."""
        self.writing = None
        self.refused(error)
        self.kick()

    def settle(self, future: asyncio.Future[int]) -> None:
        """Take an append's outcome: progress, a retry (an unreachable store), or the end of this run's appends."""
        self.writing = None
        if future.cancelled():
            self.fail(StoreUnavailable("the append was cancelled (the event loop is shutting down)"))
            return
        error = future.exception()
        if error is None:
            self.progressed(future.result())
        else:
            self.refused(error)

    def progressed(self, last_seq: int) -> None:
        """An append was applied: the log holds this run's events up to ``last_seq``."""
        self.written = ()  # (a quiet stream would hold its last batch for as long as it runs)
        self.last_seq = last_seq
        self.last_progress = time.monotonic()

    def refused(self, error: BaseException) -> None:
        """An append failed: retried through the Streamer if the store was unreachable, else no more appends."""
        if isinstance(error, StoreUnavailable) and not self.retrying:
            # Retried with backoff, up to store_retry_timeout, by Streamer.append: idempotent, it names the sequence
            # number it follows.
            retry = self.append_in_task(self.written)
            self.writing, self.retrying = retry, True
            retry.add_done_callback(self.appended)
            return
        self.fail(error)

    def fail(self, error: BaseException) -> None:
        """The store refused an append: no more appends; the first verdict is the one :meth:`finish` acts on."""
        if self.failure is None:
            self.failure = error
        self.halt()

    def take(self) -> list[NewEvent]:
        """The pending events that go in the next append (:func:`~._readers.take_within` ``max_batch_bytes``)."""
        return take_within(self.pending, self.streamer.max_batch_bytes)

    # -- stopping ---------------------------------------------------------------------------------------------------

    def stop(self, status: Status, message: str) -> None:
        """Stop the pump; the stream is ended with ``status`` unless another end was asked for first or written
        elsewhere. Once the pump is over this changes nothing: the end is decided."""
        if self.stop_reason is None:
            self.stop_reason = Stop(status, message, elsewhere=False)
        self.halt()

    def fence(self, status: Status, message: str) -> None:
        """The stream was ended (or taken) elsewhere: stop, and write nothing (heard up to DRAINING; once the run's
        own end is on its way, the store settles which end holds)."""
        stop = self.stop_reason
        self.stop_reason = Stop(status, message, True) if stop is None else stop._replace(elsewhere=True)
        self.halt()

    def asked(self, status: Status, message: str) -> tuple[Status, str]:
        """The end a stop asked for, else ``status`` and ``message``."""
        stop = self.stop_reason
        return (status, message) if stop is None else (stop.status, stop.message)

    def halt(self) -> None:
        """Stop the pump: within its own step by a move it sees where it looks (HALTING); from outside it by a cancel
        of the task (INTERRUPTED), which the run takes back when the pump is over. Later states have no pump."""
        state = self.state
        if state is PUMPING or state is OPENING:
            if asyncio.current_task() is self.task:
                self.move(HALTING)
            else:
                self.move(INTERRUPTED)
                self.task.cancel()
        elif state is STARTING:
            self.move(HALTING)  # the task sees it when it starts, and pulls nothing

    # -- the run ----------------------------------------------------------------------------------------------------

    async def open(self) -> object:
        """Call the factory, once (:func:`~._run_state.open_source`): the run lets go of it (and of what it binds: the
        request that claimed the stream) rather than hold it for as long as it runs; the source holds what it needs."""
        factory, self.factory = self.factory, None
        if factory is None:
            raise RuntimeError("a producer run opens its source once")
        return await open_source(factory, self.stream_id)

    async def main(self) -> Status:
        """The run's task: pull the source, settle the end (:meth:`finish`), then re-raise a cancel from outside.

        The pump runs in this frame, not a coroutine of its own: one frame less per running stream (fleet.py --idle).
        """
        try:
            try:
                if self.state is not STARTING:
                    raise _Halted  # stopped before it started (a shutdown right after the claim)
                self.move(OPENING)
                source = await self.open()
                if self.state is not OPENING:
                    raise _Halted  # the factory's own code ended the stream
                self.move(PUMPING)
                if isinstance(source, AsyncIterable):
                    iterator = aiter(source)
                    try:
                        # The hot loop: a plain ASCII token skips normalize() (single_stream.py); the rest is checked.
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
                                if self.state is not PUMPING:
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
            except asyncio.CancelledError as exc:
                self.outside_cancel = exc  # kept only if it came from outside (_pump_over)
                status, message = self.asked("cancelled", "the producer was cancelled")
            except _Halted:
                status, message = self.asked("done", "")  # (no stop asked: a store verdict, see finish)
            except ProducerError as exc:
                status, message = "error", str(exc)
            except Exception as exc:
                status, message = "error", producer_failed(self.stream_id, exc, self.streamer.error_message)
            else:
                status, message = self.asked("done", "")
            finally:
                self._pump_over()
            self.outcome = status = await self.finish(status, message)
        finally:
            self.pending.clear()
            self.streamer.hub.detach(self.tail, producer=True)
            self.producers.forget(self)
            if self.state is not ENDED:
                self.move(ENDED)
        cancel, self.outside_cancel = self.outside_cancel, None  # (not kept: its traceback holds this frame)
        if cancel is not None:
            raise cancel
        return status

    def _pump_over(self) -> None:
        """The pump is over: take back the run's own interrupt, keep a cancel from outside for :meth:`main` to
        re-raise, and move to DRAINING."""
        if sys.version_info >= (3, 11):
            task = self.task
            if self.state is INTERRUPTED:
                task.uncancel()
            if not task.cancelling():
                self.outside_cancel = None  # the run's own interrupt, or a CancelledError the producer raised itself
            elif self.outside_cancel is None:
                self.outside_cancel = asyncio.CancelledError()  # one the producer caught and let go: still re-raised
        elif self.state is INTERRUPTED:
            self.outside_cancel = None  # 3.10 counts no cancels: one landing with it is not told apart
        self.move(DRAINING)

    async def _outlast(self, future: asyncio.Future[Any]) -> None:
        """Wait until ``future`` (a store call) is done and its callbacks ran (:meth:`appended` comes first: always
        wait, even for a done future). A cancel from outside is kept for :meth:`main` to re-raise: it never cuts a
        store call short (the store would be left not knowing whether the call was applied)."""
        while True:
            try:
                await asyncio.wait((future,))
            except asyncio.CancelledError as exc:
                self.outside_cancel = self.outside_cancel or exc
            else:
                return

    async def _settled(self) -> None:
        """Wait until no append is in flight (nor the retry that follows an unreachable store's refusal)."""
        while (writing := self.writing) is not None:
            await self._outlast(writing.wait() if isinstance(writing, Receiver) else writing)

    async def finish(self, status: Status, message: str) -> Status:
        """Settle the append in flight, then append what is pending with the terminal entry ``status`` last; return
        how the stream ended (also when it ended elsewhere, or the store's verdict ended it)."""
        try:
            while True:
                await self._settled()
                failure, stop = self.failure, self.stop_reason
                draining = self.state is DRAINING
                if isinstance(failure, StreamFenced) or (draining and stop is not None and stop.elsewhere):
                    return await self._outside_end()
                if isinstance(failure, EventTooLarge):  # the store refused an append for its size: the end says why
                    self.failure = None
                    self.pending.clear()  # (nothing after the refused event is written, as after a raise)
                    status, message = "error", append_refused(self.stream_id, failure)
                    if not draining:  # one of the final appends was refused: the end alone
                        self.pending.append((status, terminal_data(status, message)))
                elif failure is not None:
                    raise failure
                if draining:
                    self.move(ENDING)
                    self.pending.append((status, terminal_data(status, message)))
                elif not self.pending:
                    return status
                # What is pending, in appends of at most max_batch_bytes; the last holds the terminal entry.
                batch = self.take()
                self.writing = future = self.append_in_task(batch, None if self.pending else status)
                self.written, self.retrying = batch, True
                future.add_done_callback(self.appended)
        except (StoreUnavailable, StreamNotFound) as exc:
            logger.error(
                "stream %r: %s; its producer stops and readers are told it is lost",
                self.stream_id,
                "the store stayed unreachable" if isinstance(exc, StoreUnavailable) else "the store lost it",
                extra={"stream_id": self.stream_id},
            )
            self.streamer.hub.suspect(self.stream_id)
            return "lost"
        except Exception:
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
        self.move(FENCED)
        store, stream_id = self.streamer.log, self.stream_id
        reading = asyncio.ensure_future(store.state(stream_id))
        await self._outlast(reading)
        try:
            state = reading.result()
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
                abandoning = asyncio.ensure_future(store.abandon(stream_id, self.token, data))
                await self._outlast(abandoning)
                with contextlib.suppress(StoreUnavailable):  # else declared lost by an audit after the lease
                    abandoning.result()
        extra = {"stream_id": stream_id}
        logger.error(
            "stream %r: %s; its producer stops and the stream ends lost (readers get lost)", stream_id, why, extra=extra
        )
        self.streamer.hub.suspect(stream_id)
        return "lost"
