"""A producer run's life as one state (resumable_sse._run_state), and a cancel of its task from outside landing in
each state: the stream still gets exactly one end, with every event yielded before it once, the task ends cancelled
(a cancel is never swallowed), and nothing is logged twice."""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import pytest

from resumable_sse import EventLog, MemoryStore, Observer, Streamer
from resumable_sse import _run_state as S
from resumable_sse._event import Status
from resumable_sse._log import NewEvent, StreamState
from resumable_sse._producer import Factory, Run
from resumable_sse._producers import Producer
from resumable_sse._run_state import MOVES, STATES, IllegalMove, State, check_move
from resumable_sse.exceptions import StoreUnavailable

from .helpers import read_entries, until

COUNTS_CANCELS = sys.version_info >= (3, 11)  # Task.cancelling()/uncancel(): 3.10 cannot tell two cancels apart


# -- the moves --------------------------------------------------------------------------------------------------------


def test_only_the_listed_moves_are_allowed() -> None:
    for state in STATES:
        for to in STATES:
            legal = to in MOVES[state] or (to is S.ENDED and state is not S.ENDED)
            if legal:
                check_move("s", state, to)
            else:
                with pytest.raises(IllegalMove, match=f"{state.name} -> {to.name}"):
                    check_move("s", state, to)
    # Never back into the pump once it is over; never a write after the end was found elsewhere.
    for state in (S.DRAINING, S.ENDING, S.FENCED, S.ENDED):
        assert not MOVES[state] & {S.OPENING, S.PUMPING, S.INTERRUPTED, S.HALTING}
    assert S.ENDING not in MOVES[S.FENCED]


@pytest.fixture
def moves(monkeypatch: pytest.MonkeyPatch) -> list[tuple[State, State]]:
    """Every move of every run in the test, in order."""
    made: list[tuple[State, State]] = []
    move = Run.move

    def record(run: Run, to: State) -> None:
        made.append((run.state, to))
        move(run, to)

    monkeypatch.setattr(Run, "move", record)
    return made


async def test_the_life_of_a_stream_that_ends_done(moves: list[tuple[State, State]]) -> None:
    streamer = Streamer(MemoryStore())

    async def produce() -> AsyncIterator[str]:
        yield "a"

    producer = await streamer.start("s", produce)
    assert producer is not None and await producer.wait() == "done"
    path = [S.STARTING, S.OPENING, S.PUMPING, S.DRAINING, S.ENDING, S.ENDED]
    assert moves == list(itertools.pairwise(path))
    await streamer.close()


async def test_the_life_of_a_stream_cancelled_elsewhere(moves: list[tuple[State, State]]) -> None:
    streamer = Streamer(MemoryStore())
    waiting = asyncio.Event()

    async def produce() -> AsyncIterator[str]:
        yield "a"
        waiting.set()
        await asyncio.Event().wait()
        yield "never"

    producer = await streamer.start("s", produce)
    assert producer is not None
    await waiting.wait()
    assert await streamer.cancel("s")
    assert await producer.wait() == "cancelled"
    path = [S.STARTING, S.OPENING, S.PUMPING, S.INTERRUPTED, S.DRAINING, S.FENCED, S.ENDED]
    assert moves == list(itertools.pairwise(path))
    await streamer.close()


# -- helpers for the cancels ------------------------------------------------------------------------------------------


def run_of(streamer: Streamer, stream_id: str = "s") -> Run:
    runs = streamer.producers.of(stream_id)
    assert len(runs) == 1
    return runs[0]


async def started(streamer: Streamer, produce: Factory, appended: int = 0) -> tuple[Producer, Run]:
    """``produce`` started on stream "s", and its run, once ``appended`` events are in the store."""
    producer = await streamer.start("s", produce)
    assert producer is not None
    run = run_of(streamer)
    await until(lambda: run.last_seq == appended, f"{appended} events appended")
    return producer, run


async def one_then_wait() -> AsyncIterator[str]:
    yield "a"
    await asyncio.Event().wait()


async def cancelled_from_outside(run: Run, *, held: asyncio.Event | None = None) -> None:
    """Cancel the run's task as anyone else would; with ``held`` (a store call the run waits for), check that the
    cancel did not cut it short, then let it go on. The task must end cancelled."""
    run.task.cancel()
    if held is not None:
        await asyncio.sleep(0.05)
        assert not run.task.done(), "the cancel cut a store call short"
        held.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(run.task), 10)
    assert run.task.cancelled()
    assert run.state is S.ENDED


async def assert_stream(store: EventLog, data: Sequence[str], terminal: Status) -> None:
    """The stream holds ``data`` once each, in order, then exactly one terminal entry ``terminal``."""
    entries = await read_entries(store, "s", 0, 100)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert [(e.event, e.data) for e in entries[:-1]] == [(None, d) for d in data]
    assert entries[-1].event == terminal
    state = await store.state("s")
    assert state is not None and state.status == terminal and state.last_seq == len(data) + 1


def assert_logged_once(caplog: pytest.LogCaptureFixture, errors: int = 0) -> None:
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "resumable_sse"]
    assert len(records) == len(set(records)), records
    assert len([level for level, _ in records if level == "ERROR"]) == errors, records


def really_append(store: EventLog) -> Callable[..., Awaitable[int]]:
    """The store's own append, whatever is later patched over its methods (RedisStore.append submits)."""
    submit = getattr(store, "submit_append", None)
    if submit is None:
        return store.append

    async def append(*args: Any, **kwargs: Any) -> int:
        return await submit(*args, **kwargs)

    return append


def hold_appends(
    store: EventLog, monkeypatch: pytest.MonkeyPatch, *, final: bool = False
) -> tuple[asyncio.Event, list[bool]]:
    """Hold the store's appends (``final``: only those that end the stream) until the returned event is set; the
    store makes each of them when it is. The list records each held append's start (its ``final``)."""
    gate = asyncio.Event()
    started: list[bool] = []
    append = really_append(store)
    pending: set[asyncio.Task[int]] = set()

    async def held(
        stream_id: str, token: str, events: Sequence[NewEvent], *, after: int, final: Status | None = None
    ) -> int:
        started.append(final is not None)
        await gate.wait()
        return await append(stream_id, token, events, after=after, final=final)

    async def held_final(
        stream_id: str, token: str, events: Sequence[NewEvent], *, after: int, final: Status | None = None
    ) -> int:
        if final is None:
            return await append(stream_id, token, events, after=after, final=final)
        return await held(stream_id, token, events, after=after, final=final)

    def submit(
        stream_id: str, token: str, events: Sequence[NewEvent], *, after: int, final: Status | None = None
    ) -> asyncio.Future[int]:
        task = asyncio.ensure_future(held(stream_id, token, events, after=after, final=final))
        pending.add(task)
        task.add_done_callback(pending.discard)
        return task

    monkeypatch.setattr(store, "append", held_final if final else held)
    if not final:
        monkeypatch.setattr(store, "submit_append", submit)
        through_submit_append(store, monkeypatch)
    return gate, started


def through_submit_append(store: EventLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the producer's run append through submit_append (patched by the test) and wait on its futures, where it
    would take the store's own faster ways (the memory store's append_at_once, the Redis store's append_then)."""
    for way in ("append_at_once", "append_then"):
        if hasattr(store, way):
            monkeypatch.setattr(store, way, None)


# -- a cancel from outside in each state ------------------------------------------------------------------------------


@pytest.mark.parametrize("factory_kind", ["async function", "plain function in a thread"])
async def test_a_cancel_while_opening_the_source(
    store: EventLog, factory_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    streamer = Streamer(store)
    opening = threading.Event()
    release = threading.Event()

    def events() -> Iterator[str]:
        yield "never"

    async def async_factory() -> Iterator[str]:
        opening.set()
        await asyncio.Event().wait()
        return events()

    def plain_factory() -> Iterator[str]:
        opening.set()
        release.wait(10)
        return events()

    producer = await streamer.start("s", async_factory if factory_kind == "async function" else plain_factory)
    assert producer is not None
    run = run_of(streamer)
    await until(opening.is_set, "the factory")
    assert run.state is S.OPENING
    await cancelled_from_outside(run)
    release.set()
    await assert_stream(store, [], "cancelled")
    assert run.outcome == "cancelled"
    assert_logged_once(caplog)
    await streamer.close()


async def test_a_cancel_while_pumping_an_async_producer(store: EventLog, caplog: pytest.LogCaptureFixture) -> None:
    streamer = Streamer(store)
    closed: list[str] = []

    async def produce() -> AsyncIterator[str]:
        try:
            yield "a"
            yield "b"
            await asyncio.Event().wait()
            yield "never"
        finally:
            closed.append("closed")

    _, run = await started(streamer, produce, 2)
    assert run.state is S.PUMPING
    await cancelled_from_outside(run)
    assert closed == ["closed"]
    await assert_stream(store, ["a", "b"], "cancelled")
    assert_logged_once(caplog)
    await streamer.close()


async def test_a_cancel_while_pumping_a_sync_producer_in_a_thread(
    store: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    streamer = Streamer(store)
    release = threading.Event()
    pulled: list[str] = []

    def produce() -> Iterator[str]:
        for data in ("a", "b"):
            pulled.append(data)
            yield data
        release.wait(10)
        pulled.append("after")
        yield "refused"

    _, run = await started(streamer, produce, 2)
    assert run.state is S.PUMPING
    await cancelled_from_outside(run)
    release.set()
    await until(lambda: pulled[-1:] == ["after"], "the thread to go on")
    await asyncio.sleep(0.05)
    await assert_stream(store, ["a", "b"], "cancelled")  # the thread's next event was refused
    assert_logged_once(caplog)
    await streamer.close()


@pytest.mark.parametrize("pump", ["pumping", "draining"])
async def test_a_cancel_while_an_append_is_in_flight(
    store: EventLog, pump: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The append in flight is not cut short: the run waits for it, then appends what is pending and the end."""
    gate, started = hold_appends(store, monkeypatch)
    streamer = Streamer(store)

    async def produce() -> AsyncIterator[str]:
        yield "a"
        yield "b"
        if pump == "pumping":
            await asyncio.Event().wait()

    producer = await streamer.start("s", produce)
    assert producer is not None
    run = run_of(streamer)
    want = S.PUMPING if pump == "pumping" else S.DRAINING
    await until(lambda: run.state is want and started == [False], f"{pump} with an append held")
    assert run.writing is not None and run.pending == [(None, "b")]
    await cancelled_from_outside(run, held=gate)
    status: Status = "cancelled" if pump == "pumping" else "done"  # draining: the producer had returned
    await assert_stream(store, ["a", "b"], status)
    assert run.outcome == status
    assert_logged_once(caplog)
    await streamer.close()


async def test_a_cancel_while_an_unreachable_store_is_retried(
    store: EventLog, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The retry goes on (bounded by store_retry_timeout); once the store answers, the events and the end are in."""
    down = True
    attempts: list[int] = []
    append = really_append(store)

    async def unreachable(
        stream_id: str, token: str, events: Sequence[NewEvent], *, after: int, final: Status | None = None
    ) -> int:
        attempts.append(after)
        if down:
            raise StoreUnavailable("connection refused")
        return await append(stream_id, token, events, after=after, final=final)

    def submit(
        stream_id: str, token: str, events: Sequence[NewEvent], *, after: int, final: Status | None = None
    ) -> asyncio.Future[int]:
        return asyncio.ensure_future(unreachable(stream_id, token, events, after=after, final=final))

    monkeypatch.setattr(store, "append", unreachable)
    monkeypatch.setattr(store, "submit_append", submit)
    through_submit_append(store, monkeypatch)
    streamer = Streamer(store, store_retry_timeout=10)

    async def produce() -> AsyncIterator[str]:
        yield "a"
        yield "b"
        await asyncio.Event().wait()

    producer = await streamer.start("s", produce)
    assert producer is not None
    run = run_of(streamer)
    await until(lambda: run.retrying and len(attempts) >= 3, "the retry of an unreachable store")
    assert run.state is S.PUMPING and run.writing is not None
    run.task.cancel()
    await asyncio.sleep(0.1)
    assert not run.task.done(), "the cancel cut the retry short"
    down = False
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(run.task), 10)
    assert run.task.cancelled()
    await assert_stream(store, ["a", "b"], "cancelled")
    assert [r.levelname for r in caplog.records if r.name == "resumable_sse"].count("ERROR") == 0
    await streamer.close()


class Ends(Observer):
    def __init__(self) -> None:
        self.ended: list[tuple[str, Status]] = []

    def stream_ended(self, stream_id: str, status: Status) -> None:
        self.ended.append((stream_id, status))


@pytest.mark.parametrize("observed", [False, True], ids=["direct appends", "observed appends"])
async def test_a_cancel_while_the_terminal_entry_is_written(
    store: EventLog, observed: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The end was decided (``done``) and is on its way: it is written as decided, the task ends cancelled, and the
    observer is told the end the stream got."""
    gate, started = hold_appends(store, monkeypatch, final=True)
    observer = Ends() if observed else None
    streamer = Streamer(store, observer=observer)

    async def produce() -> AsyncIterator[str]:
        yield "a"
        yield "b"

    producer = await streamer.start("s", produce)
    assert producer is not None
    run = run_of(streamer)
    await until(lambda: run.state is S.ENDING and started == [True], "the terminal entry held")
    await cancelled_from_outside(run, held=gate)
    await assert_stream(store, ["a", "b"], "done")
    assert run.outcome == "done"
    with pytest.raises(asyncio.CancelledError):
        await producer.wait()
    if observer is not None:
        assert observer.ended == [("s", "done")]
    assert_logged_once(caplog)
    await streamer.close()


async def test_a_cancel_while_reading_an_end_written_elsewhere(
    store: EventLog, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    streamer = Streamer(store)
    gate = asyncio.Event()
    reading: list[str] = []
    state = store.state

    async def held_state(stream_id: str) -> StreamState | None:
        reading.append(stream_id)
        await gate.wait()
        return await state(stream_id)

    _, run = await started(streamer, one_then_wait, 1)
    monkeypatch.setattr(store, "state", held_state)
    assert await streamer.cancel("s")  # another process would do the same through the store
    await until(lambda: run.state is S.FENCED and reading == ["s"], "the read of the end")
    await cancelled_from_outside(run, held=gate)
    monkeypatch.undo()
    await assert_stream(store, ["a"], "cancelled")
    assert run.outcome == "cancelled"
    assert_logged_once(caplog)
    await streamer.close()


async def test_a_cancel_while_the_pump_unwinds_a_stop_from_its_own_step(caplog: pytest.LogCaptureFixture) -> None:
    """HALTING: the producer itself ended the stream, and the memory store told of it in the run's own step (Redis
    tells later, through pub/sub: a stop from outside the step, INTERRUPTED); the cancel lands in its cleanup."""
    store = MemoryStore()
    streamer = Streamer(store)
    cleaning = asyncio.Event()

    async def produce() -> AsyncIterator[str]:
        try:
            yield "a"
            await store.end("s", "cancelled", '{"state":"cancelled"}')
            yield "b"
        finally:
            cleaning.set()
            await asyncio.Event().wait()

    producer = await streamer.start("s", produce)
    assert producer is not None
    run = run_of(streamer)
    await until(cleaning.is_set, "the producer's cleanup")
    assert run.state is S.HALTING
    await cancelled_from_outside(run)
    await assert_stream(store, ["a"], "cancelled")
    assert_logged_once(caplog)
    await streamer.close()


async def test_a_cancel_landing_with_the_runs_own_interrupt(caplog: pytest.LogCaptureFixture) -> None:
    """A shutdown stops the run (its own interrupt, a cancel of its task) and, in the same step, cancels the task
    (asyncio.run does so): 3.11+ counts the two cancels and re-raises the second. 3.10 cannot tell them apart: the
    stream gets its end all the same, and the task returns it."""
    store = MemoryStore()
    streamer = Streamer(store)
    producer, run = await started(streamer, one_then_wait, 1)
    run.stop("cancelled", "server shutdown")
    assert run.state is S.INTERRUPTED
    run.task.cancel()
    if COUNTS_CANCELS:
        await cancelled_from_outside(run)
    else:
        assert await producer.wait() == "cancelled"
    entries = await read_entries(store, "s")
    assert [(e.event, e.data) for e in entries] == [(None, "a"), ("cancelled", entries[-1].data)]
    assert "server shutdown" in entries[-1].data
    assert_logged_once(caplog)
    await streamer.close()


async def test_a_cancel_the_producer_catches_is_re_raised_all_the_same() -> None:
    """3.11+: a producer that catches the cancel and returns does not swallow it for the run. (3.10 counts no
    cancels: the producer's return ends the stream ``done``.)"""
    store = MemoryStore()
    streamer = Streamer(store)

    async def produce() -> AsyncIterator[str]:
        yield "a"
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return

    producer, run = await started(streamer, produce, 1)
    if COUNTS_CANCELS:
        await cancelled_from_outside(run)
    else:
        run.task.cancel()
        assert await producer.wait() == "done"
    await assert_stream(store, ["a"], "done")
    await streamer.close()


async def test_a_cancel_before_the_task_ran(store: EventLog) -> None:
    """Cancelled before its first step, the run's coroutine never runs: no end is written (its readers get lost once
    its lease runs out), and the registry and the hub let go of it."""
    streamer = Streamer(store)
    opened: list[bool] = []

    async def produce() -> AsyncIterator[str]:
        opened.append(True)
        yield "never"

    producer = await streamer.start("s", produce)
    assert producer is not None
    run = run_of(streamer)
    assert run.state is S.STARTING
    run.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await producer.wait()
    assert not opened
    state = await store.state("s")
    assert state is not None and state.status == "running" and state.last_seq == 0
    await streamer.close()
    assert run.state is S.ENDED and len(streamer.producers) == 0
    assert "s" not in streamer.hub.tails


async def test_the_run_waits_for_the_callback_of_an_append_that_completed_in_its_last_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An append's outcome is taken by its done callback, which runs a step after the append completed: the run that
    ends in that very step (a group commit completing as the producer returns) waits for it, rather than spin."""
    store = MemoryStore()
    submit = store.submit_append
    submitted: list[tuple[asyncio.Future[int], tuple[Any, ...], dict[str, Any]]] = []

    def later(*args: Any, **kwargs: Any) -> asyncio.Future[int]:
        future = asyncio.get_running_loop().create_future()
        submitted.append((future, args, kwargs))
        return future

    monkeypatch.setattr(store, "submit_append", later)
    through_submit_append(store, monkeypatch)
    streamer = Streamer(store)

    async def produce() -> AsyncIterator[str]:
        yield "a"
        future, args, kwargs = submitted[0]
        future.set_result(submit(*args, **kwargs).result())  # done; the run's callback is still to run

    producer = await streamer.start("s", produce)
    assert producer is not None
    assert await asyncio.wait_for(producer.wait(), 5) == "done"
    await assert_stream(store, ["a"], "done")
    await streamer.close()
