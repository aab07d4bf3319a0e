"""Runs one Python snippet of the documentation in this fresh interpreter (tests/test_docs.py starts it).

``python tests/_snippet_runner.py [--serve] FILE``: runs FILE as ``__main__`` with ``aiohttp.web.run_app`` replaced:
the application is served on 127.0.0.1 on a free port, whatever host and port the snippet names (so a snippet can
never collide with a real server), and the line ``snippet-server: http://127.0.0.1:PORT`` is printed once it
accepts connections. Without ``--serve`` the application is then shut down at once (its startup and cleanup hooks
both run, and the snippet goes on); with ``--serve`` it serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import faulthandler
import inspect
import runpy
import signal
import sys
from typing import Any

from aiohttp import web


def _run_app(serve: bool) -> Any:
    def run_app(app: Any, *_args: Any, **_options: Any) -> None:
        async def main() -> None:
            application = await app if inspect.isawaitable(app) else app
            runner = web.AppRunner(application)
            await runner.setup()
            try:
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                port = runner.addresses[0][1]
                print(f"snippet-server: http://127.0.0.1:{port}", flush=True)
                if serve:
                    stop = asyncio.Event()
                    loop = asyncio.get_running_loop()
                    for sig in (signal.SIGTERM, signal.SIGINT):
                        loop.add_signal_handler(sig, stop.set)
                    await stop.wait()
            finally:
                await runner.cleanup()

        asyncio.run(main())

    return run_app


def main(argv: list[str]) -> None:
    serve = argv[:1] == ["--serve"]
    path = argv[-1]
    # A hung snippet says where it hangs, and ends, even if the test that started it could not stop it.
    faulthandler.dump_traceback_later(900 if serve else 120, exit=True)
    web.run_app = _run_app(serve)
    runpy.run_path(path, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
