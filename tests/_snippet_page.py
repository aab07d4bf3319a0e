"""A page that runs the README's browser snippet as printed, and the stream it reads (tests/test_browser_snippet.py).

``python -m tests._snippet_page SNIPPET_FILE [--tokens N] [--pause SECONDS] [--end done|error]`` serves, on a free
port of 127.0.0.1 (printed as ``snippet-page: http://127.0.0.1:PORT/``):

- ``/``: the snippet (an HTML page) verbatim, after a script that records what its EventSource does without
  changing it (``window.messages``: how many message events it dispatched; ``window.closedAt``: how many it had
  when the snippet closed it; ``window.connectionErrors``: EventSource's own error events);
- ``/stream/{stream_id}``: ``resumable_handler`` over a producer of N paced tokens ``t0 ``, ``t1 ``..., a quiet pause
  after the first token (heartbeats every 0.05 s meanwhile), then ``--end``: ``done`` (it returns) or ``error``
  (it raises);
- ``/requests``: how many requests reached ``/stream/`` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from resumable_sse import ProducerError, Streamer, resumable_handler, setup

RECORDER = """<script>
window.messages = 0;
window.closedAt = null;
window.connectionErrors = 0;
window.EventSource = class extends EventSource {
  constructor(url, init) {
    super(url, init);
    this.addEventListener("message", () => { window.messages++; });
    this.addEventListener("error", (e) => { if (!(e instanceof MessageEvent)) window.connectionErrors++; });
  }
  close() { window.closedAt = window.messages; super.close(); }
};
</script>
"""


def make_app(snippet: str, tokens: int, pause: float, end: str) -> web.Application:
    requests = 0

    async def generate(_request: web.Request) -> AsyncIterator[str]:
        for index in range(tokens):
            yield f"t{index} "
            await asyncio.sleep(pause if index == 0 else 0.004)
        if end == "error":
            raise ProducerError("the model broke")

    stream = resumable_handler(generate, heartbeat=0.05, retry=100)

    async def counted(request: web.Request) -> web.StreamResponse:
        nonlocal requests
        requests += 1
        return await stream(request)

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=RECORDER + snippet, content_type="text/html")

    async def count(_request: web.Request) -> web.Response:
        return web.json_response(requests)

    app = web.Application()
    setup(app, Streamer())
    app.router.add_get("/", page)
    app.router.add_get("/stream/{stream_id}", counted)
    app.router.add_get("/requests", count)
    return app


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("snippet", type=Path)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--pause", type=float, default=0.5)
    parser.add_argument("--end", choices=["done", "error"], default="done")
    args = parser.parse_args()
    app = make_app(args.snippet.read_text(), args.tokens, args.pause, args.end)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"snippet-page: http://127.0.0.1:{runner.addresses[0][1]}/", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
