"""docs/protocol.md over real HTTP: every status and resume case, wire bytes exact, on both adapters.

Each test taking ``http`` runs twice: against ``resumable_handler`` on aiohttp's server, and against
``resumable_endpoint`` (Starlette/FastAPI) under uvicorn, both on real sockets; the answers must be the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientResponse, web

from resumable_sse import Event, MemoryStore, ProducerError, StoreUnavailable, Streamer, resumable_handler, setup

from ._adapters import ADAPTERS, Client, Harness, Route
from ._live_server import path_param
from .helpers import Gate, parse, read_entries


@pytest.fixture(params=ADAPTERS)
async def http(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """One adapter (aiohttp, then Starlette under uvicorn), serving for real; stopped after the test."""
    harness = Harness(request.param)
    yield harness
    await harness.close()


async def wait_for_seq(streamer: Streamer, stream_id: str, seq: int) -> None:
    for _ in range(500):
        state = await streamer.status(stream_id)
        if state is not None and state.last_seq >= seq:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"stream {stream_id} never reached seq {seq}")


async def read_event(response: ClientResponse) -> bytes:
    """The next SSE block (event, retry or comment) from a streaming response."""
    return await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)


async def app_with(
    http: Harness, producer: Any, *, streamer: Streamer | None = None, **options: Any
) -> tuple[Client, Streamer]:
    streamer = streamer or Streamer(MemoryStore())
    client = await http.serve([Route("/stream/{stream_id}", http.endpoint(producer, **options))], streamer)
    return client, streamer


async def hello(_request: web.Request) -> AsyncIterator[str]:
    for token in ["Hello", ", ", "world"]:
        yield token


# -- new stream, join, resume -------------------------------------------------------------------------------------


async def test_new_stream_streams_every_event_then_done_with_exact_bytes(http: Harness) -> None:
    client, streamer = await app_with(http, hello)
    response = await client.get("/stream/s1")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    body = await response.read()
    state = await streamer.status("s1")
    assert state is not None
    e = state.epoch
    assert (
        body
        == (
            f"retry: 2000\n"
            f"id: {e}-1\ndata: Hello\n\n"
            f"id: {e}-2\ndata: , \n\n"
            f"id: {e}-3\ndata: world\n\n"
            f'id: {e}-4\nevent: done\ndata: {{"state":"done"}}\n\n'
        ).encode()
    )


async def test_join_running_stream_gets_retained_events_then_live(http: Harness) -> None:
    gate = Gate(["a", "b", "c", "d"])
    client, streamer = await app_with(http, gate.produce)
    first = await client.get("/stream/j")
    gate.release(2)
    await wait_for_seq(streamer, "j", 2)
    second = await client.get("/stream/j")  # no position: from the first event
    first_block = await read_event(second)
    assert first_block.startswith(b"retry: 2000\nid: ")  # the retry field rides on the first event
    assert parse(first_block)[0].data == "a"
    assert parse(await read_event(second))[0].data == "b"
    gate.release(2)
    bodies = [await first.read(), await second.read()]
    assert [e.data for e in parse(bodies[0])] == ["a", "b", "c", "d", '{"state":"done"}']
    assert [e.data for e in parse(bodies[1])] == ["c", "d", '{"state":"done"}']
    assert gate.runs == 1


async def test_resume_after_last_event_id_gets_strictly_later_events(http: Harness) -> None:
    client, _streamer = await app_with(http, hello)
    events = parse(await (await client.get("/stream/r")).read())
    response = await client.get("/stream/r", headers={"Last-Event-ID": events[0].id or ""})
    assert response.status == 200
    e = events[0].id.split("-")[0] if events[0].id else ""
    assert (
        await response.read()
        == (
            f"retry: 2000\nid: {e}-2\ndata: , \n\nid: {e}-3\ndata: world\n\n"
            f'id: {e}-4\nevent: done\ndata: {{"state":"done"}}\n\n'
        ).encode()
    )


async def test_query_parameter_position_and_header_wins(http: Harness) -> None:
    client, _ = await app_with(http, hello)
    ids = [e.id for e in parse(await (await client.get("/stream/q")).read())]
    by_query = parse(await (await client.get(f"/stream/q?last_event_id={ids[1]}")).read())
    assert [e.id for e in by_query] == ids[2:]
    both = parse(
        await (await client.get(f"/stream/q?last_event_id={ids[1]}", headers={"Last-Event-ID": ids[0] or ""})).read()
    )
    assert [e.id for e in both] == ids[1:]


async def test_reconnect_naming_the_terminal_event_gets_204(http: Harness) -> None:
    client, _ = await app_with(http, hello)
    terminal = parse(await (await client.get("/stream/t")).read())[-1]
    assert terminal.event == "done"
    response = await client.get("/stream/t", headers={"Last-Event-ID": terminal.id or ""})
    assert response.status == 204
    assert await response.read() == b""
    response = await client.get(f"/stream/t?last_event_id={terminal.id}")
    assert response.status == 204


async def test_position_from_another_epoch_gets_reset_then_full_replay(http: Harness) -> None:
    client, streamer = await app_with(http, hello)
    await (await client.get("/stream/ep")).read()
    state = await streamer.status("ep")
    assert state is not None
    body = await (await client.get("/stream/ep", headers={"Last-Event-ID": "0123456789abcdef-2"})).read()
    assert body.startswith(
        f'retry: 2000\nevent: reset\ndata: {{"reason":"epoch","first_id":"{state.epoch}-1"}}\n\n'
        f"id: {state.epoch}-1\ndata: Hello\n\n".encode()
    )
    assert [e.data for e in parse(body)][1:] == ["Hello", ", ", "world", '{"state":"done"}']


async def test_position_older_than_retained_history_gets_reset_trimmed(http: Harness) -> None:
    async def many(_request: web.Request) -> AsyncIterator[str]:
        for i in range(1, 21):
            yield str(i)

    client, streamer = await app_with(http, many, streamer=Streamer(MemoryStore(max_events=5)))
    await (await client.get("/stream/tr")).read()
    state = await streamer.status("tr")
    assert state is not None
    assert (state.first_seq, state.last_seq) == (17, 21)
    events = parse(await (await client.get("/stream/tr", headers={"Last-Event-ID": f"{state.epoch}-3"})).read())
    assert events[0].event == "reset"
    assert json.loads(events[0].data) == {"reason": "trimmed", "first_id": f"{state.epoch}-17"}
    assert [e.data for e in events[1:-1]] == ["17", "18", "19", "20"]
    assert events[-1].event == "done"


async def test_position_beyond_the_end_gets_reset_position(http: Harness) -> None:
    client, streamer = await app_with(http, hello)
    await (await client.get("/stream/b")).read()
    state = await streamer.status("b")
    assert state is not None
    events = parse(await (await client.get("/stream/b", headers={"Last-Event-ID": f"{state.epoch}-99"})).read())
    assert (events[0].event, json.loads(events[0].data)["reason"]) == ("reset", "position")
    assert len(events) == 5


async def test_position_for_unknown_stream_is_410_and_producer_not_run(http: Harness) -> None:
    gate = Gate(["x"])
    client, streamer = await app_with(http, gate.produce)
    response = await client.get("/stream/gone", headers={"Last-Event-ID": "0123456789abcdef-5"})
    assert response.status == 410
    assert "unknown or has expired" in await response.text()
    assert gate.runs == 0
    assert await streamer.status("gone") is None


async def test_on_unknown_restart_reruns_producer_with_reset(http: Harness) -> None:
    client, streamer = await app_with(http, hello, on_unknown="restart")
    events = parse(await (await client.get("/stream/re", headers={"Last-Event-ID": "0123456789abcdef-5"})).read())
    state = await streamer.status("re")
    assert state is not None
    assert events[0].event == "reset"
    assert json.loads(events[0].data) == {"reason": "epoch", "first_id": None}
    assert [e.data for e in events[1:]] == ["Hello", ", ", "world", '{"state":"done"}']


# -- bad input and authorization ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "position",
    ["garbage", "abc", "-1", "0123456789abcdef-0", "0123456789abcdef-01", "ABC-1", "x" * 100 + "-1", "a-1-"],
)
async def test_malformed_position_is_400_and_nothing_started(http: Harness, position: str) -> None:
    gate = Gate(["x"])
    client, streamer = await app_with(http, gate.produce)
    for response in [
        await client.get("/stream/m", headers={"Last-Event-ID": position}),
        await client.get("/stream/m", params={"last_event_id": position}),
    ]:
        assert response.status == 400
        text = await response.text()
        assert "event id" in text
        assert "Traceback" not in text
    assert gate.runs == 0
    assert await streamer.status("m") is None


@pytest.mark.parametrize("stream_id", ["a" * 129, "has space", "semi;colon", "brace{x}", "ünï", "%00"])
async def test_invalid_stream_id_is_400_and_nothing_started(http: Harness, stream_id: str) -> None:
    gate = Gate(["x"])
    streamer = Streamer()
    client = await http.serve([Route("/q", http.endpoint(gate.produce))], streamer)
    response = await client.get("/q", params={"stream_id": stream_id})
    assert response.status == 400
    assert "stream id" in await response.text()
    assert gate.runs == 0
    assert len(streamer.store) == 0  # type: ignore[arg-type]


async def test_invalid_stream_id_from_the_route_or_the_callable_is_400(http: Harness) -> None:
    gate = Gate(["x"])
    streamer = Streamer()
    routes = [
        Route("/stream/{stream_id}", http.endpoint(gate.produce)),
        Route("/c/{user}", http.endpoint(gate.produce, stream_id=lambda r: f"user/{path_param(r, 'user')}")),
    ]
    client = await http.serve(routes, streamer)
    for path in ["/stream/has%20space", "/stream/" + "a" * 129, "/c/42"]:
        response = await client.get(path)
        assert response.status == 400, path
        assert "stream id" in await response.text()
    assert gate.runs == 0
    assert len(streamer.store) == 0  # type: ignore[arg-type]


async def test_missing_stream_id_is_400(http: Harness) -> None:
    client = await http.serve([Route("/q", http.endpoint(hello))])
    response = await client.get("/q")
    assert response.status == 400
    assert "no stream id" in await response.text()


async def test_a_stream_id_callable_reading_a_missing_parameter_is_400(http: Harness) -> None:
    """``stream_id=lambda request: request.query["session_id"]`` (a KeyError when it is missing) is the client's
    mistake, answered 400 like a missing stream id, not a 500."""

    def session(request: Any) -> str:
        query = request.query if isinstance(request, web.BaseRequest) else request.query_params
        return str(query["session_id"])

    client = await http.serve([Route("/s", http.endpoint(hello, stream_id=session))])
    response = await client.get("/s")
    assert response.status == 400
    assert "no stream id" in await response.text()
    response = await client.get("/s?session_id=abc")
    assert response.status == 200
    assert parse(await response.read())[-1].event == "done"


async def test_stream_id_from_query_and_from_callable(http: Harness) -> None:
    streamer = Streamer()
    routes = [
        Route("/q", http.endpoint(hello)),
        Route("/c/{user}", http.endpoint(hello, stream_id=lambda r: f"user:{path_param(r, 'user')}")),
    ]
    client = await http.serve(routes, streamer)
    assert len(parse(await (await client.get("/q?stream_id=abc")).read())) == 4
    assert len(parse(await (await client.get("/c/42")).read())) == 4
    assert await streamer.status("abc") is not None
    assert await streamer.status("user:42") is not None


@pytest.mark.parametrize("is_async", [False, True])
async def test_authorize_refusal_is_403_nothing_started_nothing_read(http: Harness, is_async: bool) -> None:
    gate = Gate(["x"])
    seen: list[str] = []

    def sync_check(_request: web.Request, stream_id: str) -> bool:
        seen.append(stream_id)
        return stream_id.startswith("mine-")

    async def async_check(request: web.Request, stream_id: str) -> bool:
        return sync_check(request, stream_id)

    client, streamer = await app_with(http, gate.produce, authorize=async_check if is_async else sync_check)
    response = await client.get("/stream/theirs-1")
    assert response.status == 403
    assert gate.runs == 0
    assert await streamer.status("theirs-1") is None
    gate.release()
    assert (await client.get("/stream/mine-1")).status == 200
    assert seen == ["theirs-1", "mine-1"]


# -- the producer runs once -------------------------------------------------------------------------------------


async def test_fifty_concurrent_first_requests_run_the_producer_once(http: Harness) -> None:
    runs = 0

    async def produce(_request: web.Request) -> AsyncIterator[str]:
        nonlocal runs
        runs += 1
        for i in range(20):
            await asyncio.sleep(0.001)
            yield f"t{i}"

    client, _ = await app_with(http, produce)
    responses = await asyncio.gather(*(client.get("/stream/once") for _ in range(50)))
    bodies = await asyncio.gather(*(r.read() for r in responses))
    assert runs == 1
    assert all(r.status == 200 for r in responses)
    assert len(set(bodies)) == 1
    assert [e.data for e in parse(bodies[0])][:-1] == [f"t{i}" for i in range(20)]


async def test_disconnect_does_not_stop_producer_and_reconnect_does_not_rerun(http: Harness) -> None:
    gate = Gate([f"t{i}" for i in range(6)])
    client, streamer = await app_with(http, gate.produce)
    response = await client.get("/stream/dc")
    gate.release(2)
    first = parse(await read_event(response))[0]
    second = parse(await read_event(response))[0]
    response.close()  # the client goes away mid-stream
    gate.release(4)
    await wait_for_seq(streamer, "dc", 7)
    state = await streamer.status("dc")
    assert state is not None
    assert state.status == "done"
    rest = parse(await (await client.get("/stream/dc", headers={"Last-Event-ID": second.id or ""})).read())
    assert [first.data, second.data, *[e.data for e in rest][:-1]] == [f"t{i}" for i in range(6)]
    assert gate.runs == 1


async def test_many_reconnects_deliver_every_event_exactly_once(http: Harness) -> None:
    async def produce(_request: web.Request) -> AsyncIterator[str]:
        for i in range(200):
            if i % 10 == 0:
                await asyncio.sleep(0.002)
            yield f"e{i}"

    client, _ = await app_with(http, produce)
    received: list[str] = []
    last_id: str | None = None
    for attempt in range(500):
        headers = {"Last-Event-ID": last_id} if last_id else {}
        response = await client.get("/stream/rc", headers=headers)
        if response.status == 204:
            break
        for _ in range(1 + attempt % 7):  # read a few events, then drop the connection
            event = parse(await read_event(response))[0]
            last_id = event.id
            received.append(event.data)
            if event.event == "done":
                break
        response.close()
    assert received[:-1] == [f"e{i}" for i in range(200)]
    assert received[-1] == '{"state":"done"}'


# -- terminal states -----------------------------------------------------------------------------------------------


async def test_producer_error_sends_safe_message_and_logs_traceback(
    http: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(_request: web.Request) -> AsyncIterator[str]:
        yield "partial"
        raise RuntimeError("database password is hunter2")

    client, _ = await app_with(http, broken)
    with caplog.at_level(logging.ERROR, logger="resumable_sse"):
        body = await (await client.get("/stream/err")).read()
    events = parse(body)
    assert [e.data for e in events][:1] == ["partial"]
    assert events[-1].event == "error"
    assert json.loads(events[-1].data) == {"state": "error", "message": "the stream failed"}
    assert b"hunter2" not in body
    assert any("hunter2" in r.getMessage() or (r.exc_info and "hunter2" in str(r.exc_info[1])) for r in caplog.records)


async def test_producer_error_with_a_public_message(http: Harness) -> None:
    async def quota(_request: web.Request) -> AsyncIterator[str]:
        yield "a"
        raise ProducerError("quota exceeded")

    client, _ = await app_with(http, quota)
    events = parse(await (await client.get("/stream/pe")).read())
    assert json.loads(events[-1].data) == {"state": "error", "message": "quota exceeded"}


async def test_cancel_ends_stream_for_every_reader_and_closes_producer(http: Harness) -> None:
    gate = Gate([f"t{i}" for i in range(100)])
    client, streamer = await app_with(http, gate.produce)
    readers = [await client.get("/stream/cx") for _ in range(3)]
    gate.release(2)
    await wait_for_seq(streamer, "cx", 2)
    assert await streamer.cancel("cx") is True
    assert await streamer.cancel("cx") is False  # once
    bodies = await asyncio.wait_for(asyncio.gather(*(r.read() for r in readers)), 5)
    for body in bodies:
        events = parse(body)
        assert [e.data for e in events[:2]] == ["t0", "t1"]
        assert events[-1].event == "cancelled"
    state = await streamer.status("cx")
    assert state is not None
    assert state.status == "cancelled"
    for _ in range(100):
        if gate.closed:
            break
        await asyncio.sleep(0.01)
    assert gate.closed  # the generator was closed (its finally ran)
    assert streamer.producer("cx") is None


# -- payloads ------------------------------------------------------------------------------------------------------


async def test_payload_types_and_multiline_framing(http: Harness) -> None:
    async def produce(_request: web.Request) -> AsyncIterator[Any]:
        yield "plain"
        yield "é".encode()
        yield {"k": [1, "é"]}
        yield [1, 2]
        yield Event("typed", event="token")
        yield "a\nb\r\nc\rd"
        yield ""
        yield Event({"x": 1}, event="meta")

    client, streamer = await app_with(http, produce)
    body = await (await client.get("/stream/p")).read()
    state = await streamer.status("p")
    assert state is not None
    e = state.epoch
    assert body.decode() == (
        "retry: 2000\n"
        f"id: {e}-1\ndata: plain\n\n"
        f"id: {e}-2\ndata: é\n\n"
        f'id: {e}-3\ndata: {{"k":[1,"é"]}}\n\n'
        f"id: {e}-4\ndata: [1,2]\n\n"
        f"id: {e}-5\nevent: token\ndata: typed\n\n"
        f"id: {e}-6\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        f"id: {e}-7\ndata: \n\n"
        f'id: {e}-8\nevent: meta\ndata: {{"x":1}}\n\n'
        f'id: {e}-9\nevent: done\ndata: {{"state":"done"}}\n\n'
    )


async def test_oversized_event_ends_stream_with_error_and_is_not_written(
    http: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    async def produce(_request: web.Request) -> AsyncIterator[str]:
        yield "small"
        yield "x" * 2000
        yield "never"

    client, _ = await app_with(http, produce, streamer=Streamer(max_event_bytes=1000))
    with caplog.at_level(logging.ERROR, logger="resumable_sse"):
        body = await (await client.get("/stream/big")).read()
    events = parse(body)
    assert [e.data for e in events[:-1]] == ["small"]
    assert json.loads(events[-1].data) == {"state": "error", "message": "an event was too large"}
    assert b"xxxx" not in body
    assert any("max_event_bytes=1000" in r.getMessage() for r in caplog.records)


async def test_unsupported_payload_type_ends_with_error(http: Harness) -> None:
    async def produce(_request: web.Request) -> AsyncIterator[Any]:
        yield "ok"
        yield 42

    client, _ = await app_with(http, produce)
    events = parse(await (await client.get("/stream/ty")).read())
    assert [e.event for e in events] == [None, "error"]


# -- heartbeat, shutdown --------------------------------------------------------------------------------------------


async def test_heartbeat_comments_while_idle(http: Harness) -> None:
    gate = Gate(["late"])
    client, _ = await app_with(http, gate.produce, heartbeat=0.05)
    response = await client.get("/stream/hb")
    # no event yet, so no retry field yet either; each heartbeat one comment line, never a blank line after it
    assert await asyncio.wait_for(response.content.readuntil(b"\n"), 5) == b": ping\n"
    assert await asyncio.wait_for(response.content.readuntil(b"\n"), 5) == b": ping\n"
    gate.release()
    rest = await response.read()
    assert rest.replace(b": ping\n", b"").startswith(b"retry: 2000\nid: ")
    assert [e.data for e in parse(rest)] == ["late", '{"state":"done"}']


async def test_default_heartbeat_is_15_seconds_and_retry_2000_ms() -> None:
    import inspect

    from resumable_sse.starlette import resumable_endpoint

    for make in (resumable_handler, resumable_endpoint):
        defaults = inspect.signature(make).parameters
        assert (defaults["heartbeat"].default, defaults["retry"].default) == (15.0, 2000)
        assert (defaults["on_unknown"].default, defaults["headers"].default) == ("gone", None)


async def test_requests_after_shutdown_began_are_503(http: Harness) -> None:
    client, streamer = await app_with(http, hello)
    assert len(parse(await (await client.get("/stream/before")).read())) == 4
    streamer.end_readers()  # what setup() does in on_shutdown
    for path in ["/stream/before", "/stream/new"]:
        response = await client.get(path)
        assert response.status == 503
        assert "unavailable" in await response.text()
    assert await streamer.status("new") is None


async def test_a_slow_producers_event_goes_out_at_once(http: Harness) -> None:
    gate = Gate(["first", "second"])
    client, _ = await app_with(http, gate.produce)
    response = await client.get("/stream/slow")
    gate.release()  # the producer then waits at its next event: nothing may hold "first" back
    first = await read_event(response)
    assert first.startswith(b"retry: 2000\n")
    assert parse(first)[0].data == "first"
    gate.release()
    assert [e.data for e in parse(await response.read())] == ["second", '{"state":"done"}']


async def test_a_stalled_reader_blocks_neither_the_producer_nor_other_readers(http: Harness) -> None:
    # One client connects and never reads: its socket buffers fill up. The producer must still run to its end and
    # another reader must still get every event; the stalled one costs a cursor, not a copy.
    events = 3000
    payload = "x" * 1000  # 3 MB in all: far more than the socket buffers hold

    async def big(_request: web.Request) -> AsyncIterator[str]:
        for _ in range(events):
            yield payload

    streamer = Streamer(MemoryStore(max_events=events + 1))
    client = await http.serve([Route("/stream/{stream_id}", http.endpoint(big))], streamer)
    stalled = socket.create_connection(("127.0.0.1", http.port))
    try:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /stream/big HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        for _ in range(1000):  # the stalled request started the producer, which runs to its end regardless
            if (state := await streamer.status("big")) is not None and state.finished:
                break
            await asyncio.sleep(0.01)
        assert state is not None
        assert (state.status, state.last_seq) == ("done", events + 1)
        response = await client.get("/stream/big")
        received = parse(await asyncio.wait_for(response.read(), 10))
        assert [e.data for e in received[:-1]] == [payload] * events
        assert received[-1].event == "done"
    finally:
        stalled.close()


async def test_shutdown_ends_responses_and_cancels_producers_after_grace() -> None:
    gate = Gate([f"t{i}" for i in range(100)])
    store = MemoryStore()
    app = web.Application()
    setup(app, Streamer(store, grace_period=0.2))
    app.router.add_get("/stream/{stream_id}", resumable_handler(gate.produce))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    from aiohttp import ClientSession

    async with ClientSession() as session:
        response = await session.get(f"http://127.0.0.1:{port}/stream/sd")
        gate.release()
        assert parse(await read_event(response))[0].data == "t0"
        await asyncio.wait_for(runner.cleanup(), 10)
        rest = await asyncio.wait_for(response.read(), 5)  # the response ended cleanly: no exception
        assert parse(rest) == []
    state = await store.state("sd")
    assert state is not None
    assert state.status == "cancelled"
    last = (await read_entries(store, "sd", state.last_seq - 1, 1))[0]
    assert json.loads(last.data) == {"state": "cancelled", "message": "server shutdown"}
    assert gate.closed


# -- methods -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_methods_but_get_and_head_are_405_before_anything_is_started_or_read(http: Harness, method: str) -> None:
    gate = Gate(["x"])
    checked: list[str] = []

    def authorize(_request: web.Request, stream_id: str) -> bool:
        checked.append(stream_id)
        return True

    streamer = Streamer()
    handler = http.endpoint(gate.produce, authorize=authorize)
    routes = [
        Route("/stream/{stream_id}", handler),  # GET and HEAD
        Route("/any/{stream_id}", handler, any_method=True),  # every method reaches the handler
    ]
    client = await http.serve(routes, streamer)
    # aiohttp's router (add_get: GET and HEAD) and the handler give one answer, to the byte of the Allow header.
    paths = ["/any/m2", "/any/bad%20id", "/any/m2?last_event_id=0123456789abcdef-1"]
    if http.adapter == "aiohttp":
        paths.append("/stream/m1")
    for path in paths:
        for _ in range(3):
            response = await client.request(method, path, headers={"Last-Event-ID": "0123456789abcdef-1"})
            assert response.status == 405, (method, path)
            assert response.headers["Allow"] == "GET,HEAD"
            if path.startswith("/any/"):  # the handler's own answer (the router's text is its own)
                assert await response.text() == "method not allowed: an event stream is read with GET\n"
    await asyncio.sleep(0.05)
    assert gate.runs == 0
    assert checked == []
    assert len(streamer.store) == 0  # type: ignore[arg-type]
    assert len(streamer.producers) == 0
    gate.release()
    assert (await client.get("/any/m2")).status == 200  # GET is still served


async def test_head_answers_what_a_get_would_and_starts_nothing(http: Harness) -> None:
    gate = Gate(["x"])
    checked: list[str] = []

    def authorize(_request: web.Request, stream_id: str) -> bool:
        checked.append(stream_id)
        return stream_id != "secret"

    streamer = Streamer()
    client = await http.serve(
        [Route("/stream/{stream_id}", http.endpoint(gate.produce, authorize=authorize))], streamer
    )
    head = await client.request("HEAD", "/stream/h1")  # a GET would start it: 200, and here nothing is started
    assert head.status == 200
    assert {name: head.headers[name] for name in ("Content-Type", "Cache-Control", "X-Accel-Buffering")} == {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    }
    assert await head.read() == b""
    await asyncio.sleep(0.05)
    assert gate.runs == 0 and len(streamer.store) == 0  # type: ignore[arg-type]
    statuses = {
        "unknown position": (await client.request("HEAD", "/stream/h1?last_event_id=0123456789abcdef-1")).status,
        "bad id": (await client.request("HEAD", "/stream/bad$id")).status,
        "forbidden": (await client.request("HEAD", "/stream/secret")).status,
    }
    assert statuses == {"unknown position": 410, "bad id": 400, "forbidden": 403}
    gate.release()
    body = await (await client.get("/stream/h1")).read()
    last = parse(body)[-1].id
    assert (await client.request("HEAD", f"/stream/h1?last_event_id={last}")).status == 204  # the end
    first = parse(body)[0].id
    assert (await client.request("HEAD", f"/stream/h1?last_event_id={first}")).status == 200
    assert gate.runs == 1 and checked.count("h1") == 5  # authorize asked for every HEAD too


# -- stream ids made only of dots -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream_id", [".", "..", "...", "." * 128])
async def test_stream_ids_made_only_of_dots_are_400_and_nothing_started(http: Harness, stream_id: str) -> None:
    from resumable_sse import InvalidStreamId
    from resumable_sse._streamer import validate_stream_id

    with pytest.raises(InvalidStreamId, match="dots"):
        validate_stream_id(stream_id)
    gate = Gate(["x"])
    streamer = Streamer()
    routes = [Route("/q", http.endpoint(gate.produce)), Route("/stream/{stream_id}", http.endpoint(gate.produce))]
    client = await http.serve(routes, streamer)
    responses = [await client.get("/q", params={"stream_id": stream_id})]
    encoded = stream_id.replace(".", "%2E")
    responses.append(await client.get(f"/stream/{encoded}"))
    for response in responses:
        if response.status == 404:  # the URL normalised "." and ".." away: the handler never saw it
            continue
        assert response.status == 400
        assert "dots" in await response.text()
    assert responses[0].status == 400
    assert gate.runs == 0
    assert len(streamer.store) == 0  # type: ignore[arg-type]
    for ok in ["a.b", ".a", "a..", "._", "-", ":"]:
        assert validate_stream_id(ok) == ok


class _Unreachable(MemoryStore):
    """A memory store whose reads fail as an unreachable Redis would, while ``down`` is set (after ``reads_left``
    more reads succeed, when it is not None)."""

    down = False
    reads_left: int | None = None

    async def read(self, stream_id: str, after: int, limit: int, *, epoch: str | None = None) -> Any:
        if self.down:
            if self.reads_left is None or self.reads_left <= 0:
                raise StoreUnavailable("the store is down (test)")
            self.reads_left -= 1
        return await super().read(stream_id, after, limit, epoch=epoch)


async def test_a_store_outage_while_serving_ends_the_body_properly(http: Harness) -> None:
    """Found in review: on ASGI the response was cut short (uvicorn: "ASGI callable returned without completing
    response", the client: an incomplete chunked body). On both adapters the body now ends cleanly, and the client
    gets the stream once the store is back."""
    store = _Unreachable()
    streamer = Streamer(store, batch_size=1, window=1)  # a first page of one event: the next one is read again
    gate = asyncio.Event()

    async def producer(request: Any = None) -> AsyncIterator[str]:
        yield "a"
        yield "b"
        yield "c"
        await gate.wait()

    client = await http.serve([Route("/stream/{stream_id}", http.endpoint(producer))], streamer)
    await streamer.start("s", producer)
    while (state := await streamer.status("s")) is None or state.last_seq < 3:  # noqa: ASYNC110 (the store, no event)
        await asyncio.sleep(0.01)
    # The request's first read (its subscription's first page, of one event) succeeds; the next read of the store
    # fails, after the response started. (A first read that fails gets 503 instead.)
    store.down, store.reads_left = True, 1
    response = await client.get("/stream/s", headers={"Last-Event-ID": f"{state.epoch}-1"})
    assert response.status == 200
    body = parse(await asyncio.wait_for(response.read(), 10))  # ended, cleanly: no incomplete chunked body
    assert [event.data for event in body] == ["b"]
    store.down = False
    gate.set()
    again = await client.get("/stream/s")
    events = parse(await asyncio.wait_for(again.read(), 10))
    assert [event.data for event in events] == ["a", "b", "c", '{"state":"done"}']
