"""Live servers for the client and command-line tests: the real resumable handler (aiohttp) and endpoint (ASGI, under
uvicorn) on real sockets, a scripted server for the wire cases the real one never produces, and a TCP proxy that cuts
connections at random bytes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from resumable_sse import Event, MemoryStore, ProducerError, Streamer, resumable_handler, setup

RETRY_MS = 5  # the real server's retry: tells clients to come back after 5 ms, to keep the tests fast


def mixed_payloads(count: int) -> list[Any]:
    """Payloads of every shape a producer yields: text with line breaks of each kind, non-ASCII, JSON, typed."""
    payloads: list[Any] = []
    for i in range(count):
        if i % 7 == 3:
            payloads.append(f"line {i}\nsecond\r\nthird\rfourth")
        elif i % 5 == 1:
            payloads.append(f"héllo {i} → 世界 🎉")
        elif i % 3 == 2:
            payloads.append(Event({"n": i, "text": "x" * (i % 50)}, event="tick"))
        elif i % 11 == 0:
            payloads.append({"n": i, "list": [1, 2, 3]})
        else:
            payloads.append(f"event {i}")
    return payloads


def expected_events(payloads: list[Any]) -> list[tuple[str, str]]:
    """What a client receives for ``payloads``: (event type, data), line breaks normalised to LF."""
    out: list[tuple[str, str]] = []
    for item in payloads:
        event = "message"
        if isinstance(item, Event):
            event, item = item.event or "message", item.data
        if isinstance(item, (dict, list)):
            item = json.dumps(item, separators=(",", ":"), ensure_ascii=False)
        out.append((event, item.replace("\r\n", "\n").replace("\r", "\n")))
    return out


def path_param(request: Any, name: str) -> str:
    """A path parameter of an aiohttp request (``match_info``) or a Starlette one (``path_params``)."""
    params = request.match_info if isinstance(request, web.BaseRequest) else request.path_params
    return str(params[name])


async def _produce(request: Any) -> AsyncIterator[Any]:
    """Producers chosen by stream id: ``count.N``, ``mixed.N``, ``paced.N``, ``fail``, ``wait``."""
    kind, _, arg = path_param(request, "stream_id").partition(".")
    if kind == "count":
        for i in range(int(arg)):
            yield f"event {i}"
    elif kind == "mixed":
        for i, payload in enumerate(mixed_payloads(int(arg))):
            yield payload
            if i % 25 == 0:
                await asyncio.sleep(0.001)  # part of the stream is live, part is caught up from the log
    elif kind == "paced":  # the same payloads at about 500 events/s: reconnects land in the live tail
        for payload in mixed_payloads(int(arg)):
            yield payload
            await asyncio.sleep(0.002)
    elif kind == "fail":
        yield "a"
        raise ProducerError("boom: the model refused")
    elif kind == "wait":
        yield "a"
        await asyncio.Event().wait()
    else:
        raise ValueError(kind)


def resumable_app() -> web.Application:
    """The real resumable handler at ``/stream/{stream_id}`` on a memory store."""
    app = web.Application()
    setup(app, Streamer(MemoryStore(), grace_period=0.1))
    app.router.add_get("/stream/{stream_id}", resumable_handler(_produce, retry=RETRY_MS, heartbeat=0.2))
    return app


def resumable_asgi_app(streamer: Streamer | None = None) -> Any:
    """The same producers behind ``resumable_endpoint`` at ``/stream/{stream_id}``, as a Starlette application whose
    lifespan owns ``streamer`` (default: a new one on a memory store)."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from resumable_sse.starlette import resumable_endpoint, streamer_lifespan

    streamer = streamer or Streamer(MemoryStore(), grace_period=0.1)
    endpoint = resumable_endpoint(_produce, retry=RETRY_MS, heartbeat=0.2)
    return Starlette(routes=[Route("/stream/{stream_id}", endpoint)], lifespan=streamer_lifespan(streamer))


class Uvicorn:
    """An ASGI application served by a real uvicorn on a free port of 127.0.0.1, on the test's own event loop (so a
    test can look at the application's Streamer while it serves). ``async with Uvicorn(app) as server``."""

    def __init__(self, app: Any, *, graceful: float = 2.0) -> None:
        import uvicorn

        config = uvicorn.Config(app, lifespan="on", log_level="warning", timeout_graceful_shutdown=graceful)
        self.server = uvicorn.Server(config)
        # pytest keeps the process's signals: uvicorn >= 0.29 takes them in capture_signals(), older ones in
        # install_signal_handlers().
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        self.server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.task: asyncio.Task[None] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> Uvicorn:
        self.task = asyncio.ensure_future(self.server.serve(sockets=[self.sock]))
        for _ in range(1000):
            if self.server.started or self.task.done():
                break
            await asyncio.sleep(0.01)
        if not self.server.started:
            await self.close()
            raise RuntimeError("uvicorn did not start")
        return self

    async def close(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)
        self.sock.close()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


@dataclass
class Scripted:
    """A server that answers each request with the next scripted reply and records the requests' headers.

    A reply is ``(status, headers, body)``; a 200 with no Content-Type is sent as ``text/event-stream``, streamed,
    then the connection is closed (a server-side end of the stream).
    """

    replies: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.headers))
        status, headers, body = self.replies.pop(0) if self.replies else (500, {}, b"script exhausted")
        if status == 200 and "Content-Type" not in headers:
            response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", **headers})
            await response.prepare(request)
            await response.write(body)
            await response.write_eof()
            return response
        return web.Response(status=status, headers=headers, body=body)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/s", self.handle)
        return app


class CuttingProxy:
    """A TCP proxy that forwards a random number of the server's bytes on each connection, then cuts it.

    Cuts land anywhere: in the response headers, in the middle of a field, of a CRLF, of a UTF-8 character. Half of
    them are an abortive close (RST), half an orderly one (FIN).
    """

    def __init__(self, upstream_port: int, seed: int, max_bytes: int) -> None:
        self.upstream_port = upstream_port
        self.rng = random.Random(seed)
        self.max_bytes = max_bytes
        self.connections = 0
        self.cuts = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> CuttingProxy:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(reader, writer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        budget = self.rng.randint(1, self.max_bytes)
        abort = self.rng.random() < 0.5
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def upstream() -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    up_writer.write(data)
                    await up_writer.drain()

        async def downstream() -> bool:
            """Forward until the budget is spent (True: cut) or the server ends (False)."""
            left = budget
            with contextlib.suppress(OSError):
                while data := await up_reader.read(min(left, 65536)):
                    writer.write(data)
                    await writer.drain()
                    left -= len(data)
                    if left == 0:
                        return True
            return False

        up_task = asyncio.ensure_future(upstream())
        down_task = asyncio.ensure_future(downstream())
        try:
            await asyncio.wait({up_task, down_task}, return_when=asyncio.FIRST_COMPLETED)
            if down_task.done() and down_task.result():
                self.cuts += 1
        finally:
            for task in (up_task, down_task):
                task.cancel()
            await asyncio.gather(up_task, down_task, return_exceptions=True)
            if abort:
                writer.transport.abort()
            else:
                writer.close()
            up_writer.transport.abort()


class FaultProxy:
    """A TCP proxy in front of a server (Redis, for the fault tests) that the test steers while it runs.

    ``cut()`` aborts every open connection (RST both ways; new connections are served as usual); ``stall()`` stops
    forwarding in both directions while the connections stay open (data waits in the proxy) until ``flow()``;
    ``slow(delay)`` forwards each chunk ``delay`` seconds late (``slow(0)`` ends that).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.delay = 0.0
        self.connections = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> FaultProxy:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        self.cut()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    def cut(self) -> None:
        for client, upstream in list(self._open):
            client.transport.abort()
            upstream.transport.abort()
        self._open.clear()

    def stall(self) -> None:
        self._flowing.clear()

    def flow(self) -> None:
        self._flowing.set()

    def slow(self, delay: float) -> None:
        self.delay = delay

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(reader, writer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                await self._flowing.wait()
                if self.delay:
                    await asyncio.sleep(self.delay)
                sink.write(data)
                await sink.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._open.add(pair)
        tasks = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._pump(up_reader, writer)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._open.discard(pair)
            writer.transport.abort()
            up_writer.transport.abort()
