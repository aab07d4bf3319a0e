"""The ASGI endpoint beyond the shared HTTP suite (tests/test_http.py runs that on both adapters): FastAPI's and
Starlette's ways of routing it, the lifespan helper, plain producers in a worker thread, the request given to the
hooks, a client that goes away, and the real clients (``resumable_sse.client`` and ``resumable-sse tail``) against
it, all through uvicorn on a free port."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount, Route

from resumable_sse import MemoryStore, Streamer
from resumable_sse.client import StreamGone, connect
from resumable_sse.exceptions import StreamEnded
from resumable_sse.starlette import STATE_KEY, resumable_endpoint, streamer_lifespan

from ._live_server import CuttingProxy, Uvicorn, expected_events, mixed_payloads, resumable_asgi_app
from .helpers import Gate, parse


async def hello(_request: Request) -> AsyncIterator[str]:
    for token in ["Hello", ", ", "world"]:
        yield token


async def body_of(url: str, **options: Any) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url, **options) as response:
        return response.status, await asyncio.wait_for(response.read(), 10)


async def test_fastapi_add_api_route_and_starlette_route_serve_the_same_bytes() -> None:
    fastapi_streamer, starlette_streamer = Streamer(), Streamer()
    fastapi_app = FastAPI(lifespan=streamer_lifespan(fastapi_streamer))
    fastapi_app.add_api_route("/stream/{stream_id}", resumable_endpoint(hello))
    starlette_app = Starlette(
        routes=[Route("/stream/{stream_id}", resumable_endpoint(hello))], lifespan=streamer_lifespan(starlette_streamer)
    )
    bodies = []
    for app, streamer in [(fastapi_app, fastapi_streamer), (starlette_app, starlette_streamer)]:
        async with Uvicorn(app) as server:
            assert getattr(app.state, STATE_KEY) is streamer  # the endpoint found the lifespan's streamer
            status, body = await body_of(server.url("/stream/s1"))
            state = await streamer.status("s1")
            assert state is not None
            bodies.append(body.replace(state.epoch.encode(), b"EPOCH"))
            assert status == 200
    assert (
        bodies[0]
        == bodies[1]
        == (
            b"retry: 2000\nid: EPOCH-1\ndata: Hello\n\nid: EPOCH-2\ndata: , \n\nid: EPOCH-3\ndata: world\n\n"
            b'id: EPOCH-4\nevent: done\ndata: {"state":"done"}\n\n'
        )
    )


def test_fastapi_documents_the_route_in_its_openapi_schema() -> None:
    app = FastAPI()
    app.add_api_route("/stream/{stream_id}", resumable_endpoint(hello))
    operation = app.openapi()["paths"]["/stream/{stream_id}"]["get"]
    assert operation["summary"] == "Resumable Stream"
    assert "Last-Event-ID" in operation["description"]


async def test_without_the_lifespan_each_app_gets_an_embedded_memory_store() -> None:
    app = FastAPI()
    app.add_api_route("/stream/{stream_id}", resumable_endpoint(hello))
    async with Uvicorn(app) as server:
        first = parse((await body_of(server.url("/stream/a")))[1])
        again = parse((await body_of(server.url("/stream/a"), headers={"Last-Event-ID": first[1].id or ""}))[1])
    assert [e.data for e in again] == ["world", '{"state":"done"}']


async def test_an_endpoint_in_a_mounted_app_uses_the_outer_apps_lifespan_streamer() -> None:
    """Starlette hands a mounted app's endpoints the inner app as ``scope["app"]``, whose state has no streamer and
    whose own lifespan never runs: the lifespan's streamer comes through the lifespan state instead."""
    streamer = Streamer()
    inner = Starlette(routes=[Route("/stream/{stream_id}", resumable_endpoint(hello))])
    outer = Starlette(routes=[Mount("/api", inner)], lifespan=streamer_lifespan(streamer))
    async with Uvicorn(outer) as server:
        status, body = await body_of(server.url("/api/stream/m1"))
        assert status == 200
        assert b"event: done" in body
        state = await streamer.status("m1")  # produced by the lifespan's streamer, not an embedded one
        assert state is not None
        assert state.status == "done"


async def test_a_plain_generator_producer_runs_in_a_worker_thread_and_blocks_nothing() -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def blocking(_request: Request) -> Iterator[str]:
        threads.append(threading.get_ident())
        for i in range(5):
            time.sleep(0.02)  # a legacy SDK that blocks
            yield f"b{i}"

    app = FastAPI(lifespan=streamer_lifespan(Streamer()))
    app.add_api_route("/stream/{stream_id}", resumable_endpoint(blocking))
    async with Uvicorn(app) as server:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        _, body = await body_of(server.url("/stream/blk"))
        ticker.cancel()
    assert [e.data for e in parse(body)] == ["b0", "b1", "b2", "b3", "b4", '{"state":"done"}']
    assert threads and threads[0] != loop_thread
    assert ticks >= 5  # the loop kept running while the producer slept


async def test_hooks_get_the_starlette_request() -> None:
    seen: list[tuple[str, str]] = []

    def authorize(request: Request, stream_id: str) -> bool:
        seen.append((request.headers.get("authorization", ""), stream_id))
        return request.headers.get("authorization") == "Bearer ok"

    def by_user(request: Request) -> str:
        return f"user:{request.path_params['user']}"

    app = Starlette(
        routes=[Route("/u/{user}", resumable_endpoint(hello, stream_id=by_user, authorize=authorize))],
        lifespan=streamer_lifespan(Streamer()),
    )
    async with Uvicorn(app) as server:
        assert (await body_of(server.url("/u/7")))[0] == 403
        status, body = await body_of(server.url("/u/7"), headers={"Authorization": "Bearer ok"})
    assert status == 200
    assert len(parse(body)) == 4
    assert seen == [("", "user:7"), ("Bearer ok", "user:7")]


async def test_extra_headers_are_sent_and_cannot_replace_the_event_streams_own() -> None:
    headers = {"X-Trace": "t1", "content-type": "text/html", "Cache-Control": "max-age=60"}
    app = Starlette(routes=[Route("/stream/{stream_id}", resumable_endpoint(hello, headers=headers))])
    async with (
        Uvicorn(app) as server,
        aiohttp.ClientSession() as session,
        session.get(server.url("/stream/h")) as response,
    ):
        await response.read()
    assert response.headers["X-Trace"] == "t1"
    assert response.headers.getall("Content-Type") == ["text/event-stream"]
    assert response.headers.getall("Cache-Control") == ["no-cache"]
    assert response.headers["X-Accel-Buffering"] == "no"


async def test_a_client_that_goes_away_is_noticed_at_once_without_a_heartbeat() -> None:
    gate = Gate(["a", "b"])
    streamer = Streamer()
    app = Starlette(
        routes=[Route("/stream/{stream_id}", resumable_endpoint(gate.produce, heartbeat=60))],
        lifespan=streamer_lifespan(streamer),
    )
    async with Uvicorn(app) as server, aiohttp.ClientSession() as session:
        response = await session.get(server.url("/stream/away"))
        gate.release()
        assert parse(await response.content.readuntil(b"\n\n"))[0].data == "a"
        tail = streamer.hub.tails["away"]
        assert tail.readers - tail.producing == 1
        response.close()  # the client goes away while the stream is quiet (heartbeat in 60 s)
        for _ in range(200):
            if tail.readers - tail.producing == 0:
                break
            await asyncio.sleep(0.01)
        assert tail.readers - tail.producing == 0  # its subscription was closed on http.disconnect
        gate.release()
        _, body = await body_of(server.url("/stream/away"))
    assert [e.data for e in parse(body)] == ["a", "b", '{"state":"done"}']
    assert gate.runs == 1


async def test_the_lifespan_ends_producers_with_the_grace_period_at_shutdown() -> None:
    gate = Gate([f"t{i}" for i in range(100)])
    store = MemoryStore()
    app = FastAPI(lifespan=streamer_lifespan(Streamer(store, grace_period=0.2)))
    app.add_api_route("/stream/{stream_id}", resumable_endpoint(gate.produce))
    server = await Uvicorn(app, graceful=0.3).__aenter__()
    async with aiohttp.ClientSession() as session:
        response = await session.get(server.url("/stream/sd"))
        gate.release()
        assert parse(await response.content.readuntil(b"\n\n"))[0].data == "t0"
        await asyncio.wait_for(server.close(), 10)  # uvicorn cancels the open response after 0.3 s
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()  # cut without a terminal event: EventSource reconnects elsewhere
    state = await store.state("sd")
    assert state is not None
    assert state.status == "cancelled"
    assert gate.closed


# -- the real clients ----------------------------------------------------------------------------------------------


@pytest.fixture
async def asgi_server() -> AsyncIterator[tuple[Uvicorn, Streamer]]:
    streamer = Streamer(MemoryStore(), grace_period=0.1)
    async with Uvicorn(resumable_asgi_app(streamer)) as server:
        yield server, streamer


@pytest.mark.parametrize(("kind", "seed"), [("mixed", 11), ("paced", 12)])
async def test_the_client_gets_every_event_exactly_once_across_random_cuts(
    asgi_server: tuple[Uvicorn, Streamer], kind: str, seed: int
) -> None:
    server, _ = asgi_server
    count = 300
    async with CuttingProxy(server.port, seed=seed, max_bytes=1500) as proxy:
        events = connect(f"http://127.0.0.1:{proxy.port}/stream/{kind}.{count}", reconnect_delay=0.0, max_delay=0.05)
        async with events:
            received = [event async for event in events]
    assert proxy.cuts >= 10
    assert received[-1].event == "done"
    assert [(e.event, e.data) for e in received[:-1]] == expected_events(mixed_payloads(count))
    epoch = received[0].id.rpartition("-")[0] if received[0].id else ""
    assert [e.id for e in received] == [f"{epoch}-{n}" for n in range(1, count + 2)]


async def test_the_client_sees_errors_204_and_410(asgi_server: tuple[Uvicorn, Streamer]) -> None:
    server, _ = asgi_server
    with pytest.raises(StreamEnded) as ended:
        async with connect(server.url("/stream/fail")) as events:
            assert [e.data async for e in events] == ["a"]
    assert (ended.value.state, ended.value.message) == ("error", "boom: the model refused")
    async with connect(server.url("/stream/count.2")) as events:
        done = [e async for e in events][-1]
    async with connect(server.url("/stream/count.2"), last_event_id=done.id) as events:
        assert [e async for e in events] == []  # 204: the end of a finished stream
    with pytest.raises(StreamGone):
        async with connect(server.url("/stream/count.9"), last_event_id="0123456789abcdef-1") as events:
            [e async for e in events]


async def run_tail(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "resumable_sse",
        "tail",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_tail_follows_resumes_and_reports_how_the_stream_ended(asgi_server: tuple[Uvicorn, Streamer]) -> None:
    server, streamer = asgi_server
    assert await run_tail(server.url("/stream/count.3")) == (0, "event 0\nevent 1\nevent 2\n", "")
    status, out, _ = await run_tail("--json", server.url("/stream/count.3"))
    records = [json.loads(line) for line in out.splitlines()]
    assert status == 0
    assert [(r["event"], r["data"]) for r in records] == [
        ("message", "event 0"),
        ("message", "event 1"),
        ("message", "event 2"),
        ("done", '{"state":"done"}'),
    ]
    status, out, _ = await run_tail("--last-event-id", records[0]["id"], server.url("/stream/count.3"))
    assert (status, out) == (0, "event 1\nevent 2\n")
    status, out, err = await run_tail(server.url("/stream/fail"))
    assert (status, out) == (3, "a\n")
    assert "boom: the model refused" in err
    status, _, _ = await run_tail("--last-event-id", "0123456789abcdef-1", server.url("/stream/never"))
    assert status == 6  # 410 Gone
    assert await streamer.status("never") is None


async def test_tail_reconnects_through_cuts_and_prints_each_event_once(asgi_server: tuple[Uvicorn, Streamer]) -> None:
    server, _ = asgi_server
    count = 150
    async with CuttingProxy(server.port, seed=7, max_bytes=1200) as proxy:
        status, out, err = await run_tail("--json", f"http://127.0.0.1:{proxy.port}/stream/mixed.{count}")
    assert status == 0
    assert proxy.cuts >= 5
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["event"], r["data"]) for r in records[:-1]] == expected_events(mixed_payloads(count))
    assert "reconnecting" in err


def test_without_starlette_the_package_imports_and_the_adapter_says_how_to_get_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None\n"
        "import resumable_sse, resumable_sse.factory\n"
        "try:\n"
        "    import resumable_sse.starlette\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "pip install 'resumable-sse[starlette]'" in result.stdout
