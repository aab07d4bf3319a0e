"""A resumable-sse 0.1 application, as its users wrote it: FastAPI, sse-starlette, ``resumable_sse.factory``.

The lines between the markers are the 0.1 snippet of issue 13, verbatim; the test imports this module (fresh each
time, for a new memory store) and serves it with uvicorn. ``RUNS`` counts how often the generator's body ran.
"""

import asyncio

from fastapi import FastAPI, Request
from sse_starlette.sse import EventSourceResponse

app = FastAPI()
RUNS: list[str] = []
TOKENS = [f"token {i}" for i in range(20)]


async def fake_generator():  # type: ignore[no-untyped-def]  # as 0.1 users wrote it
    RUNS.append("run")
    for token in TOKENS:
        await asyncio.sleep(0.005)
        yield token


# -- the 0.1 snippet, verbatim --------------------------------------------------------------------------------------
from resumable_sse.factory import get_streamer  # noqa: E402

streamer = get_streamer(backend="memory")  # or backend="redis", redis_client=redis.asyncio.Redis()


@app.get("/stream")
async def stream(request: Request, session_id: str):  # type: ignore[no-untyped-def]
    return EventSourceResponse(streamer.stream(session_id=session_id, generator=fake_generator()))


# -- end of the snippet ---------------------------------------------------------------------------------------------
