"""One server of ``alternatives.py``: the same producer behind each library, on ``GET /s/{stream_id}``.

Runs as ``python _alt_server.py ROW PORT REDIS_URL`` under the interpreter the driver chooses: the benchmark's own
for every row but ``legacy-*`` (resumable-sse 0.1.0 from PyPI, which shares this distribution's name and so runs from
a virtual environment of its own). It imports only what its row needs. Query: ``n`` tokens, ``pace`` ms between
them; ``skip`` (resumable-stream's resume position: characters of the body already read).

The producer yields ``t1`` ... ``tN`` then ends; every row ends its response with a terminal event (``done``, or
the library's own: resumable-sse 0.1.0 sends ``end``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any


async def tokens(query: Any) -> AsyncIterator[str]:
    count = int(query.get("n", "100"))
    pace = float(query.get("pace", "0")) / 1000
    for index in range(1, count + 1):
        yield f"t{index}"
        if pace:
            await asyncio.sleep(pace)


def aiohttp_app(row: str, redis_url: str) -> Any:
    from aiohttp import web

    app = web.Application()
    if row == "aiohttp-sse":
        from aiohttp_sse import sse_response

        async def plain(request: web.Request) -> web.StreamResponse:
            async with sse_response(request) as response:
                index = 0
                try:
                    async for token in tokens(request.query):
                        index += 1
                        await response.send(token, id=str(index))
                    await response.send("{}", event="done")
                except ConnectionResetError:
                    pass  # the client left (the resume tests disconnect on purpose): the stream is lost
            return response

        app.router.add_get("/s/{stream_id}", plain)
    elif row in ("memory", "redis"):
        from resumable_sse import MemoryStore, RedisStore, Streamer, resumable_handler

        store = MemoryStore() if row == "memory" else RedisStore.from_url(redis_url)
        streamer = Streamer(store)

        async def produce(request: web.Request) -> AsyncIterator[str]:
            async for token in tokens(request.query):
                yield token

        app.router.add_get("/s/{stream_id}", resumable_handler(produce, streamer=streamer))
        app.on_cleanup.append(lambda _app: streamer.close())
    elif row == "resumable-stream":
        from resumable_stream import RedisPublisher, RedisSubscriber, create_resumable_stream_context

        contexts: list[Any] = []

        async def start(_app: web.Application) -> None:
            # Its README's create_resumable_stream_context(redis_url=...) raises TypeError in 0.2.0: pass the
            # adapters it would have made, connected.
            publisher, subscriber = RedisPublisher(redis_url), RedisSubscriber(redis_url)
            await publisher.connect()
            await subscriber.connect()
            contexts.append(
                create_resumable_stream_context(key_prefix="bench", publisher=publisher, subscriber=subscriber)
            )

        app.on_startup.append(start)

        async def resumable(request: web.Request) -> web.StreamResponse:
            query = request.query

            async def make() -> AsyncIterator[str]:
                index = 0
                async for token in tokens(query):
                    index += 1
                    yield f"id: {index}\ndata: {token}\n\n"
                yield "event: done\ndata: {}\n\n"

            skip = int(query["skip"]) if "skip" in query else None
            stream = await contexts[0].resumable_stream(request.match_info["stream_id"], make, skip_characters=skip)
            if stream is None:
                return web.Response(status=422, text="the stream is already done\n")
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await response.prepare(request)
            async for chunk in stream:
                await response.write(chunk.encode())
            await response.write_eof()
            return response

        app.router.add_get("/s/{stream_id}", resumable)
    else:
        raise SystemExit(f"unknown row {row}")
    return app


def starlette_app(row: str, redis_url: str) -> Any:
    from sse_starlette.sse import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    if row == "sse-starlette":

        async def plain(request: Request) -> EventSourceResponse:
            async def events() -> AsyncIterator[dict[str, str]]:
                index = 0
                async for token in tokens(request.query_params):
                    index += 1
                    yield {"id": str(index), "data": token}
                yield {"event": "done", "data": "{}"}

            return EventSourceResponse(events())

        return Starlette(routes=[Route("/s/{stream_id}", plain)])
    # resumable-sse 0.1.0 (in its own virtual environment), as its README serves it
    from resumable_sse.factory import get_streamer  # type: ignore[import-not-found]

    if row == "legacy-memory":
        streamer = get_streamer(backend="memory")
    else:
        import redis.asyncio

        streamer = get_streamer(backend="redis", redis_client=redis.asyncio.Redis.from_url(redis_url))

    async def legacy(request: Request) -> EventSourceResponse:
        last_id = request.headers.get("last-event-id", "0")
        stream_id = request.path_params["stream_id"]
        events = streamer.stream(session_id=stream_id, generator=tokens(request.query_params), last_id=last_id)
        return EventSourceResponse(events)

    return Starlette(routes=[Route("/s/{stream_id}", legacy)])


def main() -> None:
    row, port, redis_url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if row in ("sse-starlette", "legacy-memory", "legacy-redis"):
        import uvicorn

        uvicorn.run(starlette_app(row, redis_url), host="127.0.0.1", port=port, log_level="warning")
    else:
        from aiohttp import web

        web.run_app(aiohttp_app(row, redis_url), host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
