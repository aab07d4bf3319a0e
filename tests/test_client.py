"""The reconnecting client against the real resumable handler on real sockets, and against scripted replies."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import resumable_sse
import resumable_sse.client
import resumable_sse.exceptions
from resumable_sse import STREAMER_KEY
from resumable_sse.client import (
    ClientError,
    ClientOptions,
    ClientOptionsDict,
    EventStream,
    ResponseError,
    RetriesExhausted,
    ServerSentEvent,
    StreamGone,
    backoff_delay,
    connect,
    iter_events,
)
from resumable_sse.exceptions import StreamEnded

from ._live_server import CuttingProxy, Scripted, expected_events, mixed_payloads, resumable_app

ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def server(aiohttp_server: ServerFactory) -> TestServer:
    return await aiohttp_server(resumable_app())


@pytest.fixture
async def scripted(aiohttp_server: ServerFactory) -> tuple[Scripted, str]:
    script = Scripted()
    test_server = await aiohttp_server(script.app())
    return script, str(test_server.make_url("/s"))


def url(server: TestServer, stream_id: str) -> str:
    return str(server.make_url(f"/stream/{stream_id}"))


async def collect(events: EventStream) -> list[ServerSentEvent]:
    async with events:
        return [event async for event in events]


def fast(**options: Any) -> dict[str, Any]:
    """Client options that reconnect quickly, for tests."""
    return {"reconnect_delay": 0.0, "max_delay": 0.05, **options}


# -- the real server ---------------------------------------------------------------------------------------------


async def test_reads_a_stream_to_done(server: TestServer) -> None:
    events = connect(url(server, "count.3"))
    received = await collect(events)
    assert [(e.event, e.data) for e in received] == [
        ("message", "event 0"),
        ("message", "event 1"),
        ("message", "event 2"),
        ("done", '{"state":"done"}'),
    ]
    epoch = received[0].id.rpartition("-")[0] if received[0].id else ""
    assert [e.id for e in received] == [f"{epoch}-{n}" for n in (1, 2, 3, 4)]
    assert received[-1].json() == {"state": "done"}
    assert events.finished
    assert events.terminal == received[-1]
    assert events.last_event_id == f"{epoch}-4"
    assert events.connections == 1
    assert events.retry == 0.005  # the server's retry: 5


async def test_error_raises_stream_ended_with_the_servers_message(server: TestServer) -> None:
    events = connect(url(server, "fail"))
    received: list[ServerSentEvent] = []

    async def read() -> None:
        async with events:
            async for event in events:
                received.append(event)

    with pytest.raises(StreamEnded) as caught:
        await read()
    assert [e.data for e in received] == ["a"]
    assert caught.value.state == "error"
    assert caught.value.message == "boom: the model refused"
    assert str(caught.value) == "stream ended with error: boom: the model refused"
    assert events.terminal is not None
    assert events.terminal.event == "error"
    assert events.last_event_id == events.terminal.id


async def test_raise_on_empty_yields_error_event_and_ends(server: TestServer) -> None:
    received = await collect(connect(url(server, "fail"), raise_on=()))
    assert [e.event for e in received] == ["message", "error"]
    assert received[-1].json() == {"state": "error", "message": "boom: the model refused"}


async def test_cancelled_is_yielded_by_default_and_can_raise(server: TestServer) -> None:
    streamer = server.app[STREAMER_KEY]
    async with connect(url(server, "wait")) as events:
        first = await events.__anext__()
        assert first.data == "a"
        assert await streamer.cancel("wait")
        rest = [event async for event in events]
    assert [e.event for e in rest] == ["cancelled"]
    with pytest.raises(StreamEnded) as caught:
        await collect(connect(url(server, "wait"), raise_on={"cancelled"}))
    assert caught.value.state == "cancelled"


async def test_resumes_from_last_event_id(server: TestServer) -> None:
    everything = await collect(connect(url(server, "count.5")))
    later = await collect(connect(url(server, "count.5"), last_event_id=everything[1].id))
    assert later == everything[2:]


async def test_position_at_the_end_gets_204_and_nothing(server: TestServer) -> None:
    everything = await collect(connect(url(server, "count.2")))
    events = connect(url(server, "count.2"), last_event_id=everything[-1].id)
    assert await collect(events) == []
    assert events.finished
    assert events.terminal is None
    assert events.connections == 1


async def test_unknown_stream_with_a_position_raises_stream_gone(server: TestServer) -> None:
    events = connect(url(server, "count.9"), last_event_id="abc-3", **fast())
    with pytest.raises(StreamGone) as caught:
        await collect(events)
    assert caught.value.status == 410
    assert "unknown or has expired" in str(caught.value)
    assert events.connections == 1  # not retried


async def test_reset_is_surfaced_before_the_replay(server: TestServer) -> None:
    everything = await collect(connect(url(server, "count.3")))
    received = await collect(connect(url(server, "count.3"), last_event_id="otherepoch-2"))
    assert received[0].event == "reset"
    assert received[0].id is None
    assert received[0].json() == {"reason": "epoch", "first_id": everything[0].id}
    assert received[1:] == everything


async def test_malformed_position_is_a_400_response_error(server: TestServer) -> None:
    with pytest.raises(ResponseError) as caught:
        await collect(connect(url(server, "count.1"), last_event_id="not an id!"))
    assert caught.value.status == 400
    assert "malformed event id" in str(caught.value)


async def test_uses_and_keeps_open_a_given_session(server: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        received = await collect(connect(url(server, "count.2"), session=session))
        assert len(received) == 3
        assert not session.closed


@pytest.mark.parametrize(
    ("kind", "seed"), [("mixed", 1), ("mixed", 2), ("mixed", 3), ("mixed", 4), ("paced", 5), ("paced", 6)]
)
async def test_exactly_once_across_random_cuts(server: TestServer, kind: str, seed: int) -> None:
    """Connections cut after a random number of bytes (in headers, mid-line, mid-CRLF, mid-character): the client
    reconnects with Last-Event-ID and receives exactly the produced sequence, nothing lost, nothing twice.

    ``mixed`` produces faster than the cuts come (reconnects mostly catch up from the log); ``paced`` produces for
    about a second, so reconnects land on the live tail."""
    count = 400
    async with CuttingProxy(server.port or 0, seed=seed, max_bytes=1500) as proxy:
        events = connect(f"http://127.0.0.1:{proxy.port}/stream/{kind}.{count}", **fast())
        received = await collect(events)
    assert proxy.cuts >= 10  # the test did cut the stream, many times
    assert 10 <= events.connections <= proxy.connections  # aiohttp itself retries a GET cut before its headers
    assert received[-1].event == "done"
    body = received[:-1]
    assert [(e.event, e.data) for e in body] == expected_events(mixed_payloads(count))
    epoch = received[0].id.rpartition("-")[0] if received[0].id else ""
    assert [e.id for e in received] == [f"{epoch}-{n}" for n in range(1, count + 2)]


# -- scripted replies --------------------------------------------------------------------------------------------


async def test_server_close_reconnects_with_last_event_id(scripted: tuple[Scripted, str]) -> None:
    script, address = scripted
    script.replies = [
        (200, {}, b"retry: 1\n\nid: s-1\ndata: a\n\nid: s-2\ndata: b\n\nid: s-3\ndata: unfinished"),
        (200, {}, b"id: s-3\ndata: c\n\nid: s-4\nevent: done\ndata: {}\n\n"),
    ]
    events = connect(address, headers={"Authorization": "Bearer t", "Last-Event-ID": "ignored"}, **fast())
    received = await collect(events)
    assert [e.data for e in received] == ["a", "b", "c", "{}"]
    assert "Last-Event-ID" not in script.requests[0]
    assert script.requests[1]["Last-Event-ID"] == "s-2"  # the unfinished s-3 was not delivered
    assert script.requests[1]["Authorization"] == "Bearer t"
    assert script.requests[0]["Accept"] == "text/event-stream"
    assert events.retry == 0.001


async def test_the_servers_retry_sets_the_wait_before_reconnecting(scripted: tuple[Scripted, str]) -> None:
    script, address = scripted
    script.replies = [
        (200, {}, b"retry: 400\nid: s-1\ndata: a\n\n"),  # then the server closes the connection
        (200, {}, b"id: s-2\nevent: done\ndata: {}\n\n"),
    ]
    times: list[float] = []
    loop = asyncio.get_running_loop()
    events = connect(address, reconnect_delay=0.0, jitter=0.0)
    async with events:
        async for _ in events:
            times.append(loop.time())
    assert events.retry == 0.4
    assert 0.4 <= times[1] - times[0] < 1.0  # not reconnect_delay (0), not a backoff: the server's 400 ms


async def test_initial_last_event_id_is_sent(scripted: tuple[Scripted, str]) -> None:
    script, address = scripted
    script.replies = [(204, {}, b"")]
    events = connect(address, last_event_id="s-9")
    assert events.last_event_id == "s-9"
    assert await collect(events) == []
    assert script.requests[0]["Last-Event-ID"] == "s-9"


async def test_lost_raises(scripted: tuple[Scripted, str]) -> None:
    script, address = scripted
    script.replies = [(200, {}, b'id: s-1\nevent: lost\ndata: {"state":"lost"}\n\n')]
    with pytest.raises(StreamEnded) as caught:
        await collect(connect(address))
    assert caught.value.state == "lost"
    assert caught.value.message == ""


async def test_5xx_retried_then_succeeds(scripted: tuple[Scripted, str]) -> None:
    script, address = scripted
    script.replies = [
        (503, {}, b"busy"),
        (500, {}, b"oops"),
        (200, {}, b"id: s-1\nevent: done\ndata: {}\n\n"),
    ]
    events = connect(address, **fast())
    assert [e.event for e in await collect(events)] == ["done"]
    assert events.connections == 3


async def test_429_honours_retry_after(scripted: tuple[Scripted, str]) -> None:
    script, address = scripted
    script.replies = [(429, {"Retry-After": "1"}, b"slow down"), (200, {}, b"id: s-1\nevent: done\ndata: {}\n\n")]
    loop = asyncio.get_running_loop()
    started = loop.time()
    await collect(connect(address, **fast()))
    assert loop.time() - started >= 0.9
    assert len(script.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_4xx_raises_at_once(scripted: tuple[Scripted, str], status: int) -> None:
    script, address = scripted
    script.replies = [(status, {}, b"the reason")]
    with pytest.raises(ResponseError) as caught:
        await collect(connect(address, **fast()))
    assert caught.value.status == status
    assert caught.value.body == "the reason"
    assert str(caught.value).endswith(": the reason")
    assert not isinstance(caught.value, StreamGone)
    assert len(script.requests) == 1


async def test_not_an_event_stream_raises(scripted: tuple[Scripted, str]) -> None:
    script, address = scripted
    script.replies = [(200, {"Content-Type": "text/html"}, b"<html>")]
    with pytest.raises(ResponseError, match=r"not an event stream \(Content-Type: text/html\)"):
        await collect(connect(address, **fast()))
    assert len(script.requests) == 1


async def test_retries_exhausted_after_consecutive_failures(scripted: tuple[Scripted, str]) -> None:
    script, address = scripted
    script.replies = [(500, {}, b"down")] * 4
    events = connect(address, max_retries=2, **fast())
    with pytest.raises(RetriesExhausted) as caught:
        await collect(events)
    assert caught.value.attempts == 3
    assert isinstance(caught.value.__cause__, ResponseError)
    assert events.connections == 3


async def test_progress_resets_the_failure_count(scripted: tuple[Scripted, str]) -> None:
    """A connection that delivers something counts as healthy: max_retries limits failures in a row only."""
    script, address = scripted
    script.replies = [
        (500, {}, b""),
        (200, {}, b"id: s-1\ndata: a\n\n"),
        (500, {}, b""),
        (200, {}, b": ping\n"),  # a heartbeat as the server sends it: one comment line
        (500, {}, b""),
        (200, {}, b"id: s-2\nevent: done\ndata: {}\n\n"),
    ]
    events = connect(address, max_retries=1, **fast())
    assert [e.data for e in await collect(events)] == ["a", "{}"]
    assert events.connections == 6


async def test_connection_refused_is_retried_then_gives_up() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens on it once closed
    with pytest.raises(RetriesExhausted) as caught:
        await collect(connect(f"http://127.0.0.1:{port}/s", max_retries=3, **fast()))
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectionError)
    assert "after 4 failed attempts in a row" in str(caught.value)


async def test_read_timeout_replaces_a_silent_connection(aiohttp_server: ServerFactory) -> None:
    requests: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        requests.append(request.headers.get("Last-Event-ID"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if len(requests) == 1:
            await response.write(b"id: s-1\ndata: a\n\n")
            await asyncio.sleep(30)  # silent: no heartbeat
        await response.write(b"id: s-2\nevent: done\ndata: {}\n\n")
        return response

    app = web.Application()
    app.router.add_get("/s", handler)
    test_server = await aiohttp_server(app)
    received = await collect(connect(str(test_server.make_url("/s")), read_timeout=0.2, **fast()))
    assert [e.data for e in received] == ["a", "{}"]
    assert requests == [None, "s-1"]


def test_backoff_doubles_from_the_retry_time_up_to_the_cap() -> None:
    no_jitter = [backoff_delay(1.0, n, cap=30.0, jitter=0.0) for n in range(7)]
    assert no_jitter == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff_delay(0.0, 0, cap=30.0, jitter=0.0) == 0.0  # retry: 0 after a healthy connection
    assert backoff_delay(0.0, 1, cap=30.0, jitter=0.0) == 0.1  # but failures never spin
    assert backoff_delay(8.0, 1, cap=10.0, jitter=0.5, rand=lambda: 1.0) == 5.0
    assert backoff_delay(8.0, 1, cap=10.0, jitter=0.5, rand=lambda: 0.0) == 10.0


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("notaurl", "not an absolute URL"),
        ("/stream/a", "not an absolute URL"),
        ("http:///stream/a", "not an absolute URL"),
        ("ftp://host/stream/a", "not an http:// or https:// URL"),
        ("http://[::1/", "not a URL"),
    ],
)
def test_a_url_the_client_cannot_request_is_rejected_at_once(bad: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        connect(bad)


async def test_a_relative_url_is_taken_with_a_session_that_has_a_base_url(server: TestServer) -> None:
    async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as session:
        events = await collect(connect("/stream/count.2", session=session))
    assert [event.event for event in events] == ["message", "message", "done"]


async def test_a_relative_url_with_a_session_without_base_url_is_rejected_at_once() -> None:
    with pytest.raises(ValueError, match="not an absolute URL"):
        connect("/stream/a")  # no session: nothing it could be relative to
    async with aiohttp.ClientSession() as session:
        events = connect("/stream/a", session=session, **fast(max_retries=5))
        with pytest.raises(ClientError, match="/stream/a") as caught:
            await collect(events)
    # The session's first request fails on the URL, at once and never retried.
    assert isinstance(caught.value.__cause__, aiohttp.InvalidURL)
    assert events.connections == 1


async def test_a_certificate_error_is_a_client_error_at_once_not_retried(tls_server: str) -> None:
    events = connect(tls_server + "/stream/count.2", **fast(max_retries=5))
    with pytest.raises(ClientError, match="certificate") as caught:
        await collect(events)
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectorCertificateError)
    assert events.connections == 1


def test_invalid_options_rejected_early() -> None:
    with pytest.raises(ValueError, match="raise_on"):
        connect("http://x/", raise_on={"message"})
    with pytest.raises(ValueError, match="jitter"):
        connect("http://x/", jitter=2)
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        connect("http://x/", last_event_id="a\nb")


def test_options_are_one_frozen_checked_object_that_keywords_override() -> None:
    shared = ClientOptions(headers={"Authorization": "Bearer t"}, max_retries=3, raise_on=["error"])
    events = connect("http://x/", options=shared, max_retries=5)
    assert events.options == dataclasses.replace(shared, max_retries=5)
    assert events.options.headers == {"Authorization": "Bearer t"}
    assert events.options.raise_on == frozenset({"error"})
    assert connect("http://x/", options=shared).options is shared
    assert connect("http://x/", reconnect_delay=0.5).options == ClientOptions(reconnect_delay=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        shared.max_retries = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        shared.headers["X-Other"] = "1"  # type: ignore[index]
    with pytest.raises(ValueError, match="jitter"):
        connect("http://x/", options=shared, jitter=-1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        connect("http://x/", retries=3)  # type: ignore[call-arg]


def test_the_keyword_options_are_exactly_the_fields_of_client_options() -> None:
    assert set(ClientOptionsDict.__annotations__) == {field.name for field in dataclasses.fields(ClientOptions)}


def test_client_exceptions_are_the_ones_of_the_one_tree() -> None:
    for name in ("ClientError", "ResponseError", "StreamGone", "RetriesExhausted"):
        shared = getattr(resumable_sse.exceptions, name)
        assert getattr(resumable_sse.client, name) is shared
        assert getattr(resumable_sse, name) is shared
        assert issubclass(shared, resumable_sse.ResumableSSEError)
        assert name in (resumable_sse.exceptions.__doc__ or "")


async def test_a_redirect_loop_is_a_client_error_not_a_raw_aiohttp_one(aiohttp_server: ServerFactory) -> None:
    async def loop(_request: web.Request) -> web.Response:
        raise web.HTTPFound("/s")

    app = web.Application()
    app.router.add_get("/s", loop)
    test_server = await aiohttp_server(app)
    events = connect(str(test_server.make_url("/s")), **fast(max_retries=5))
    with pytest.raises(ClientError, match="GET") as caught:
        await collect(events)
    assert isinstance(caught.value.__cause__, aiohttp.TooManyRedirects)
    assert events.connections == 1


def test_the_client_does_not_import_the_server_side_sync_module() -> None:
    code = (
        "import sys, resumable_sse.client\n"
        "assert 'resumable_sse.sync' not in sys.modules, 'resumable_sse.sync was imported'\n"
        "assert 'resumable_sse._portal' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


# -- the blocking client -----------------------------------------------------------------------------------------


def _client_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "resumable-sse client"]


async def test_iter_events_reads_the_same_stream(server: TestServer) -> None:
    expected = await collect(connect(url(server, "mixed.60")))

    def read() -> tuple[list[ServerSentEvent], str | None]:
        with iter_events(url(server, "mixed.60")) as events:
            return list(events), events.last_event_id

    received, last_id = await asyncio.to_thread(read)
    assert received == expected
    assert last_id == expected[-1].id
    assert _client_threads() == []


async def test_iter_events_raises_stream_ended(server: TestServer) -> None:
    seen: list[str] = []

    def read() -> None:
        for event in iter_events(url(server, "fail")):
            seen.append(event.data)

    with pytest.raises(StreamEnded, match="boom"):
        await asyncio.to_thread(read)
    assert seen == ["a"]
    assert _client_threads() == []


async def test_iter_events_break_closes_the_connection_and_thread(server: TestServer) -> None:
    def read() -> str:
        for event in iter_events(url(server, "wait")):
            return event.data  # leaves a live stream mid-way; the abandoned iterator is closed at once
        return ""

    assert await asyncio.to_thread(read) == "a"
    gc.collect()
    assert _client_threads() == []


async def test_iter_events_closed_from_another_thread_ends_the_waiting_iteration(server: TestServer) -> None:
    events = iter_events(url(server, "wait"))
    seen: list[str] = []
    first = threading.Event()

    def read() -> None:
        for event in events:  # after "a" the stream stays open: this thread waits in the portal
            seen.append(event.data)
            first.set()

    reader = threading.Thread(target=read)
    reader.start()
    await asyncio.to_thread(first.wait, 5)
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await asyncio.to_thread(events.close)
    await asyncio.to_thread(reader.join, 5)
    assert not reader.is_alive()
    assert time.monotonic() - started < 2
    assert seen == ["a"]  # the iteration ended quietly: no exception in the reading thread
    assert _client_threads() == []
