"""``resumable-sse tail``, run as a real subprocess against a live server on a free port."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from resumable_sse import STREAMER_KEY
from resumable_sse.cli import EXIT_CODES, _Printer
from resumable_sse.client import ServerSentEvent

from ._live_server import CuttingProxy, Scripted, expected_events, mixed_payloads, resumable_app

ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def server(aiohttp_server: ServerFactory) -> TestServer:
    return await aiohttp_server(resumable_app())


def url(server: TestServer, stream_id: str) -> str:
    return str(server.make_url(f"/stream/{stream_id}"))


async def run(*args: str, command: tuple[str, ...] = (sys.executable, "-m", "resumable_sse")) -> tuple[int, str, str]:
    """Run the command line with ``args`` while this test's loop keeps serving; return (status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        *command,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", "COLUMNS": "80"},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_tail_prints_data_and_exits_0_on_done(server: TestServer) -> None:
    status, out, err = await run("tail", url(server, "count.3"))
    assert (status, out) == (0, "event 0\nevent 1\nevent 2\n")
    assert err == ""


async def test_tail_json_prints_one_object_per_event(server: TestServer) -> None:
    status, out, _ = await run("tail", "--json", url(server, "mixed.12"))
    assert status == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["event"], r["data"]) for r in records[:-1]] == expected_events(mixed_payloads(12))
    assert records[-1]["event"] == "done"
    epoch = records[0]["id"].rpartition("-")[0]
    assert [r["id"] for r in records] == [f"{epoch}-{n}" for n in range(1, 14)]
    assert set(records[0]) == {"id", "event", "data"}


async def test_tail_text_prints_the_plain_events_as_one_continuous_text(server: TestServer) -> None:
    status, out, err = await run("tail", "--text", url(server, "mixed.12"))
    assert (status, err) == (0, "")
    text = "".join(data for event, data in expected_events(mixed_payloads(12)) if event == "message")
    assert out == text + "\n"  # typed events (tick) are left out; one line break ends the output


async def test_tail_text_reconnects_through_cuts_and_prints_the_text_once(server: TestServer) -> None:
    async with CuttingProxy(server.port or 0, seed=5, max_bytes=900) as proxy:
        status, out, _ = await run("tail", "--text", "-q", f"http://127.0.0.1:{proxy.port}/stream/count.60")
    assert proxy.cuts >= 3
    assert (status, out) == (0, "".join(f"event {i}" for i in range(60)) + "\n")


async def test_tail_text_ends_its_line_before_an_error(server: TestServer) -> None:
    status, out, err = await run("tail", "--text", url(server, "fail"))
    assert (status, out) == (3, "a\n")
    assert err == "resumable-sse: stream ended with error: boom: the model refused\n"


def test_text_output_starts_a_new_line_at_a_reset() -> None:
    out, err = io.StringIO(), io.StringIO()
    printer = _Printer("text", out, err)
    for event, data in [("message", "Hel"), ("reset", "{}"), ("message", "Hello\n"), ("usage", "{}")]:
        printer.event(ServerSentEvent(event=event, data=data))
    printer.end_line()
    assert out.getvalue() == "Hel\nHello\n"  # no second line break: the text already ended with one
    assert "the stream was reset" in err.getvalue()


async def test_json_and_text_exclude_each_other() -> None:
    status, _, err = await run("tail", "--json", "--text", "http://127.0.0.1:9/s")
    assert status == 2
    assert "not allowed with argument" in err


async def test_tail_resumes_after_last_event_id(server: TestServer) -> None:
    _, out, _ = await run("tail", "--json", url(server, "count.4"))
    second = json.loads(out.splitlines()[1])["id"]
    status, out, _ = await run("tail", "--last-event-id", second, url(server, "count.4"))
    assert (status, out) == (0, "event 2\nevent 3\n")


async def test_tail_error_exits_3_with_message(server: TestServer) -> None:
    status, out, err = await run("tail", url(server, "fail"))
    assert (status, out) == (3, "a\n")
    assert err == "resumable-sse: stream ended with error: boom: the model refused\n"


async def test_tail_json_error_prints_the_terminal_event(server: TestServer) -> None:
    status, out, _ = await run("tail", "--json", url(server, "fail"))
    assert status == 3
    assert json.loads(out.splitlines()[-1])["event"] == "error"


async def test_tail_cancelled_exits_5(server: TestServer) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "resumable_sse",
        "tail",
        url(server, "wait"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert await asyncio.wait_for(process.stdout.readline(), timeout=30) == b"a\n"  # printed as it arrived
    assert await server.app[STREAMER_KEY].cancel("wait")
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert (process.returncode, out) == (5, b"")
    assert err.decode() == "resumable-sse: stream ended with cancelled: cancelled\n"


async def test_tail_lost_exits_4(aiohttp_server: ServerFactory) -> None:
    script = Scripted([(200, {}, b'id: s-1\ndata: x\n\nid: s-2\nevent: lost\ndata: {"state":"lost"}\n\n')])
    test_server = await aiohttp_server(script.app())
    status, out, err = await run("tail", str(test_server.make_url("/s")))
    assert (status, out, err) == (4, "x\n", "resumable-sse: stream ended with lost\n")


async def test_tail_gone_exits_6(server: TestServer) -> None:
    status, out, err = await run("tail", "--last-event-id", "abc-1", url(server, "count.1"))
    assert (status, out) == (6, "")
    assert "the stream is gone" in err
    assert "410" in err


async def test_tail_already_finished_exits_0(server: TestServer) -> None:
    _, out, _ = await run("tail", "--json", url(server, "count.1"))
    terminal = json.loads(out.splitlines()[-1])["id"]
    status, out, err = await run("tail", "--last-event-id", terminal, url(server, "count.1"))
    assert (status, out) == (0, "")
    assert "already ended" in err


async def test_tail_reset_reported_on_stderr(server: TestServer) -> None:
    assert (await run("tail", url(server, "count.2")))[0] == 0
    status, out, err = await run("tail", "--last-event-id", "otherepoch-1", url(server, "count.2"))
    assert (status, out) == (0, "event 0\nevent 1\n")
    assert "the stream was reset" in err


async def test_tail_gives_up_with_exit_8() -> None:
    status, out, err = await run("tail", "--max-retries", "1", "http://127.0.0.1:9/unreachable")
    assert (status, out) == (8, "")
    assert "gave up on http://127.0.0.1:9/unreachable after 2 failed attempts in a row" in err


async def test_tail_reconnects_through_cuts_and_prints_each_event_once(server: TestServer) -> None:
    count = 150
    async with CuttingProxy(server.port or 0, seed=7, max_bytes=1200) as proxy:
        status, out, err = await run("tail", "--json", f"http://127.0.0.1:{proxy.port}/stream/mixed.{count}")
    assert status == 0
    assert proxy.cuts >= 5
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["event"], r["data"]) for r in records[:-1]] == expected_events(mixed_payloads(count))
    assert "reconnecting" in err  # reconnections are reported on stderr


async def test_tail_quiet_does_not_report_reconnections(server: TestServer) -> None:
    async with CuttingProxy(server.port or 0, seed=3, max_bytes=800) as proxy:
        status, out, err = await run("tail", "-q", f"http://127.0.0.1:{proxy.port}/stream/count.40")
    assert proxy.cuts >= 3
    assert (status, err) == (0, "")
    assert out == "".join(f"event {i}\n" for i in range(40))


async def test_tail_help_documents_the_options_and_exit_codes() -> None:
    status, out, _ = await run("tail", "--help")
    assert status == 0
    assert out.startswith("usage: resumable-sse tail [-h] [--last-event-id ID] [--json | --text]")
    for option in ("--last-event-id ID", "--json", "--text", "--header", "--max-retries", "--read-timeout", "--quiet"):
        assert option in out
    for code, meaning in EXIT_CODES.items():
        assert f"  {code:<4} {meaning}" in out


async def test_usage_errors_exit_2() -> None:
    status, _, err = await run("tail")
    assert status == 2
    assert "the following arguments are required: URL" in err
    status, _, err = await run("tail", "--header", "no colon", "http://x/")
    assert status == 2
    assert "--header takes 'NAME: VALUE'" in err


@pytest.mark.parametrize("bad", ["notaurl", "ftp://host/stream/a", "localhost:8080/stream/a"])
async def test_a_url_that_is_not_http_exits_2_without_a_traceback(bad: str) -> None:
    status, out, err = await run("tail", bad)
    assert (status, out) == (2, "")
    assert "URL" in err
    assert "Traceback" not in err


async def test_a_certificate_error_exits_7_at_once_without_a_traceback(tls_server: str) -> None:
    status, out, err = await run("tail", tls_server + "/stream/count.2")
    assert (status, out) == (7, "")
    assert "certificate verify failed" in err
    assert "Traceback" not in err
    assert "reconnecting" not in err


async def test_console_script_is_installed() -> None:
    script = shutil.which("resumable-sse", path=str(Path(sys.executable).parent))
    assert script is not None, "the resumable-sse console script is not installed next to this Python"
    status, out, _ = await run("tail", "--help", command=(script,))
    assert status == 0
    assert "usage: resumable-sse tail" in out
