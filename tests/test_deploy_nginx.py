"""docs/deployment.md for real: its nginx configuration in front of two backends started with its gunicorn command
(aiohttp workers), on one private Redis. A client streams through nginx, the backend it reads from is killed
(SIGKILL to the whole gunicorn) or stopped (SIGTERM), and the client resumes through the other backend with every
event exactly once.

The configuration and the command are taken from the page itself, only the addresses replaced, so the test fails
when the documented set-up stops working.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
import redis

from resumable_sse.client import ServerSentEvent, connect

from .nginx import main_config, require_nginx
from .redis_servers import RedisServer, free_port, require_server_binary
from .snippets import ROOT, Snippet, parse

pytestmark = [pytest.mark.slow, pytest.mark.redis]

DEPLOYMENT = ROOT / "docs" / "deployment.md"
TOKENS, PAUSE_MS = 40, 50  # a 2-second stream


def documented(language: str, containing: str) -> Snippet:
    """The one block of docs/deployment.md in ``language`` that contains ``containing``."""
    blocks = [s for s in parse(DEPLOYMENT, DEPLOYMENT.read_text()) if s.language == language and containing in s.code]
    assert len(blocks) == 1, f"docs/deployment.md should have one {language} block with {containing!r}"
    return blocks[0]


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on {port} within 30 s:\n{log.read_text(errors='replace')}")


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """Redis, two gunicorn backends and nginx, as docs/deployment.md sets them up, on free ports."""
    nginx = require_nginx()
    prefix = f"deploy-{uuid.uuid4().hex[:8]}"
    processes: list[subprocess.Popen[bytes]] = []
    with RedisServer(require_server_binary()) as redis_server:
        try:
            command = shlex.split(documented("sh", "gunicorn ").code)
            assert command[:2] == ["gunicorn", "myapp:create_app"], command
            backends: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
            for name in ("a", "b"):
                port = free_port()
                args = [sys.executable, "-m", "gunicorn", "tests.deploy_app:create_app", *command[2:]]
                args[args.index("--bind") + 1] = f"127.0.0.1:{port}"
                args[args.index("--workers") + 1] = "1"  # one process per backend: the test kills the whole of one
                log = tmp_path / f"backend-{name}.log"
                with log.open("wb") as out:
                    process = subprocess.Popen(
                        args,
                        cwd=ROOT,
                        env={**os.environ, "REDIS_URL": redis_server.url, "KEY_PREFIX": prefix, "BACKEND": name},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group: SIGKILL reaches the master and its worker
                    )
                processes.append(process)
                backends[name] = (port, process)
            for name, (port, process) in backends.items():
                wait_for_port(port, process, f"backend {name}", tmp_path / f"backend-{name}.log")

            fragment = documented("nginx", "proxy_buffering off").code
            fragment = fragment.replace("127.0.0.1:8001", f"127.0.0.1:{backends['a'][0]}")
            fragment = fragment.replace("127.0.0.1:8002", f"127.0.0.1:{backends['b'][0]}")
            proxy_port = free_port()
            fragment, listens = re.subn(r"listen 80;", f"listen 127.0.0.1:{proxy_port};", fragment)
            assert listens == 1, "the documented server block should listen on 80"
            config = tmp_path / "nginx.conf"
            config.write_text(main_config(fragment, tmp_path))
            log = tmp_path / "error.log"
            log.touch()
            proxy = subprocess.Popen(
                [nginx, "-p", str(tmp_path), "-c", str(config)], cwd=tmp_path, start_new_session=True
            )
            processes.append(proxy)
            wait_for_port(proxy_port, proxy, "nginx", log)
            marks = redis.Redis.from_url(redis_server.url)
            try:
                yield SimpleNamespace(
                    url=f"http://127.0.0.1:{proxy_port}",
                    backends={name: process for name, (_port, process) in backends.items()},
                    runs=lambda stream_id: int(marks.get(f"{prefix}:runs:{stream_id}") or 0),
                    log=tmp_path,
                )
            finally:
                marks.close()
        finally:
            for process in reversed(processes):
                stop(process)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
async def test_a_client_resumes_exactly_through_the_other_backend_when_its_own_dies(
    deployment: SimpleNamespace, sig: signal.Signals
) -> None:
    """SIGKILL: the backend vanishes mid-response. SIGTERM: gunicorn stops it gracefully (the response ends cleanly,
    the client reconnects at once). Either way the client goes on, exactly, through the other backend."""
    stream_url = f"{deployment.url}/stream/paced.{TOKENS}.{PAUSE_MS}"
    served_by: list[str] = []  # the X-Backend of every response, in order

    async def on_request_end(_session: object, _context: object, params: aiohttp.TraceRequestEndParams) -> None:
        served_by.append(params.response.headers.get("X-Backend", "?"))

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        # The first request claims the stream: its producer runs on the backend that served it, to the end.
        async with session.get(stream_url) as first:
            assert first.status == 200
            assert first.headers["Content-Type"] == "text/event-stream"
        producer_backend = served_by[-1]
        assert producer_backend in deployment.backends

        messages: list[str] = []
        last_id: str | None = None
        killed = None
        terminal: ServerSentEvent | None = None
        for _attempt in range(10):  # nginx alternates between the backends: find a reader on the other one
            events = connect(
                stream_url, session=session, last_event_id=last_id, reconnect_delay=0.05, max_delay=0.5, jitter=0.0
            )
            async with events:
                stream = aiter(events)
                event = await asyncio.wait_for(anext(stream), 10)
                messages.append(event.data)
                last_id = events.last_event_id
                reader_backend = served_by[-1]
                if reader_backend == producer_backend:
                    continue
                while len(messages) < 8:
                    messages.append((await asyncio.wait_for(anext(stream), 10)).data)
                # Events arrive one by one as they are produced: nginx does not buffer the stream.
                assert len(messages) < TOKENS
                requests_before = len(served_by)
                killed = deployment.backends[reader_backend]
                await asyncio.to_thread(stop, killed, sig)  # the loop, and the client's connection, run on
                async for event in events:
                    if event.event == "message":
                        messages.append(event.data)
                terminal = events.terminal
            break
        assert killed is not None, f"nginx never sent a reader to the backend without the producer: {served_by}"

    assert messages == [f"token {i}" for i in range(TOKENS)]  # every event exactly once, in order
    assert terminal is not None and terminal.event == "done"
    assert served_by[requests_before:] and set(served_by[requests_before:]) == {producer_backend}
    assert deployment.runs(f"paced.{TOKENS}.{PAUSE_MS}") == 1  # the reconnect did not start the producer again
