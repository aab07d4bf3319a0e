"""Readers written to in the step that appended their events (``Subscription.write_directly``), on every store.

A reader that keeps up with a paced stream is written to by the append itself, not by its own task one turn of the
event loop later. Whatever the direct write refuses (the client is behind, another write is in progress) goes the
usual way, so a reader gets every event exactly once, in order, whichever way each one went.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from resumable_sse import Entry, Streamer, resumable_handler, setup
from resumable_sse.aiohttp import ResumableResponse

from .conftest import StoreFactory
from .helpers import body_of, parse, serve, until


class Writes:
    """A direct writer that records what it took, and refuses while told to."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.refuse = False

    def __call__(self, chunk: bytes) -> bool:
        if self.refuse:
            return False
        self.chunks.append(chunk)
        return True


async def gated(streamer: Streamer, stream_id: str) -> asyncio.Queue[str | None]:
    """Start ``stream_id`` with a producer that yields what the returned queue gets, until None."""
    gate: asyncio.Queue[str | None] = asyncio.Queue()

    async def produce() -> AsyncIterator[str]:
        while (token := await gate.get()) is not None:
            yield token

    await streamer.start(stream_id, produce)
    return gate


async def test_a_waiting_reader_takes_appended_entries_through_its_writer_and_the_rest_by_iteration(
    make_store: StoreFactory,
) -> None:
    async with Streamer(await make_store()) as streamer:
        gate = await gated(streamer, "s")
        subscription = await streamer.subscribe("s")
        writes = Writes()
        iterated: list[list[Any]] = []

        async def iterate() -> None:
            async for batch in subscription.batches():
                iterated.append(list(batch))
                subscription.write_directly(writes)  # as the HTTP adapters do: after the first batch

        reader = asyncio.create_task(iterate())
        await gate.put("first")
        await until(lambda: iterated and subscription.waiting, "the reader to wait", timeout=10.0)
        for seq, token in enumerate("abc", start=2):
            await gate.put(token)
            await until(lambda seq=seq: subscription.cursor >= seq, f"the cursor at {seq}", timeout=10.0)
        assert [entry.data for entry in iterated[0]] == ["first"]
        assert len(iterated) == 1, "the tokens went through the writer, not the iteration"
        assert b"".join(writes.chunks) == b"".join(
            f"id: {subscription.last_event_id.rsplit('-', 1)[0]}-{seq}\ndata: {data}\n\n".encode()
            for seq, data in ((2, "a"), (3, "b"), (4, "c"))
        )
        assert subscription.waiting  # it never woke for them

        writes.refuse = True  # the client is behind: the iteration takes over, from where the writer stopped
        await gate.put("d")
        await gate.put("e")
        await gate.put(None)
        await asyncio.wait_for(reader, 10)
        rest = [entry for batch in iterated[1:] for entry in batch]
        assert [(entry.seq, entry.data) for entry in rest][:2] == [(5, "d"), (6, "e")]
        assert rest[-1].terminal and rest[-1].seq == 7
        assert len(writes.chunks) == 3


async def test_a_writer_is_not_used_for_what_does_not_continue_the_reader(make_store: StoreFactory) -> None:
    # A reader whose writer took nothing, a closed reader, and a reader of another epoch are never written to.
    async with Streamer(await make_store()) as streamer:
        gate = await gated(streamer, "s")
        await gate.put("first")
        subscription = await streamer.subscribe("s")
        state = subscription.state
        batches = subscription.batches()
        first = await batches.__anext__()
        assert [entry.data for entry in first] == ["first"]
        writes = Writes()
        subscription.write_directly(writes)
        assert not subscription.deliver(state, 1, 2, b"x")  # not waiting: the iteration serves it
        waiting = asyncio.ensure_future(batches.__anext__())
        await until(lambda: subscription.waiting, "the reader to wait", timeout=10.0)
        assert not subscription.deliver(state, 5, 6, b"x")  # a gap: never written across it
        other = type(state)(state.stream_id, "another-epoch", state.status, 1, 2)
        assert not subscription.deliver(other, 1, 2, b"x")  # another epoch: the iteration sends a reset
        subscription.close()
        assert not subscription.deliver(state, 1, 2, b"x")
        assert writes.chunks == []
        with contextlib.suppress(StopAsyncIteration):
            await asyncio.wait_for(waiting, 5)
        await batches.aclose()
        await gate.put(None)


async def test_a_writer_that_raises_fails_neither_the_producer_nor_the_reader(
    make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with Streamer(await make_store()) as streamer:
        gate = await gated(streamer, "s")
        await gate.put("first")
        subscription = await streamer.subscribe("s")
        calls: list[bytes] = []

        def broken(chunk: bytes) -> bool:
            calls.append(chunk)
            raise OSError("the adapter has a bug")

        got: list[str] = []

        async def iterate() -> None:
            async for batch in subscription.batches():
                got.extend(item.data for item in batch if isinstance(item, Entry) and not item.terminal)
                subscription.write_directly(broken)

        reader = asyncio.create_task(iterate())
        await until(lambda: got == ["first"] and subscription.waiting, "the first entry", timeout=10.0)
        for token in ("a", "b", "c"):
            await gate.put(token)
        await gate.put(None)
        await asyncio.wait_for(reader, 10)
        state = await streamer.status("s")
    assert got == ["first", "a", "b", "c"]  # each exactly once, by the iteration
    assert state is not None and state.status == "done"  # the producer never saw the failure
    assert len(calls) == 1  # tried once, then the reader writes for itself
    failures = [r for r in caplog.records if "writing directly to a reader" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None


async def test_fast_and_stalled_readers_of_one_stream_get_every_event_once_in_order(
    make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fast reader is written to directly; a reader that stops reading for a while fills its socket, so the
    # direct writes to it are refused and its own task writes (waiting for the client) until it catches up.
    events, payload = 600, "y" * 8000
    taken = {"direct": 0, "refused": 0}
    write_now = ResumableResponse.write_now

    def counting(self: ResumableResponse, data: bytes) -> bool:
        took = write_now(self, data)
        taken["direct" if took else "refused"] += 1
        return took

    monkeypatch.setattr(ResumableResponse, "write_now", counting)

    async def produce(_request: web.Request) -> AsyncIterator[str]:
        for i in range(events):
            yield f"{i} {payload}"
            if i % 3 == 0:
                await asyncio.sleep(0.001)  # paced: readers catch up and wait between tokens

    app = web.Application()
    setup(app, Streamer(await make_store(max_events=events + 1)))
    app.router.add_get("/stream/{stream_id}", resumable_handler(produce))
    runner, port = await serve(app)
    url = f"http://127.0.0.1:{port}/stream/mixed"
    try:
        async with aiohttp.ClientSession() as session:

            async def read(pause: float) -> bytes:
                async with session.get(url, read_bufsize=2**10) as response:
                    assert response.status == 200
                    body = bytearray()
                    async for chunk in response.content.iter_any():
                        body += chunk
                        if pause and len(body) > 4000:
                            await asyncio.sleep(pause)  # stops reading: the server's writes to it back up
                            pause = 0
                    return bytes(body)

            fast, slow = await asyncio.gather(read(0), read(1.0))
    finally:
        await runner.cleanup()
    for body in (fast, slow):
        parsed = parse(body)
        data = [event.data for event in parsed if event.event is None]
        assert data == [f"{i} {payload}" for i in range(events)]
        seqs = [int(event.id.rsplit("-", 1)[1]) for event in parsed if event.id]
        assert seqs == list(range(1, events + 2))
        assert parsed[-1].event == "done"
    assert taken["direct"] > 0, "the fast reader was written to directly"
    assert taken["refused"] > 0, "the stalled reader's socket filled: its own task wrote to it"


async def test_write_now_writes_at_once_or_refuses_and_write_still_works() -> None:
    outcomes: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        response = ResumableResponse(heartbeat=60)
        await response.prepare(request)
        await response.write(b"data: 0\n\n")
        outcomes["small"] = response.write_now(b"data: 1\n\n")
        transport = request.transport
        assert transport is not None
        high = transport.get_write_buffer_limits()[1]
        big = b"data: " + b"z" * (high + 1) + b"\n\n"
        outcomes["over the high-water mark"] = response.write_now(big)
        await response.write(b"data: 2\n\n")
        response.started = [asyncio.get_running_loop().time()]  # a write in progress (a heartbeat, say)
        outcomes["while another write is in progress"] = response.write_now(b"data: x\n\n")
        response.started = None
        await response.write_eof()
        outcomes["after the end"] = response.write_now(b"data: y\n\n")
        return response

    body = await body_of(handler)
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert outcomes == {
        "small": True,
        "over the high-water mark": False,
        "while another write is in progress": False,
        "after the end": False,
    }


async def test_readers_that_come_and_go_on_a_quiet_stream_are_not_collected(make_store: StoreFactory) -> None:
    async with Streamer(await make_store()) as streamer:
        gate = await gated(streamer, "s")
        await gate.put("first")
        tail = None
        for _ in range(40):
            subscription = await streamer.subscribe("s")
            batches = subscription.batches()
            assert [entry.data for entry in await batches.__anext__()] == ["first"]
            subscription.write_directly(Writes())
            waiting = asyncio.ensure_future(batches.__anext__())
            await until(lambda subscription=subscription: subscription.waiting, "each reader to wait", timeout=10.0)
            tail = streamer.hub.tails["s"]
            subscription.close()
            with contextlib.suppress(StopAsyncIteration):
                await asyncio.wait_for(waiting, 5)
            await batches.aclose()
        assert tail is not None
        assert len(tail.parked) <= 5, "closed readers are dropped while the stream stays quiet (40 came and went)"
        await gate.put(None)
