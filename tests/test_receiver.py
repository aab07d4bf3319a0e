"""A producer run's receiver of its append's outcome on a store that replies later (the Redis store's append_then):
taken in the store's step, once, never raising into it, and awaitable only when somebody waits."""

from __future__ import annotations

import asyncio
import logging

import pytest

from resumable_sse import StreamFenced
from resumable_sse._receiver import Receiver


async def test_an_outcome_is_taken_once_in_the_step_that_settles_it() -> None:
    results: list[int] = []
    errors: list[BaseException] = []
    receiver = Receiver("s", results.append, errors.append)
    assert receiver.done()  # nothing in flight yet
    assert receiver.start() is receiver and not receiver.done()
    receiver.set_result(3)
    assert results == [3] and receiver.done()  # at once, not a step later
    receiver.set_result(4)  # a second word on the same append is ignored, as a done future's would be refused
    receiver.set_exception(StreamFenced("s"))
    assert results == [3] and errors == []
    receiver.start()
    fenced = StreamFenced("s")
    receiver.set_exception(fenced)
    assert errors == [fenced] and results == [3]


async def test_waiting_makes_a_future_only_then_and_it_is_done_after_the_outcome_was_taken() -> None:
    taken: list[int] = []
    receiver = Receiver("s", taken.append, lambda _error: None)
    receiver.start()
    waiter = receiver.wait()
    assert receiver.wait() is waiter and not waiter.done()
    receiver.set_result(7)
    assert waiter.done() and taken == [7]
    assert receiver.waiter is None
    settled = receiver.wait()  # nothing in flight: done at once
    assert settled.done()
    await asyncio.wait_for(settled, 1)


async def test_a_failure_taking_an_outcome_is_logged_and_never_reaches_the_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store settles a whole group in a row: one run's failure must not leave the others unsettled."""
    errors: list[BaseException] = []

    def broken(_seq: int) -> None:
        raise RuntimeError("a bug in the runtime")

    first = Receiver("s1", broken, errors.append)
    second_results: list[int] = []
    second = Receiver("s2", second_results.append, errors.append)
    waiter = first.start().wait()
    second.start()
    with caplog.at_level(logging.ERROR, logger="resumable_sse"):
        for receiver, seq in ((first, 1), (second, 2)):  # as the store's group commit settles them
            receiver.set_result(seq)
    assert second_results == [2] and waiter.done()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)  # the run stops appending
    records = [r for r in caplog.records if r.name == "resumable_sse" and r.levelno == logging.ERROR]
    assert len(records) == 1 and getattr(records[0], "stream_id", None) == "s1"

    def raising(_error: BaseException) -> None:
        raise RuntimeError("again")

    third = Receiver("s3", lambda _seq: None, raising)
    third.start().set_exception(StreamFenced("s3"))  # logged, not raised
    assert third.done()
