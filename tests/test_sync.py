"""SyncStreamer, the facade for blocking producers, and plain generators given to resumable_handler.

Readers are real HTTP clients (aiohttp's test client on a loopback socket); what they receive is checked event by
event: every event once, in each stream's order, ids without gaps, one terminal event.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeAlias, TypeVar

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from resumable_sse import (
    EventLoopError,
    EventTooLarge,
    MemoryStore,
    Producer,
    ProducerError,
    Streamer,
    StreamerClosed,
    StreamFenced,
    SyncStreamer,
    resumable_handler,
    setup,
)
from resumable_sse._feed import call_in_thread
from resumable_sse._portal import LoopThread, call_in_loop
from resumable_sse.exceptions import InvalidStreamId, StreamAlreadyClaimed

from .conftest import StoreFactory
from .helpers import SSE, parse

# a string: TestClient is generic only from aiohttp 3.11 (the lowest env runs an older one)
Client: TypeAlias = "TestClient[web.Request, web.Application]"
ClientFactory = Callable[[web.Application], Awaitable[Client]]

T = TypeVar("T")

PRODUCER_THREAD = "resumable-sse"  # every thread the library starts has a name beginning with this


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    """Every thread the library started during a test has ended shortly after it (no leaks)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    for thread in set(threading.enumerate()) - before:
        if thread.name.startswith(PRODUCER_THREAD):
            thread.join(max(0.0, deadline - time.monotonic()))
            assert not thread.is_alive(), f"thread {thread.name!r} is still running after the test"


# -- helpers ------------------------------------------------------------------------------------------------------


def not_claimed(_request: web.Request) -> AsyncIterator[str]:
    """The handler's producer in tests where SyncStreamer claims every stream: the handler must never run it."""
    raise AssertionError("the handler started a producer for a stream SyncStreamer should have claimed")


async def serve(
    aiohttp_client: ClientFactory, streamer: Streamer, producer: Any = not_claimed, **options: Any
) -> Client:
    app = web.Application()
    setup(app, streamer)
    app.router.add_get("/stream/{stream_id}", resumable_handler(producer, **options))
    return await aiohttp_client(app)


async def read_all(client: Client, stream_id: str, last_event_id: str | None = None) -> list[SSE]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    response = await client.get(f"/stream/{stream_id}", headers=headers)
    assert response.status == 200
    return parse(await response.read())


async def read_event(response: ClientResponse) -> SSE:
    """The next event (not a retry line or comment) of a streaming response."""
    while True:
        block = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
        events = parse(block)
        if events:
            (event,) = events
            return event


def assert_complete(events: list[SSE], data: list[str], end: str = "done", first_seq: int = 1) -> None:
    """``events`` are exactly ``data`` in order, then one terminal event ``end``; ids consecutive from first_seq."""
    assert [event.data for event in events[:-1]] == data
    assert all(event.event is None for event in events[:-1])
    assert events[-1].event == end
    assert json.loads(events[-1].data)["state"] == end
    ids = [event.id for event in events]
    assert all(id_ is not None for id_ in ids)
    epochs = {str(id_).rpartition("-")[0] for id_ in ids}
    assert len(epochs) == 1
    assert [int(str(id_).rpartition("-")[2]) for id_ in ids] == list(range(first_seq, first_seq + len(events)))


def in_thread(function: Callable[..., T], *args: Any) -> asyncio.Task[T]:
    """Run ``function(*args)`` in a new thread of its own (asyncio.to_thread's pool has too few threads for 16
    producers that block at once): the library's own call_in_thread, started now."""
    return asyncio.ensure_future(call_in_thread(functools.partial(function, *args), "test worker"))


async def wait_for_seq(streamer: Streamer, stream_id: str, seq: int) -> None:
    for _ in range(1000):
        state = await streamer.status(stream_id)
        if state is not None and state.last_seq >= seq:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"stream {stream_id!r} never reached seq {seq}")


class Steered:
    """A blocking generator that yields ``tokens`` and stops after ``pause_after`` of them until resumed."""

    def __init__(self, tokens: list[str], pause_after: int | None = None) -> None:
        self.tokens = tokens
        self.pause_after = pause_after
        self.resume = threading.Event()
        self.pulled = 0
        self.closed = False
        self.thread: int | None = None

    def __iter__(self) -> Iterator[str]:
        self.thread = threading.get_ident()
        try:
            for index, token in enumerate(self.tokens):
                if index == self.pause_after:
                    assert self.resume.wait(20), "the test never resumed the producer"
                self.pulled += 1
                yield token
        finally:
            self.closed = True


# -- many threads, HTTP readers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["publish", "writer"])
async def test_sixteen_threads_sixteen_streams_readers_see_every_event_once_in_order(
    aiohttp_client: ClientFactory, make_store: StoreFactory, mode: str
) -> None:
    streamer = Streamer(await make_store())
    client = await serve(aiohttp_client, streamer)
    sync = SyncStreamer(streamer)
    count, half = 300, 150
    producers = {f"s{k}": Steered([f"{k}:{i}" for i in range(count)], pause_after=half) for k in range(16)}

    def produce(stream_id: str) -> str:
        source = producers[stream_id]
        if mode == "publish":
            return sync.publish(stream_id, source)
        with sync.writer(stream_id) as writer:
            for token in source:
                writer.send(token)
        assert writer.state is not None
        return writer.state

    running = [in_thread(produce, stream_id) for stream_id in producers]
    for stream_id in producers:
        await wait_for_seq(streamer, stream_id, half)
    # Readers join mid-stream: half the events come from the log, half live, some readers resume from a position.
    first = {stream_id: asyncio.create_task(read_all(client, stream_id)) for stream_id in producers}
    middle = {stream_id: (await streamer.status(stream_id)).id_of(100) for stream_id in producers}  # type: ignore[union-attr]
    resumed = {sid: asyncio.create_task(read_all(client, sid, middle[sid])) for sid in producers}
    await asyncio.sleep(0.05)
    for source in producers.values():
        source.resume.set()
    assert await asyncio.gather(*running) == ["done"] * 16
    for k, stream_id in enumerate(producers):
        tokens = [f"{k}:{i}" for i in range(count)]
        assert_complete(await first[stream_id], tokens)
        assert_complete(await resumed[stream_id], tokens[100:], first_seq=101)
        assert producers[stream_id].closed


async def test_sixteen_threads_share_one_writer_each_event_once_per_thread_order_kept(
    aiohttp_client: ClientFactory, make_store: StoreFactory
) -> None:
    streamer = Streamer(await make_store(max_events=100_000))
    client = await serve(aiohttp_client, streamer)
    sync = SyncStreamer(streamer)
    writer = await asyncio.to_thread(sync.writer, "shared")
    reader = asyncio.create_task(read_all(client, "shared"))
    await asyncio.sleep(0.05)
    count = 500
    start = threading.Barrier(16)

    def send_all(thread: int) -> None:
        start.wait()
        for i in range(count):
            writer.send({"t": thread, "i": i})

    await asyncio.gather(*(in_thread(send_all, thread) for thread in range(16)))
    assert await asyncio.to_thread(writer.close) == "done"
    events = await reader
    sent = [json.loads(event.data) for event in events[:-1]]
    assert len(sent) == 16 * count
    for thread in range(16):  # each thread's events once, in the order it sent them
        assert [item["i"] for item in sent if item["t"] == thread] == list(range(count))
    assert events[-1].event == "done"
    assert [int(str(event.id).rpartition("-")[2]) for event in events] == list(range(1, 16 * count + 2))
    # A reader arriving later gets the same order from the log.
    assert [event.data for event in await read_all(client, "shared")] == [event.data for event in events]


async def test_a_slow_producers_event_reaches_the_reader_while_the_producer_is_still_blocked(
    aiohttp_client: ClientFactory,
) -> None:
    streamer = Streamer(MemoryStore())
    client = await serve(aiohttp_client, streamer)
    sync = SyncStreamer(streamer)
    source = Steered(["first", "second"], pause_after=1)
    published = in_thread(sync.publish, "slow", source)
    await wait_for_seq(streamer, "slow", 1)
    response = await client.get("/stream/slow")
    assert (await read_event(response)).data == "first"  # while next() blocks: not held back for a batch
    writer = await asyncio.to_thread(sync.writer, "slow-writer")
    await asyncio.to_thread(writer.send, "one")
    response2 = await client.get("/stream/slow-writer")
    assert (await read_event(response2)).data == "one"  # no second send, no close: it went over at once
    source.resume.set()
    assert await published == "done"
    assert (await read_event(response)).data == "second"
    assert (await read_event(response)).event == "done"
    assert await asyncio.to_thread(writer.close) == "done"


# -- claims ---------------------------------------------------------------------------------------------------------


async def test_same_stream_claimed_from_a_thread_and_from_async_at_once_one_wins_the_other_is_told(
    aiohttp_client: ClientFactory, make_store: StoreFactory
) -> None:
    streamer = Streamer(await make_store())
    client = await serve(aiohttp_client, streamer)
    sync = SyncStreamer(streamer)
    winners: set[str] = set()
    for attempt in range(20):
        stream_id = f"race-{attempt}"
        from_thread = Steered(["thread"])
        async_calls = 0

        async def from_async() -> AsyncIterator[str]:
            yield "async"

        def factory() -> AsyncIterator[str]:
            nonlocal async_calls
            async_calls += 1
            return from_async()

        def publish() -> str | StreamAlreadyClaimed:
            try:
                return sync.publish(stream_id, from_thread)  # noqa: B023 (called within this iteration)
            except StreamAlreadyClaimed as exc:
                return exc

        async def start_async(delay: float) -> Producer | None:
            await asyncio.sleep(delay)
            return await streamer.start(stream_id, factory)  # noqa: B023 (called within this iteration)

        # Every other attempt gives the thread a head start, so that both sides are seen winning (on the memory
        # store a claim never waits, and the async side would always win a dead heat).
        delay = 0.0 if attempt % 2 == 0 else 0.1
        thread_result, producer = await asyncio.gather(asyncio.to_thread(publish), start_async(delay))
        events = await read_all(client, stream_id)
        if isinstance(thread_result, StreamAlreadyClaimed):
            assert thread_result.stream_id == stream_id
            assert f"stream {stream_id!r} already has a producer" in str(thread_result)
            assert producer is not None
            assert await producer.wait() == "done"
            assert from_thread.pulled == 0  # the loser's generator is never run
            assert_complete(events, ["async"])
            winners.add("async")
        else:
            assert thread_result == "done"
            assert producer is None
            assert async_calls == 0
            assert_complete(events, ["thread"])
            winners.add("thread")
    assert winners == {"async", "thread"}


async def test_publish_and_writer_to_an_existing_stream_raise_stream_already_claimed(make_store: StoreFactory) -> None:
    streamer = Streamer(await make_store())
    sync = SyncStreamer(streamer)
    assert await asyncio.to_thread(sync.publish, "taken", iter(["x"])) == "done"
    again = Steered(["y"])
    with pytest.raises(StreamAlreadyClaimed, match="'taken' already has a producer"):
        await asyncio.to_thread(sync.publish, "taken", again)
    assert again.pulled == 0
    with pytest.raises(StreamAlreadyClaimed):
        await asyncio.to_thread(sync.writer, "taken")
    with pytest.raises(InvalidStreamId):
        await asyncio.to_thread(sync.publish, "no spaces", iter(["x"]))
    state = await streamer.status("taken")
    assert state is not None
    assert (state.status, state.last_seq) == ("done", 2)
    await streamer.close()


# -- error and cancel -----------------------------------------------------------------------------------------------


async def test_a_blocking_generator_that_raises_ends_the_stream_with_error(
    aiohttp_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    streamer = Streamer(MemoryStore())
    client = await serve(aiohttp_client, streamer)
    sync = SyncStreamer(streamer)

    def failing() -> Iterator[str]:
        yield "a"
        yield "b"
        raise ValueError("secret detail")

    def refusing() -> Iterator[str]:
        yield "a"
        raise ProducerError("quota exceeded")

    with caplog.at_level(logging.ERROR, logger="resumable_sse"):
        assert await asyncio.to_thread(sync.publish, "boom", failing()) == "error"
    events = await read_all(client, "boom")
    assert_complete(events, ["a", "b"], end="error")
    assert "secret detail" not in events[-1].data  # clients get a generic message; the traceback goes to the log
    assert any(record.exc_info and "secret detail" in str(record.exc_info[1]) for record in caplog.records)

    assert await asyncio.to_thread(sync.publish, "refused", refusing()) == "error"
    events = await read_all(client, "refused")
    assert json.loads(events[-1].data) == {"state": "error", "message": "quota exceeded"}

    def block() -> None:
        with sync.writer("writer-boom") as writer:
            writer.send("partial")
            raise ProducerError("writer failed")

    with pytest.raises(ProducerError, match="writer failed"):  # the block's exception goes on to the caller
        await asyncio.to_thread(block)
    events = await read_all(client, "writer-boom")
    assert_complete(events, ["partial"], end="error")
    assert json.loads(events[-1].data)["message"] == "writer failed"


async def test_oversized_events_publish_ends_with_error_writer_send_raises_and_writes_nothing(
    aiohttp_client: ClientFactory,
) -> None:
    streamer = Streamer(MemoryStore(), max_event_bytes=100)
    client = await serve(aiohttp_client, streamer)
    sync = SyncStreamer(streamer)
    assert await asyncio.to_thread(sync.publish, "big", iter(["ok", "x" * 101, "never"])) == "error"
    events = await read_all(client, "big")
    assert_complete(events, ["ok"], end="error")

    def write() -> str:
        with sync.writer("big-writer") as writer:
            writer.send("ok")
            with pytest.raises(EventTooLarge):
                writer.send("é" * 51)  # 102 bytes in UTF-8
            writer.send("still open")
        assert writer.state is not None
        return writer.state

    assert await asyncio.to_thread(write) == "done"
    assert_complete(await read_all(client, "big-writer"), ["ok", "still open"])


async def test_cancel_stops_a_blocking_generator_at_its_next_event_and_ends_cancelled(
    aiohttp_client: ClientFactory, make_store: StoreFactory
) -> None:
    streamer = Streamer(await make_store())
    client = await serve(aiohttp_client, streamer)
    sync = SyncStreamer(streamer)
    source = Steered([f"t{i}" for i in range(100)], pause_after=2)
    published = in_thread(sync.publish, "c", source)
    await wait_for_seq(streamer, "c", 2)
    assert await asyncio.to_thread(sync.cancel, "c") is True
    state = await asyncio.to_thread(sync.status, "c")
    assert state is not None
    assert state.status == "cancelled"
    source.resume.set()  # the generator's next() returns now; its event is dropped and nothing more is pulled
    assert await published == "cancelled"
    assert source.pulled == 3
    assert source.closed
    assert_complete(await read_all(client, "c"), ["t0", "t1"], end="cancelled")
    assert await asyncio.to_thread(sync.cancel, "c") is False  # already ended


async def test_cancel_makes_a_writers_send_raise_and_the_with_block_ends_quietly(
    aiohttp_client: ClientFactory,
) -> None:
    streamer = Streamer(MemoryStore())
    client = await serve(aiohttp_client, streamer)
    sync = SyncStreamer(streamer)
    cancelled = threading.Event()
    after_cancel = []

    def callback_sdk() -> str | None:
        with sync.writer("w") as writer:
            writer.send("a")
            assert cancelled.wait(20)
            while True:  # an SDK calling on_token=writer.send until told to stop
                writer.send("late")
                after_cancel.append(1)
        return writer.state

    running = in_thread(callback_sdk)
    await wait_for_seq(streamer, "w", 1)
    assert await asyncio.to_thread(sync.cancel, "w") is True
    cancelled.set()
    assert await running == "cancelled"
    assert len(after_cancel) < 10_000  # it was stopped, not left to fill memory (sends after the end are refused)
    events = await read_all(client, "w")
    assert_complete(events, ["a"], end="cancelled")


async def test_send_after_close_raises_stream_fenced() -> None:
    streamer = Streamer(MemoryStore())
    sync = SyncStreamer(streamer)

    def misuse() -> None:
        writer = sync.writer("closed")
        writer.send("a")
        assert writer.close() == "done"
        assert writer.close() == "done"  # idempotent
        assert writer.stopped
        with pytest.raises(StreamFenced):
            writer.send("b")

    await asyncio.to_thread(misuse)
    state = await streamer.status("closed")
    assert state is not None
    assert state.last_seq == 2
    await streamer.close()


# -- the portal: wrong thread, no loop, own loop thread -------------------------------------------------------------


async def test_called_from_the_event_loop_thread_it_raises_instead_of_deadlocking() -> None:
    streamer = Streamer(MemoryStore())
    sync = SyncStreamer(streamer)  # made inside the running loop: uses it
    source = Steered(["x"])
    with pytest.raises(EventLoopError, match="own event loop thread"):
        sync.publish("here", source)
    with pytest.raises(EventLoopError):
        sync.writer("here")
    with pytest.raises(EventLoopError):
        sync.status("here")
    with pytest.raises(EventLoopError):
        sync.cancel("here")
    assert source.pulled == 0
    assert await streamer.status("here") is None  # nothing was claimed
    assert isinstance(EventLoopError("x"), RuntimeError)
    await streamer.close()


def test_a_streamer_with_no_event_loop_yet_is_a_clear_error() -> None:
    sync = SyncStreamer(Streamer(MemoryStore()))
    with pytest.raises(EventLoopError, match="no event loop yet"):
        sync.publish("s", iter(["x"]))


async def test_a_loop_named_explicitly_is_used_from_any_thread() -> None:
    streamer = Streamer(MemoryStore())
    loop = asyncio.get_running_loop()

    def in_worker() -> str:
        sync = SyncStreamer(streamer, loop=loop)  # made where no loop runs
        return sync.publish("named", iter(["a"]))

    assert await asyncio.to_thread(in_worker) == "done"
    assert streamer.loop is loop
    state = await streamer.status("named")
    assert state is not None
    assert state.last_seq == 2
    await streamer.close()


class StoppingLoop:
    """A loop on a thread of its own that the test can make stop while it is busy, before it runs queued calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever)
        self.thread.start()

    def stop_soon(self, busy: float = 1.0) -> None:
        """Keep the loop busy for ``busy`` seconds, then stop it: what is queued meanwhile never runs."""
        entered = threading.Event()

        def block_then_stop() -> None:
            entered.set()
            time.sleep(busy)
            self.loop.stop()

        self.loop.call_soon_threadsafe(block_then_stop)
        entered.wait()

    def close(self, streamer: Streamer) -> None:
        self.thread.join(5)
        self.loop.run_until_complete(streamer.close(0))
        self.loop.close()


def test_a_call_whose_loop_stops_before_running_it_raises_instead_of_hanging() -> None:
    streamer = Streamer(MemoryStore())
    stopping = StoppingLoop()
    sync = SyncStreamer(streamer, loop=stopping.loop)
    assert sync.status("s") is None  # the loop answers
    stopping.stop_soon()
    started = time.monotonic()
    with pytest.raises(StreamerClosed, match="stopped before it finished"):
        sync.status("s")  # queued while the loop is busy; the loop then stops without running it
    assert time.monotonic() - started < 4
    stopping.close(streamer)


def test_a_writer_waiting_for_room_when_the_loop_stops_raises_instead_of_hanging() -> None:
    streamer = Streamer(MemoryStore())
    stopping = StoppingLoop()
    sync = SyncStreamer(streamer, loop=stopping.loop)
    writer = sync.writer("w")
    stopping.stop_soon()
    started = time.monotonic()

    def fill() -> None:
        for i in range(10_000):  # the feed fills up while the loop is busy, then nobody drains it
            writer.send(f"t{i}")

    with pytest.raises(StreamFenced):
        fill()
    assert time.monotonic() - started < 4
    stopping.close(streamer)


# -- the portal releases a waiting thread as soon as its loop stops (no polling) ----------------------------------

PROMPT = 0.1  # seconds: far below the 0.25 s the portal used to poll at


class Released:
    """A thread that waits in a portal call (or a send), and when and how it was released."""

    def __init__(self, wait: Callable[[], object]) -> None:
        self.error: BaseException | None = None
        self.at = 0.0

        def run() -> None:
            try:
                wait()
            except BaseException as exc:
                self.error = exc
            self.at = time.monotonic()

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def after(self, moment: Callable[[], float]) -> float:
        """Seconds from ``moment()`` (read once released) until the thread was released, which must be within 5 s."""
        self.thread.join(5)
        assert not self.thread.is_alive(), "the waiting thread was never released"
        return self.at - moment()


def stop_while_busy(loop: asyncio.AbstractEventLoop, busy: float = 0.3) -> Callable[[], float]:
    """Keep ``loop`` busy for ``busy`` seconds, then stop it; the returned function says when it stopped."""
    stopped: list[float] = []
    entered = threading.Event()

    def block_then_stop() -> None:
        entered.set()
        time.sleep(busy)
        stopped.append(time.monotonic())
        loop.stop()

    loop.call_soon_threadsafe(block_then_stop)
    entered.wait()
    return lambda: stopped[0]


def test_a_loop_thread_that_stops_releases_queued_and_running_calls_at_once() -> None:
    portal = LoopThread("resumable-sse test loop")
    running = threading.Event()

    async def forever() -> None:
        running.set()
        await asyncio.Event().wait()

    ran: list[str] = []

    async def never() -> None:
        ran.append("never")

    waiting = Released(lambda: portal.call(forever()))
    running.wait()
    stopped_at = stop_while_busy(portal.loop)
    queued = Released(lambda: portal.call(never()))  # queued while the loop is busy; it stops before running it
    assert waiting.after(stopped_at) < PROMPT
    assert queued.after(stopped_at) < PROMPT
    assert isinstance(waiting.error, StreamerClosed)
    assert isinstance(queued.error, StreamerClosed)
    assert "stopped before it finished" in str(queued.error)
    portal.stop()
    assert ran == []  # a call that failed is never run later
    with pytest.raises(StreamerClosed):
        portal.call(never())  # a stopped portal refuses at once


def test_a_sync_streamer_on_a_foreign_loop_releases_its_callers_when_the_loops_thread_ends() -> None:
    streamer = Streamer(MemoryStore())
    stopping = StoppingLoop()
    sync = SyncStreamer(streamer, loop=stopping.loop)
    writer = sync.writer("w")

    def fill() -> None:
        for i in range(10_000):  # the feed fills up while the loop is busy, then nobody drains it
            writer.send(f"t{i}")

    stopped_at = stop_while_busy(stopping.loop)
    call = Released(lambda: sync.status("s"))
    sender = Released(fill)
    assert call.after(stopped_at) < PROMPT
    assert sender.after(stopped_at) < PROMPT
    assert isinstance(call.error, StreamerClosed)
    assert isinstance(sender.error, StreamFenced)
    stopping.close(streamer)


def test_a_foreign_loop_closed_by_a_thread_that_lives_on_releases_the_calls_it_never_ran() -> None:
    loop = asyncio.new_event_loop()
    closed_at: list[float] = []
    done = threading.Event()

    def owner() -> None:
        loop.run_forever()
        closed_at.append(time.monotonic())
        loop.close()  # drops the queued calls
        done.wait(5)  # the thread lives on: only the close can tell

    thread = threading.Thread(target=owner)
    thread.start()
    ran: list[str] = []

    async def never() -> None:
        ran.append("never")

    stop_while_busy(loop)
    queued = Released(lambda: call_in_loop(loop, never()))
    try:
        assert queued.after(lambda: closed_at[0]) < PROMPT
        assert isinstance(queued.error, StreamerClosed)
        assert ran == []
    finally:
        done.set()
        thread.join(5)


def test_a_foreign_loop_shut_down_by_asyncio_run_releases_a_running_call() -> None:
    started = threading.Event()
    leave = threading.Event()
    loops: list[asyncio.AbstractEventLoop] = []
    shutdown_at: list[float] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        await asyncio.to_thread(leave.wait)
        shutdown_at.append(time.monotonic())  # returning: asyncio.run cancels the tasks left, closes the loop

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    while not loops:
        time.sleep(0.01)
    waiting = Released(lambda: call_in_loop(loops[0], forever()))
    started.wait(5)
    leave.set()
    assert waiting.after(lambda: shutdown_at[0]) < PROMPT
    thread.join(5)
    assert isinstance(waiting.error, StreamerClosed)


async def test_sync_streamer_made_before_the_app_starts_finds_the_apps_loop(aiohttp_client: ClientFactory) -> None:
    streamer = Streamer(MemoryStore())
    app = web.Application()
    setup(app, streamer)
    app.router.add_get("/stream/{stream_id}", resumable_handler(not_claimed))
    sync = await asyncio.to_thread(SyncStreamer, streamer)  # module level, say: no loop running there
    client = await aiohttp_client(app)  # startup binds the Streamer to the app's loop
    assert await asyncio.to_thread(sync.publish, "early", iter(["a", "b"])) == "done"
    assert_complete(await read_all(client, "early"), ["a", "b"])
    sync.close()  # a shared Streamer is the app's: closing the facade leaves it running
    with pytest.raises(StreamerClosed):
        await asyncio.to_thread(sync.status, "early")
    assert not streamer.closing


def test_from_url_runs_its_own_loop_thread_and_close_stops_it() -> None:
    before = threading.active_count()
    with SyncStreamer.from_url("memory://", store_options={"max_events": 50}, batch_size=8) as sync:
        assert threading.active_count() == before + 1
        assert sync.publish("a", (f"t{i}" for i in range(200))) == "done"
        state = sync.status("a")
        assert state is not None
        assert (state.status, state.first_seq, state.last_seq) == ("done", 152, 201)  # trimmed to max_events
        with sync.writer("b") as writer:
            writer.send({"n": 1})
        assert writer.state == "done"
        assert sync.status("missing") is None
    assert threading.active_count() == before
    assert not any(thread.name.startswith(PRODUCER_THREAD) for thread in threading.enumerate())
    with pytest.raises(StreamerClosed):
        sync.publish("c", iter(["x"]))
    sync.close()  # twice is fine


def test_from_url_close_gives_running_writers_the_grace_period_then_cancels_them() -> None:
    sync = SyncStreamer.from_url("memory://")
    writer = sync.writer("open")
    writer.send("a")
    sync.close(grace_period=0.1)
    with pytest.raises(StreamFenced):
        writer.send("b")
    assert not any(thread.name.startswith(PRODUCER_THREAD) for thread in threading.enumerate())


def test_closing_from_another_thread_ends_a_running_publish_with_cancelled() -> None:
    sync = SyncStreamer.from_url("memory://")
    source = Steered([f"t{i}" for i in range(10)], pause_after=2)
    outcome: list[str] = []
    publisher = threading.Thread(target=lambda: outcome.append(sync.publish("p", source)))
    publisher.start()
    for _ in range(1000):
        state = sync.status("p")
        if state is not None and state.last_seq >= 2:
            break
        time.sleep(0.01)
    sync.close(grace_period=0)
    source.resume.set()
    publisher.join(10)
    assert outcome == ["cancelled"]  # told how its stream ended, though the facade closed meanwhile
    assert source.pulled == 3
    assert source.closed


def test_a_forgotten_sync_streamer_stops_its_loop_thread_when_collected() -> None:
    before = set(threading.enumerate())
    sync = SyncStreamer.from_url("memory://")
    assert sync.publish("a", iter(["x"])) == "done"
    (loop_thread,) = [t for t in set(threading.enumerate()) - before if t.name == "resumable-sse SyncStreamer loop"]
    del sync
    gc.collect()
    # The last reference may be dropped on the loop thread itself (a finished call's task lets go of it there a
    # moment after the caller woke up); the finalizer then stops the loop without waiting for its own thread.
    loop_thread.join(10)
    assert not loop_thread.is_alive()


# -- the event loop is never blocked --------------------------------------------------------------------------------


async def test_sync_producers_that_sleep_in_blocking_calls_never_block_the_event_loop(
    aiohttp_client: ClientFactory,
) -> None:
    def sleepy(_request: web.Request | None = None) -> Iterator[str]:
        for i in range(20):
            time.sleep(0.03)  # a blocking SDK call
            yield f"t{i}"

    streamer = Streamer(MemoryStore())
    client = await serve(aiohttp_client, streamer, sleepy)
    sync = SyncStreamer(streamer)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        while not stop.is_set():
            started = loop.time()
            await asyncio.sleep(0.005)
            worst = max(worst, loop.time() - started - 0.005)

    def write_slowly() -> str:
        with sync.writer("slow-writer") as writer:
            for i in range(20):
                time.sleep(0.03)
                writer.send(f"t{i}")
        assert writer.state is not None
        return writer.state

    ticking = asyncio.create_task(ticker())
    results = await asyncio.gather(
        read_all(client, "from-handler"),  # a plain generator function given to resumable_handler
        asyncio.to_thread(sync.publish, "published", sleepy()),
        asyncio.to_thread(write_slowly),
    )
    stop.set()
    await ticking
    tokens = [f"t{i}" for i in range(20)]
    assert_complete(results[0], tokens)
    assert results[1:] == ["done", "done"]
    assert_complete(await read_all(client, "published"), tokens)
    assert_complete(await read_all(client, "slow-writer"), tokens)
    assert worst < 0.05, f"the event loop lagged {worst * 1000:.0f} ms"


async def test_resumable_handler_runs_a_plain_generator_in_a_worker_thread_and_cancel_stops_it(
    aiohttp_client: ClientFactory,
) -> None:
    sources: list[Steered] = []

    def produce(request: web.Request) -> Iterator[str]:
        source = Steered([f"{request.match_info['stream_id']}-{i}" for i in range(50)], pause_after=3)
        sources.append(source)
        return iter(source)

    streamer = Streamer(MemoryStore())
    client = await serve(aiohttp_client, streamer, produce)
    response = await client.get("/stream/h")
    assert [(await read_event(response)).data for _ in range(3)] == ["h-0", "h-1", "h-2"]
    (source,) = sources
    assert source.thread not in (None, threading.get_ident())  # not the loop's thread
    sources_before = len(sources)
    assert await streamer.cancel("h") is True
    assert (await read_event(response)).event == "cancelled"
    source.resume.set()
    for _ in range(500):  # the thread stops at the generator's next event and closes it
        if source.closed:
            break
        await asyncio.sleep(0.01)
    assert source.closed
    assert source.pulled == 4
    assert len(sources) == sources_before  # a reconnect does not run the producer again
    events = await read_all(client, "h")
    assert_complete(events, ["h-0", "h-1", "h-2"], end="cancelled")

    second = await client.get("/stream/h2")
    sources[-1].resume.set()
    assert_complete(parse(await second.read()), [f"h2-{i}" for i in range(50)])


# -- a worker process with no event loop, through Redis ------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys, time
    from resumable_sse import SyncStreamer

    url, prefix, stream_id, mode = sys.argv[1:5]

    def tokens():
        i = 0
        while i < 200 or mode == "forever":
            if i == 100:
                sys.stdin.readline()  # the test says: go on
            if mode == "forever":
                time.sleep(0.01)
            yield f"w{i}"
            i += 1

    with SyncStreamer.from_url(url, store_options={"key_prefix": prefix}) as sync:
        print(sync.publish(stream_id, tokens()), flush=True)
    """
)


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["finish", "forever"])
async def test_a_worker_process_publishes_through_redis_while_this_process_serves_readers(
    aiohttp_client: ClientFactory, mode: str
) -> None:
    if importlib.util.find_spec("resumable_sse.stores.redis") is None:
        pytest.skip("resumable_sse.stores.redis has not landed yet: no Redis store to publish through")
    from resumable_sse.stores.redis import RedisStore

    from .redis_servers import RedisServer, require_server_binary

    with RedisServer(require_server_binary()) as server:
        prefix = f"sync-{os.getpid()}"
        streamer = Streamer(RedisStore.from_url(server.url, key_prefix=prefix))
        client = await serve(aiohttp_client, streamer)
        worker = subprocess.Popen(  # noqa: ASYNC220 (started once; waited for off the loop)
            [sys.executable, "-c", WORKER, server.url, prefix, "job", mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            await wait_for_seq(streamer, "job", 100)
            reader = asyncio.create_task(read_all(client, "job"))
            await asyncio.sleep(0.1)
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
            if mode == "forever":
                await wait_for_seq(streamer, "job", 150)
                assert await streamer.cancel("job") is True  # from this process; the worker stops pulling
            out, err = await asyncio.to_thread(worker.communicate, timeout=30)
            events = await reader
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            await client.close()  # the app closes its Streamer while the server still runs
        assert worker.returncode == 0, err
        if mode == "finish":
            assert out.strip() == "done"
            assert_complete(events, [f"w{i}" for i in range(200)])
        else:
            assert out.strip() == "cancelled"
            assert events[-1].event == "cancelled"
            assert [event.data for event in events[:-1]] == [f"w{i}" for i in range(len(events) - 1)]
            assert len(events) - 1 >= 150
