"""Both HTTP adapters behind one interface, so that one suite holds them to the same protocol.

A :class:`Harness` makes endpoints with one adapter (``aiohttp``: :func:`resumable_sse.resumable_handler`;
``starlette``: :func:`resumable_sse.starlette.resumable_endpoint`) and serves them on a real server on a free port
of 127.0.0.1 (aiohttp's own; uvicorn for ASGI), each application with its Streamer registered the adapter's way
(``setup()``, or ``streamer_lifespan()``). Requests go through a real :class:`aiohttp.ClientSession`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from resumable_sse import MemoryStore, Streamer, resumable_handler, setup

from ._live_server import Uvicorn

ADAPTERS = ("aiohttp", "starlette")
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]  # Starlette routes a function to GET alone


class Client:
    """Requests to one server by path, through a real :class:`aiohttp.ClientSession`; every response is released at
    :meth:`close` (a test may leave one unread, as aiohttp's own test client allows)."""

    def __init__(self, port: int) -> None:
        self.session = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}")
        self.responses: list[aiohttp.ClientResponse] = []

    async def request(self, method: str, path: str, **options: Any) -> aiohttp.ClientResponse:
        response = await self.session.request(method, path, **options)
        self.responses.append(response)
        return response

    async def get(self, path: str, **options: Any) -> aiohttp.ClientResponse:
        return await self.request("GET", path, **options)

    async def close(self) -> None:
        for response in self.responses:
            response.close()
        await self.session.close()


@dataclass
class Route:
    """A path served by an endpoint; ``any_method``: every method reaches it (else GET, and HEAD with it)."""

    path: str
    endpoint: Any
    any_method: bool = False


class Harness:
    """Endpoints of one adapter, served for real; :meth:`close` stops every server and session it made."""

    def __init__(self, adapter: str) -> None:
        self.adapter = adapter
        self._closers: list[Callable[[], Awaitable[Any]]] = []
        self.port = 0
        """The port of the server :meth:`serve` started last."""

    def endpoint(self, producer: Any, **options: Any) -> Any:
        """``resumable_handler(producer, **options)`` or ``resumable_endpoint(producer, **options)``."""
        if self.adapter == "aiohttp":
            return resumable_handler(producer, **options)
        from resumable_sse.starlette import resumable_endpoint

        return resumable_endpoint(producer, **options)

    async def serve(self, routes: list[Route], streamer: Streamer | None = None) -> Client:
        """Serve ``routes`` with ``streamer`` (default: a new one on a memory store) registered with the app; a
        client for that server."""
        streamer = streamer if streamer is not None else Streamer(MemoryStore())
        if self.adapter == "aiohttp":
            app = web.Application()
            setup(app, streamer)
            for route in routes:
                if route.any_method:
                    app.router.add_route("*", route.path, route.endpoint)
                else:
                    app.router.add_get(route.path, route.endpoint)  # as users route it: GET, and HEAD with it
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self._closers.append(runner.cleanup)
        else:
            from starlette.applications import Starlette
            from starlette.routing import Route as StarletteRoute

            from resumable_sse.starlette import streamer_lifespan

            asgi = Starlette(
                routes=[
                    StarletteRoute(route.path, route.endpoint, methods=ALL_METHODS if route.any_method else ["GET"])
                    for route in routes
                ],
                lifespan=streamer_lifespan(streamer),
            )
            server = await Uvicorn(asgi).__aenter__()
            port = server.port
            self._closers.append(server.close)
        self.port = port
        client = Client(port)
        self._closers.append(client.close)
        return client

    async def close(self) -> None:
        for close in reversed(self._closers):  # sessions first, then their servers
            await close()
        self._closers.clear()
