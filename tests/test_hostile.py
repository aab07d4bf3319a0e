"""Careless and hostile clients: disconnects before the headers, readers that never read, fuzzed requests.

Whatever a client does, the server answers with a plain status (never a 500), logs no traceback, starts nothing
for a request it refuses, and keeps nothing open for a client that has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import random
import socket
import struct
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from resumable_sse import Streamer, resumable_handler, setup

from .conftest import StoreFactory
from .helpers import serve


async def hello(_request: web.Request) -> AsyncIterator[str]:
    for token in ["Hello", ", ", "world"]:
        yield token


def open_subscriptions(streamer: Streamer) -> list[Any]:
    return [s for s in list(streamer._subscriptions) if not s._closed]


async def settle(streamer: Streamer, timeout: float = 10.0) -> None:
    """Wait until no producer runs, no subscription is open and the hub follows nothing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if not len(streamer.producers) and not open_subscriptions(streamer) and not streamer.hub.tails:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"still held: producers={len(streamer.producers)} subscriptions={len(open_subscriptions(streamer))} "
        f"tails={list(streamer.hub.tails)}"
    )


def assert_no_tracebacks(records: list[logging.LogRecord]) -> None:
    bad = [r for r in records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [f"{r.name} {r.levelname} {r.getMessage()} {r.exc_info!r}" for r in bad]


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Garbage collection off: whatever the handler leaves open stays visible instead of being collected."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# -- clients that go away before the headers are written ------------------------------------------------------------


@pytest.mark.usefixtures("no_gc")
async def test_clients_that_disconnect_before_the_headers_leave_nothing_open_and_log_no_error(
    make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = web.Application()
    streamer = setup(app, Streamer(await make_store()))
    app.router.add_get("/stream/{stream_id}", resumable_handler(hello))
    runner, port = await serve(app)
    loop = asyncio.get_running_loop()
    try:
        for i in range(60):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            if i % 2:  # half of them reset the connection rather than closing it
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await loop.sock_sendall(sock, f"GET /stream/gone-{i % 7} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sock.close()
            if i % 3 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.3)
        await settle(streamer)
    finally:
        await runner.cleanup()
    assert_no_tracebacks(caplog.records)


# -- readers that never read ---------------------------------------------------------------------------------------


async def test_a_stalled_reader_is_aborted_after_send_timeout_and_leaves_nothing_open(
    make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Two clients never read their sockets: one from the start of the stream, one that comes after it ended. A
    # producer writes a few MB; each write to them blocks, and after send_timeout their connections are aborted.
    caplog.set_level(logging.DEBUG)
    events, payload = 3000, "x" * 1000

    async def big(_request: web.Request) -> AsyncIterator[str]:
        for _ in range(events):
            yield payload

    app = web.Application()
    streamer = setup(app, Streamer(await make_store(max_events=events + 1)))
    app.router.add_get("/stream/{stream_id}", resumable_handler(big, send_timeout=0.3, heartbeat=0.1))
    runner, port = await serve(app)
    stalled: list[socket.socket] = []
    loop = asyncio.get_running_loop()

    async def stall() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        stalled.append(sock)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, b"GET /stream/big HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")

    try:
        await stall()
        for _ in range(2000):
            if (state := await streamer.status("big")) is not None and state.finished:
                break
            await asyncio.sleep(0.01)
        assert state is not None
        assert (state.status, state.last_seq) == ("done", events + 1)
        await stall()  # a stalled reader of a finished stream: its replay blocks too
        await asyncio.sleep(0.5)
        await settle(streamer, timeout=5)
        for _ in range(250):  # both connections were aborted by the server
            if not runner.server or not runner.server.connections:
                break
            await asyncio.sleep(0.02)
        assert runner.server is not None
        assert runner.server.connections == []
    finally:
        for sock in stalled:
            sock.close()
        await runner.cleanup()
    assert_no_tracebacks(caplog.records)
    # Each was aborted (asserted above) by the watchdog, which logs it, or by the kernel first: the socket's
    # TCP_USER_TIMEOUT is the same send_timeout (tests/test_compat.py), and a client that acknowledges nothing for
    # that long is cut by whichever looks first.
    assert sum("read nothing for 0.3 s" in r.getMessage() for r in caplog.records) <= 2


async def test_send_timeout_defaults_to_30_seconds_and_must_be_positive() -> None:
    import inspect

    assert inspect.signature(resumable_handler).parameters["send_timeout"].default == 30.0
    for bad in [0, -1.0]:
        with pytest.raises(ValueError, match="send_timeout"):
            resumable_handler(hello, send_timeout=bad)


# -- fuzzed requests -----------------------------------------------------------------------------------------------

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]
HOSTILE_TEXT = [
    "",
    ".",
    "..",
    "...",
    "./a",
    "../etc/passwd",
    "%2e%2e",
    "%2E",
    "%252e%252e",
    "%00",
    "a%00b",
    "%0d%0a",
    "%ff",
    "%",
    "%zz",
    "a/b",
    "%2Fa",
    "\\",
    "a b",
    "+",
    "?",
    "#",
    "&stream_id=x",
    "ü",
    "日本",
    "\U0001f600",
    "\ud800",
    "a" * 128,
    "a" * 129,
    "b" * 5000,
    "-",
    ":",
    "_",
    "0123456789abcdef-1",
    "0123456789abcdef-0",
    "0123456789abcdef-01",
    "ABC-1",
    "a-1-",
    "-1",
    "1",
    "x" * 33 + "-1",
    "a-" + "9" * 70,
    "a-99999999999999999999",
    "\t",
    "\x01",
    "\x7f",
    "\x00",
    "null",
    "undefined",
    "[]",
    "{}",
    "'",
    '"',
    "<script>",
    "${x}",
    "%s%n",
]
SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-"


def random_text(rng: random.Random, known: list[str]) -> str:
    """A hostile or harmless string: from the list, valid-looking, random unicode/control characters or bytes."""
    kind = rng.randrange(8)
    if kind == 0:
        return rng.choice(HOSTILE_TEXT)
    if kind in (1, 7):
        return "".join(rng.choice(SAFE) for _ in range(rng.randrange(1, 20)))
    if kind == 2:
        return "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(1, 12)))
    if kind == 3:
        return "".join(chr(rng.randrange(0, 32)) for _ in range(rng.randrange(1, 6)))
    if kind == 4:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16))).decode("latin-1")
    if kind == 5 and known:
        return rng.choice(known)  # a real event id, or one of a real stream
    return "".join(rng.choice(SAFE + "%/.") for _ in range(rng.randrange(1, 300)))


def encode_url_part(rng: random.Random, text: str) -> bytes:
    """Percent-encoded, or raw (as bytes on the wire: the server's parser must cope with whatever comes)."""
    raw = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.9:
        return urllib.parse.quote_from_bytes(raw, safe=rng.choice(["", "/", "%", ".:_-"])).encode()
    return raw


def header_value(rng: random.Random, text: str) -> bytes:
    """Mostly a value the HTTP parser lets through to the handler; now and then one with raw control bytes."""
    raw = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.1:
        return raw.replace(b"\r\n", b"")
    return bytes(b for b in raw if (b >= 0x20 and b != 0x7F) or b == 0x09)


def fuzzed_request(rng: random.Random, known: list[str]) -> bytes:
    method = b"GET" if rng.random() < 0.7 else rng.choice(METHODS).encode()
    route = rng.randrange(3)
    query: list[bytes] = []
    if route == 0:
        path = b"/stream/" + encode_url_part(rng, random_text(rng, known))
    elif route == 1:
        path = b"/q"
        query.append(b"stream_id=" + encode_url_part(rng, random_text(rng, known)))
    else:
        path = b"/any/" + encode_url_part(rng, random_text(rng, known))
    if rng.random() < 0.4:
        query.append(b"last_event_id=" + encode_url_part(rng, random_text(rng, known)))
    if rng.random() < 0.1:
        query.append(encode_url_part(rng, random_text(rng, known)))
    target = path + (b"?" + b"&".join(query) if query else b"")
    headers = [b"Host: test", b"Connection: close"]
    if rng.random() < 0.5:
        headers.append(b"Last-Event-ID: " + header_value(rng, random_text(rng, known)))
    if rng.random() < 0.1:
        headers.append(b"Last-Event-ID: " + header_value(rng, random_text(rng, known)))  # twice
    for _ in range(rng.randrange(3)):
        name = rng.choice([b"Accept", b"X-Junk", b"Cookie", b"Origin", b"Cache-Control", b"Authorization", b"If-None"])
        headers.append(name + b": " + header_value(rng, random_text(rng, known)))
    if rng.random() < 0.05:
        headers.append(b"X-Long: " + b"y" * rng.choice([100, 9000, 70000]))
    body = b""
    if method in (b"POST", b"PUT", b"PATCH") and rng.random() < 0.5:
        body = random_text(rng, known).encode("utf-8", "surrogatepass")
        headers.append(b"Content-Length: %d" % len(body))
    return b"%s %s HTTP/1.1\r\n%s\r\n\r\n%s" % (method, target, b"\r\n".join(headers), body)


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b""  # the server may refuse a garbled request by closing
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_fuzzed_requests_get_plain_refusals_no_500_no_traceback_nothing_started(
    make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rng = random.Random(20240611)
    runs: list[str] = []

    async def produce(request: web.Request) -> AsyncIterator[str]:
        runs.append(request.path)
        yield "a"
        yield "b"

    def authorize(_request: web.Request, stream_id: str) -> bool:
        return not stream_id.startswith("deny")

    app = web.Application()
    streamer = setup(app, Streamer(await make_store()))
    handler = resumable_handler(produce, authorize=authorize, send_timeout=5)
    app.router.add_get("/stream/{stream_id}", handler)
    app.router.add_get("/q", handler)
    app.router.add_route("*", "/any/{stream_id}", handler)
    runner, port = await serve(app)
    known: list[str] = ["fuzz-known", "deny-1"]
    statuses: dict[int, int] = {}
    try:
        for case in range(600):
            request = fuzzed_request(rng, known)
            before = len(runs)
            response = await exchange(port, request)
            status_line = response.split(b"\r\n", 1)[0]
            assert not response or status_line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 400 ")), (request, response[:200])
            status = int(status_line.split()[1]) if response else 0
            statuses[status] = statuses.get(status, 0) + 1
            assert status < 500, (case, request, response[:500])
            assert b"Traceback" not in response, (case, request, response[:500])
            if status != 200 or request.startswith(b"HEAD "):  # refused (or 204/410), or a HEAD: nothing started
                assert len(runs) == before, (case, request, response[:300])
            else:
                assert request.startswith(b"GET "), (case, request)
                ids = [line[4:].decode() for line in response.split(b"\n") if line.startswith(b"id: ")]
                known.extend([*ids[:2], *ids[-1:]])
    finally:
        await runner.cleanup()
    # aiohttp's own HTTP parser logs each request it cannot parse (a control character in a header, say) with a
    # traceback before any handler runs: that is aiohttp's, not this library's, and is set aside here.
    parser_refusals = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], HttpProcessingError)]
    assert all(r.name == "aiohttp.server" for r in parser_refusals)
    assert_no_tracebacks([r for r in caplog.records if r not in parser_refusals])
    await settle(streamer)
    assert len(runs) > 5, statuses  # the generator does reach the producer
    assert {200, 400, 405} <= set(statuses), statuses


# -- careless producers: fuzzed payloads --------------------------------------------------------------------------


def _payloads(rng: random.Random) -> list[Any]:
    """What a careless producer yields: mostly fine items, now and then one that cannot be an event."""
    from resumable_sse import Event

    fine: list[Any] = [
        lambda: "".join(rng.choice("ab é日🎉\n\r\t<>&") for _ in range(rng.randrange(0, 12))),
        lambda: "tok" * rng.randrange(0, 4),
        lambda: "é日🎉".encode() * rng.randrange(0, 3),
        lambda: {"n": rng.randrange(100), "s": "x\ny"},
        lambda: [1, "two", None],
        lambda: Event(data=rng.choice(["a", b"b", {"c": 1}]), event=rng.choice([None, "note", "tick"])),
    ]
    bad: list[Any] = [
        lambda: "ok\ud800",  # a lone surrogate: not text
        lambda: b"\xff\xfe",  # bytes that are not UTF-8
        lambda: 42,
        lambda: None,
        lambda: object(),
        lambda: "x" * 5_000,  # over max_event_bytes below
    ]
    items = [rng.choice(fine)() for _ in range(rng.randrange(0, 8))]
    if rng.random() < 0.6:
        items.append(rng.choice(bad)())
        items += [rng.choice(fine)() for _ in range(rng.randrange(0, 3))]  # never sent: the stream ended before
    return items


def _expected(item: Any) -> tuple[str | None, str] | None:
    """The event a payload becomes, or None when it cannot be one."""
    from resumable_sse import Event

    def text(data: Any) -> str | None:
        if isinstance(data, str):
            try:
                data.encode("utf-8")
            except UnicodeEncodeError:
                return None
            return data if len(data.encode()) <= 4_000 else None
        if isinstance(data, bytes):
            try:
                return text(data.decode("utf-8"))
            except UnicodeDecodeError:
                return None
        if isinstance(data, (dict, list)):
            return json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        return None

    if isinstance(item, Event):
        data = text(item.data)
        return None if data is None else (item.event, data)
    data = text(item)
    return None if data is None else (None, data)


async def test_fuzzed_producer_payloads_end_each_stream_honestly_on_every_store(
    make_store: StoreFactory, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Each stream delivers exactly the events before the first payload that cannot be one, then `error` with a safe
    # message (never a traceback), or `done`; every store the same; never a 500.
    from .helpers import parse

    rng = random.Random(20261126)
    store = await make_store()
    plans: dict[str, list[Any]] = {f"p{i}": _payloads(rng) for i in range(150)}

    async def produce(request: web.Request) -> AsyncIterator[Any]:
        for item in plans[request.match_info["stream_id"]]:
            yield item

    app = web.Application()
    setup(app, Streamer(store, max_event_bytes=4_000))
    app.router.add_get("/stream/{stream_id}", resumable_handler(produce))
    client = await aiohttp_client(app)
    safe = {"an event was not valid text", "an event was too large", "the stream failed"}
    with caplog.at_level(logging.WARNING):
        for stream_id, items in plans.items():
            response = await client.get(f"/stream/{stream_id}")
            assert response.status == 200, stream_id
            body = await response.read()
            assert b"Traceback" not in body
            events = parse(body)
            expected: list[tuple[str | None, str]] = []
            ok = True
            for item in items:
                event = _expected(item)
                if event is None:
                    ok = False
                    break
                expected.append(event)
            assert [(e.event, e.data.replace("\r\n", "\n").replace("\r", "\n")) for e in events[:-1]] == [
                (event, data.replace("\r\n", "\n").replace("\r", "\n")) for event, data in expected
            ], stream_id
            terminal = events[-1]
            if ok:
                assert (terminal.event, terminal.data) == ("done", '{"state":"done"}'), stream_id
            else:
                assert terminal.event == "error", stream_id
                assert json.loads(terminal.data)["message"] in safe, stream_id
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name != "resumable_sse"]
