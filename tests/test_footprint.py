"""What a running stream keeps in memory: nothing it no longer needs (10,000 quiet connections multiply every byte)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import logging
import subprocess
import sys
import textwrap
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


# Run in an interpreter of its own: whether aiohttp's writer class already learned its attribute names depends on
# what the process served before, so only a fresh process shows what a burst of first requests does to it.
_BURST = textwrap.dedent(
    """
    import asyncio, gc, json
    import aiohttp
    from aiohttp import web
    from aiohttp.http_writer import StreamWriter
    from resumable_sse import resumable_handler

    BURST = 60

    async def main():
        arrived = []
        everyone = asyncio.Event()

        async def authorize(request, stream_id):
            # Every response of the burst waits until all its requests exist (as a claim waiting for Redis does).
            arrived.append(stream_id)
            if len(arrived) == BURST:
                everyone.set()
            await everyone.wait()
            return True

        async def quiet(request):
            yield "first"
            await asyncio.sleep(3600)

        app = web.Application()
        app.router.add_get("/stream/{stream_id}", resumable_handler(quiet, authorize=authorize))
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            urls = [f"http://127.0.0.1:{port}/stream/s{i}" for i in range(BURST)]
            responses = await asyncio.gather(*(session.get(url) for url in urls))
            for response in responses:
                assert b"first" in await response.content.readuntil(b"\\n\\n")
            writers = [o for o in gc.get_objects() if type(o) is StreamWriter and o.length is None]
            own_dicts = sum(any(type(r) is dict for r in gc.get_referents(w)) for w in writers)
            print(json.dumps({"writers": len(writers), "own_dicts": own_dicts}))
            for response in responses:
                response.close()
        await runner.cleanup()

    asyncio.run(main())
    """
)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10 keeps every instance's attributes in a dict of its own")
def test_a_burst_of_first_requests_leaves_no_writer_with_a_dict_of_its_own() -> None:
    done = subprocess.run([sys.executable, "-c", _BURST], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    assert counts["writers"] >= 60  # the server's writers of the burst, each holding an open event stream
    assert counts["own_dicts"] == 0


async def test_the_memory_store_keeps_no_object_per_event_for_the_collector_to_count() -> None:
    """A kept event is its strings: appending adds nothing to the collector's count of tracked objects (which starts
    a collection every 700, and with them the full collections that pause the event loop), however many events the
    store keeps. It kept each producer's tuple, which counted until a collection untracked it."""
    store = MemoryStore(max_events=100_000)
    assert (await store.claim("s", "t", 30.0)).acquired
    tokens = [f"token {i}" for i in range(5_000)]
    gc.collect()
    gc.disable()
    try:
        count = gc.get_count()[0]
        for seq, token in enumerate(tokens):
            store.append_at_once("s", "t", [(None, token)], after=seq)  # (the caller's tuple and list are let go)
        grown = gc.get_count()[0] - count
    finally:
        gc.enable()
    await store.append("s", "t", [("note", "x"), (None, "y")], after=5_000)
    page = await store.read("s", 4_998, 10)
    assert page is not None and [(e.seq, e.event, e.data) for e in page.entries] == [
        (4_999, None, "token 4998"),
        (5_000, None, "token 4999"),
        (5_001, "note", "x"),
        (5_002, None, "y"),
    ]
    assert grown < 100, grown  # one a token (5,000) before
