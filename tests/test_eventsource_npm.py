"""The npm ``eventsource`` package (a real third-party client, from tests/node/eventsource's lock file) reads our
streams: no empty event for a heartbeat after events, and every event exactly once through dropped connections,
closing only on the terminal event (told apart from its own connection ``error`` as the README's snippet does).

The package is installed by this module's fixture with ``npm ci`` (``node_modules`` is not committed); without
``node``/``npm`` the tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ._adapters import ADAPTERS, Harness, Route
from ._proxy import CuttableProxy

PACKAGE = Path(__file__).with_name("node") / "eventsource"
READER = PACKAGE / "read.mjs"


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (.ci/run installs node and npm)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def node() -> str:
    """The ``node`` binary, with the locked ``eventsource`` installed beside read.mjs."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _missing("node and npm are needed for the npm eventsource tests")
    assert node is not None and npm is not None
    installed = PACKAGE / "node_modules" / ".package-lock.json"
    lock = PACKAGE / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=PACKAGE,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            _missing(f"npm ci failed in {PACKAGE}: {done.stderr[-2000:]}")
    return node


@pytest.fixture(params=ADAPTERS)
async def http(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    harness = Harness(request.param)
    yield harness
    await harness.close()


class Reader:
    """read.mjs on one URL: the events it prints, as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, node: str, url: str) -> Reader:
        process = await asyncio.create_subprocess_exec(
            node, str(READER), url, cwd=PACKAGE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        return cls(process)

    async def until(self, count: int) -> None:
        """Read until ``count`` events (connection errors included) were printed, or the reader ended."""
        assert self.process.stdout is not None
        while len(self.events) < count:
            line = await asyncio.wait_for(self.process.stdout.readline(), 20)
            if not line:
                return
            self.events.append(json.loads(line))

    async def finish(self) -> list[dict[str, Any]]:
        """Every event, once the reader exits by itself (it closed its EventSource)."""
        await self.until(10**9)
        assert self.process.stderr is not None
        errors = await self.process.stderr.read()
        assert await asyncio.wait_for(self.process.wait(), 10) == 0, errors.decode()
        return self.events


async def test_heartbeats_after_events_are_not_events(node: str, http: Harness) -> None:
    async def paced(_request: object) -> AsyncIterator[str]:
        for token in ["one", "two", "three"]:
            yield token
            await asyncio.sleep(0.4)  # several heartbeats after each event

    client = await http.serve([Route("/stream/{stream_id}", http.endpoint(paced, heartbeat=0.05))])
    url = f"http://127.0.0.1:{http.port}/stream/beats"
    reader = await Reader.start(node, url)
    await reader.until(1)  # the stream exists: a second reader sees the same bytes
    witness = await client.get("/stream/beats")
    events = await reader.finish()
    raw = await witness.read()
    assert [(e["type"], e["data"]) for e in events] == [
        ("message", "one"),
        ("message", "two"),
        ("message", "three"),
        ("done", '{"state":"done"}'),
    ]
    assert raw.count(b": ping\n") >= 8  # the heartbeats were there, between the events


async def test_every_event_once_through_cuts_and_closed_only_on_the_terminal_event(node: str, http: Harness) -> None:
    async def paced(_request: object) -> AsyncIterator[str]:
        for index in range(300):
            yield f"t{index}"
            await asyncio.sleep(0.004)

    await http.serve([Route("/stream/{stream_id}", http.endpoint(paced, retry=100))])
    proxy = CuttableProxy(http.port)
    try:
        reader = await Reader.start(node, proxy.url + "stream/cuts")
        for at in (20, 90, 160, 230):
            await reader.until(at)
            proxy.cut()
        events = await reader.finish()
    finally:
        proxy.close()
    delivered = [e["data"] for e in events if e["type"] == "message"]
    assert delivered == [f"t{i}" for i in range(300)]  # exactly once, in order, across four drops
    assert sum(e["type"] == "connection-error" for e in events) >= 1  # drops happened and did not close it
    assert events[-1]["type"] == "done"  # it closed on the terminal event, and only then
