"""Small test helpers: a strict reading of SSE bodies and producers that tests can steer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from resumable_sse import Entry, EventLog, StreamNotFound


@dataclass
class SSE:
    """One parsed event."""

    id: str | None
    event: str | None
    data: str


def parse(body: str | bytes) -> list[SSE]:
    """Parse an SSE body written by this library (LF line ends); comments and retry lines are skipped."""
    text = body.decode() if isinstance(body, bytes) else body
    events = []
    for block in text.split("\n\n"):
        id_ = event = None
        data: list[str] = []
        for line in block.split("\n"):
            if not line or line.startswith((":", "retry: ")):
                continue
            name, _, value = line.partition(": ")
            if name == "id":
                id_ = value
            elif name == "event":
                event = value
            elif name == "data":
                data.append(value)
            else:
                raise AssertionError(f"unexpected line {line!r}")
        if data:
            events.append(SSE(id_, event, "\n".join(data)))
    return events


@dataclass
class Gate:
    """A producer that yields ``tokens`` one at a time, each only after the test opens the gate for it."""

    tokens: list[Any]
    runs: int = 0
    closed: bool = False
    opened: asyncio.Queue[None] = field(default_factory=asyncio.Queue)

    def release(self, count: int = 1) -> None:
        for _ in range(count):
            self.opened.put_nowait(None)

    async def produce(self, _request: web.Request | None = None) -> AsyncIterator[Any]:
        self.runs += 1
        try:
            for token in self.tokens:
                await self.opened.get()
                yield token
        finally:
            self.closed = True


async def read_entries(store: EventLog, stream_id: str, after: int = 0, limit: int = 100) -> list[Entry]:
    """The entries of one read; StreamNotFound when the store does not know the stream."""
    page = await store.read(stream_id, after, limit)
    if page is None:
        raise StreamNotFound(stream_id)
    return list(page.entries)


async def renew_one(store: EventLog, stream_id: str, token: str, lease: float) -> bool:
    """Renew one producer's lease; True when it still owns the stream."""
    return (await store.renew([(stream_id, token)], lease))[0] >= 0


async def end_if_expired(store: EventLog, stream_id: str, data: str = '{"state":"lost"}') -> bool:
    """Audit one stream; True when the audit ended it as lost (its producer's lease had run out)."""
    before = await store.state(stream_id)
    [after] = await store.audit([stream_id], data)
    return before is not None and not before.finished and after is not None and after.status == "lost"


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on a free port of 127.0.0.1: its runner (clean it up) and the port."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def body_of(handler: Any) -> bytes:
    """Serve ``handler`` at ``/`` on a free port, GET it once and return the whole body."""
    import aiohttp

    app = web.Application()
    app.router.add_get("/", handler)
    runner, port = await serve(app)
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/") as response:
            return await response.read()
    finally:
        await runner.cleanup()


async def until(condition: Callable[[], object], what: str, *, timeout: float = 5.0) -> None:
    """Wait until ``condition()`` is true, looking every 5 ms for at most ``timeout`` seconds of the loop's clock (for
    facts a task reports a step or two after the test's last await); else fail, naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
