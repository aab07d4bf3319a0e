"""Logs an operator can run on: every library log record names its stream (``stream_id``, or ``stream_ids`` for a
line about many) and says what the clients saw; docs/metrics.md's JSON formatter makes one object a line of each."""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from resumable_sse import MemoryStore, Streamer, resumable_handler, setup

from .helpers import parse

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "resumable_sse"
LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "log"}

# a string: TestClient is generic only from aiohttp 3.11 (the lowest env runs an older one)
Client: TypeAlias = "TestClient[web.Request, web.Application]"
ClientFactory = Callable[[web.Application], Awaitable[Client]]


def _logging_calls() -> list[tuple[str, int, ast.Call]]:
    calls = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id.endswith("logger")
            ):
                calls.append((str(path.relative_to(ROOT)), node.lineno, node))
    return calls


def _extra_keys(call: ast.Call) -> set[str]:
    """The keys of the call's ``extra=`` (a dict literal, or a name bound to one in the same function)."""
    for keyword in call.keywords:
        if keyword.arg == "extra":
            if isinstance(keyword.value, ast.Dict):
                return {key.value for key in keyword.value.keys if isinstance(key, ast.Constant)}
            if isinstance(keyword.value, ast.Name):
                return {"stream_id"} if keyword.value.id == "extra" else set()
    return set()


def test_every_log_call_of_the_library_names_its_stream() -> None:
    calls = _logging_calls()
    assert len(calls) >= 15  # the walk found the library's logging (19 calls when this was written)
    missing = [f"{path}:{line}" for path, line, call in calls if "stream_id" not in _extra_keys(call)]
    assert missing == []


def test_extra_variables_named_extra_hold_the_stream_id() -> None:
    # _extra_keys trusts a variable named `extra`: every such assignment in the library must bind the stream id.
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "extra" for t in node.targets):
                assert isinstance(node.value, ast.Dict), f"{path}:{node.lineno}"
                keys = {key.value for key in node.value.keys if isinstance(key, ast.Constant)}
                assert "stream_id" in keys, f"{path}:{node.lineno}"


# -- records at run time ---------------------------------------------------------------------------------------------


async def raises(_request: web.Request) -> AsyncIterator[str]:
    yield "before"
    raise RuntimeError("the model broke")


async def too_large(_request: web.Request) -> AsyncIterator[str]:
    yield "x" * 100


async def test_records_carry_the_stream_id_and_say_what_the_client_saw(
    aiohttp_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = web.Application()
    streamer = setup(app, Streamer(MemoryStore(), max_event_bytes=10))
    app.router.add_get("/raises/{stream_id}", resumable_handler(raises))
    app.router.add_get("/large/{stream_id}", resumable_handler(too_large))
    client = await aiohttp_client(app)
    caplog.set_level(logging.INFO, logger="resumable_sse")

    events = parse(await (await client.get("/raises/r1")).read())
    assert [e.event for e in events] == [None, "error"]
    events = parse(await (await client.get("/large/l1")).read())
    assert [e.event for e in events] == ["error"]
    streamer.end_readers()
    assert (await client.get("/raises/u1")).status == 503

    records = [r for r in caplog.records if r.name.startswith("resumable_sse")]
    by_stream = {getattr(r, "stream_id", "<none>"): r.getMessage() for r in records}
    assert set(by_stream) == {"r1", "l1", "u1"}
    assert "clients get the generic message" in by_stream["r1"]
    assert "clients get 'an event was too large'" in by_stream["l1"]
    assert "the client got 503" in by_stream["u1"]
    assert all(repr(stream_id) in message for stream_id, message in by_stream.items())


def _readme_formatter() -> tuple[type[logging.Formatter], dict[str, Any]]:
    readme = (ROOT / "docs" / "metrics.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    [block] = [b for b in blocks if "class JSONFormatter" in b]
    namespace: dict[str, Any] = {}
    exec(compile(block, "docs/metrics.md", "exec"), namespace)
    logging.getLogger("resumable_sse").removeHandler(namespace["handler"])  # the block installs it: not in tests
    logging.getLogger("resumable_sse").setLevel(logging.NOTSET)
    formatter: type[logging.Formatter] = namespace["JSONFormatter"]
    return formatter, namespace


def test_the_readme_json_formatter_writes_one_object_a_line_with_the_stream_id() -> None:
    formatter_class, _ = _readme_formatter()
    formatter = formatter_class()
    try:
        raise RuntimeError("the model broke")
    except RuntimeError:
        import sys

        exc_info = sys.exc_info()
    record = logging.getLogger("resumable_sse").makeRecord(
        "resumable_sse",
        logging.ERROR,
        __file__,
        1,
        "producer of stream %r raised",
        ("answer-42",),
        exc_info,
        extra={"stream_id": "answer-42"},
    )
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["stream_id"] == "answer-42"
    assert entry["level"] == "ERROR"
    assert entry["message"] == "producer of stream 'answer-42' raised"
    assert "RuntimeError: the model broke" in entry["exception"]
    many = logging.getLogger("resumable_sse").makeRecord(
        "resumable_sse",
        logging.WARNING,
        __file__,
        1,
        "auditing",
        (),
        None,
        extra={"stream_id": None, "stream_ids": ["a", "b"]},
    )
    assert json.loads(formatter.format(many))["stream_ids"] == ["a", "b"]
