"""What a running stream keeps in memory: nothing it no longer needs (10,000 quiet connections multiply every byte)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import weakref
from collections.abc import AsyncIterator

import pytest

from resumable_sse import MemoryStore, Streamer
from resumable_sse._tasks import spawn

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class Factory:
    """A producer factory that tests can hold a weak reference to (it stands for the request a factory binds)."""

    def __init__(self, started: asyncio.Event) -> None:
        self.started = started

    def __call__(self) -> AsyncIterator[str]:
        return self.quiet(self.started)

    @staticmethod
    async def quiet(started: asyncio.Event) -> AsyncIterator[str]:
        yield "first"
        started.set()
        await asyncio.sleep(3600)
        yield "never"


async def test_a_running_producer_lets_go_of_its_factory() -> None:
    streamer = Streamer(MemoryStore(), grace_period=0)
    started = asyncio.Event()
    factory = Factory(started)
    held = weakref.ref(factory)
    producer = await streamer.start("s1", factory)
    assert producer is not None
    del factory
    try:
        await asyncio.wait_for(started.wait(), 5)
        gc.collect()
        assert held() is None, gc.get_referrers(held())
    finally:
        await streamer.close()


async def test_a_background_task_runs_in_its_callers_context_and_its_failure_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []

    class RequestIdFilter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(REQUEST_ID.get())  # a user's log filter reads the context the failure is logged in
            return True

    async def fails() -> None:
        seen.append(REQUEST_ID.get())
        raise ValueError("boom")

    async def quiet() -> None:
        await asyncio.sleep(0)

    token = REQUEST_ID.set("r1")
    logger = logging.getLogger("resumable_sse")
    log_filter = RequestIdFilter()
    logger.addFilter(log_filter)
    try:
        with caplog.at_level(logging.ERROR, logger="resumable_sse"):
            failing = spawn(fails(), "resumable-sse producer s1", "s1")
            ok = spawn(quiet(), "resumable-sse leases")
            REQUEST_ID.set("changed after")  # the tasks copied the context when they started
            await asyncio.gather(failing, ok, return_exceptions=True)
            await asyncio.sleep(0)  # done callbacks run a step later
    finally:
        logger.removeFilter(log_filter)
        REQUEST_ID.reset(token)
    assert seen == ["r1", "r1"]
    failures = [r for r in caplog.records if r.getMessage() == "resumable-sse producer s1 failed"]
    assert len(failures) == 1 and getattr(failures[0], "stream_id", None) == "s1"
    assert failures[0].exc_info is not None and isinstance(failures[0].exc_info[1], ValueError)
    assert len(caplog.records) == 1
