"""The chat example over HTTP (no browser): the routes the page uses, and the promises the README makes for them.

An answer is generated once per message whatever the clients do; a reader that reconnects with its last event id
gets exactly the rest; Stop ends the answer with ``cancelled`` for every reader; the model's text arrives intact.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the example lives beside the package, not inside it
    sys.path.insert(0, str(ROOT))

from examples.aiohttp_chat import app as chat  # noqa: E402
from examples.aiohttp_chat.fake_llm import (  # noqa: E402
    BlockingClient,
    answer_text,
    answer_tokens,
    stream_answer,
    tokens_per_second,
)

from resumable_sse import STREAMER_KEY  # noqa: E402

from .redis_servers import RedisServer, require_server_binary  # noqa: E402

Client: TypeAlias = "TestClient[web.Request, web.Application]"  # a string: TestClient is generic only in newer aiohttp
MakeClient: TypeAlias = Callable[..., Awaitable[Client]]

PROMPT = "How do resumable streams work?"


@dataclass
class SSE:
    event: str
    data: str
    id: str | None


def parse_events(raw: bytes) -> list[SSE]:
    """Complete events in ``raw`` (the server writes LF line ends and one space after each colon)."""
    events: list[SSE] = []
    for block in raw.decode().split("\n\n")[:-1]:
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
        if "data" in fields:
            event_id = fields["id"][-1] if "id" in fields else None
            events.append(SSE(fields.get("event", ["message"])[-1], "\n".join(fields["data"]), event_id))
    return events


async def read_events(response: ClientResponse, until: Callable[[list[SSE]], bool]) -> list[SSE]:
    """Read ``response`` until ``until(events so far)`` holds or the body ends; return the events."""
    raw = b""
    events: list[SSE] = []
    while not until(events):
        chunk = await response.content.readany()
        if not chunk:
            break
        raw += chunk
        events = parse_events(raw)
    return events


def terminal(events: list[SSE]) -> bool:
    return bool(events) and events[-1].event in ("done", "error", "cancelled", "lost")


@pytest.fixture
async def make_client(aiohttp_client: Any) -> MakeClient:
    """A test client for the chat app at a given model speed (tokens per second; 0 means no delay)."""

    async def make(speed: float = 0) -> Client:
        client: Client = await aiohttp_client(chat.create_app(speed=speed))
        return client

    return make


async def ask(client: Client, prompt: str = PROMPT, *, message: str = "m1", engine: str = "async") -> dict[str, Any]:
    response = await client.post(
        "/api/answers", json={"conversation": "c1", "message": message, "prompt": prompt, "engine": engine}
    )
    assert response.status in (200, 201), await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def stats(client: Client) -> dict[str, Any]:
    response = await client.get("/api/stats")
    body: dict[str, Any] = await response.json()
    return body


# -- the fake model -----------------------------------------------------------------------------------------------


def test_answer_is_deterministic_long_and_derived_from_the_prompt() -> None:
    tokens = answer_tokens(PROMPT)
    assert tokens == answer_tokens(PROMPT)
    assert 200 <= len(tokens) <= 400
    assert answer_text(PROMPT).startswith(f"You asked: “{PROMPT}”")
    assert answer_text(PROMPT) != answer_text(PROMPT + " And why?")
    assert all(tokens), "an empty token would be an event with no data"


async def test_both_faces_of_the_model_yield_the_same_tokens() -> None:
    streamed = [token async for token in stream_answer(PROMPT, 0)]
    assert streamed == answer_tokens(PROMPT)
    assert list(BlockingClient(0).stream(PROMPT)) == answer_tokens(PROMPT)


def test_speed_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_TOKENS_PER_SECOND", "250")
    assert tokens_per_second() == 250
    monkeypatch.delenv("CHAT_TOKENS_PER_SECOND")
    assert tokens_per_second() == 30


# -- the page and its scripts ---------------------------------------------------------------------------------------


async def test_page_and_scripts_are_served(make_client: MakeClient) -> None:
    client = await make_client()
    page = await client.get("/")
    assert page.status == 200
    html = await page.text()
    assert '<script src="/resumable-sse.js"' in html
    assert '<script src="/static/chat.js"' in html
    helper = await client.get("/resumable-sse.js")
    assert helper.status == 200
    assert helper.content_type == "text/javascript"
    script = await helper.text()
    assert "last_event_id=" in script
    assert "ResumableSSE" in script
    for asset in ("/static/chat.js", "/static/chat.css"):
        response = await client.get(asset)
        assert response.status == 200, asset


# -- answers ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["async", "blocking"])
async def test_an_answer_streams_the_whole_model_output_once(make_client: MakeClient, engine: str) -> None:
    client = await make_client()
    body = await ask(client, engine=engine)
    assert body == {"stream_id": "c1.m1", "url": "/stream/c1.m1", "started": True}
    response = await client.get(body["url"])
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = await read_events(response, terminal)
    assert events[-1].event == "done"
    messages = events[:-1]
    assert [event.event for event in messages] == ["message"] * len(messages)
    assert "".join(event.data for event in messages) == answer_text(PROMPT)
    assert [event.data for event in messages] == answer_tokens(PROMPT)
    assert (await stats(client))["runs_by_stream"] == {"c1.m1": 1}


async def test_blocking_engine_runs_off_the_event_loop(make_client: MakeClient) -> None:
    client = await make_client(speed=400)
    loop_thread = threading.get_ident()
    seen: list[int] = []
    original = BlockingClient.stream

    def spy(self: BlockingClient, prompt: str) -> Any:
        seen.append(threading.get_ident())
        yield from original(self, prompt)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BlockingClient, "stream", spy)
        body = await ask(client, engine="blocking")
        # The loop stays responsive while the blocking client sleeps between tokens.
        ticks = 0
        response = await client.get(body["url"])
        reader = asyncio.ensure_future(read_events(response, terminal))
        while not reader.done():
            await asyncio.sleep(0.01)
            ticks += 1
        events = reader.result()
    assert events[-1].event == "done"
    assert seen and seen[0] != loop_thread
    assert ticks >= 10  # a blocked loop would tick about once in the whole answer


async def test_repeating_the_post_reuses_the_stream(make_client: MakeClient) -> None:
    client = await make_client(speed=200)
    first = await ask(client)
    again = await ask(client, "a different prompt is ignored: the first one was recorded")
    assert first["started"] is True
    assert again == {"stream_id": first["stream_id"], "url": first["url"], "started": False}
    other = await ask(client, message="m2")
    assert other["stream_id"] == "c1.m2"
    response = await client.get(first["url"])
    events = await read_events(response, terminal)
    assert "".join(event.data for event in events[:-1]) == answer_text(PROMPT)
    runs = (await stats(client))["runs_by_stream"]
    assert runs["c1.m1"] == 1


async def test_reconnecting_with_the_last_id_gets_exactly_the_rest(make_client: MakeClient) -> None:
    client = await make_client(speed=300)
    body = await ask(client)
    tokens = answer_tokens(PROMPT)
    received: list[str] = []
    position: str | None = None
    for reconnect in range(3):  # read a little, drop the connection, come back with ?last_event_id=
        url = body["url"] if position is None else f"{body['url']}?last_event_id={position}"
        response = await client.get(url)
        assert response.status == 200
        events = await read_events(response, lambda evs: len(evs) >= 10 or terminal(evs))
        response.close()
        received += [event.data for event in events if event.event == "message"]
        position = events[-1].id
        assert reconnect < 2 or not terminal(events)
    response = await client.get(f"{body['url']}?last_event_id={position}")
    events = await read_events(response, terminal)
    received += [event.data for event in events if event.event == "message"]
    assert received == tokens  # no token repeated, none missing
    assert events[-1].event == "done"
    done_id = events[-1].id
    finished = await client.get(f"{body['url']}?last_event_id={done_id}")
    assert finished.status == 204  # the browser stops reconnecting
    assert (await stats(client))["runs_by_stream"] == {"c1.m1": 1}


async def scrape(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``GET /metrics``, parsed: ``(sample name, sorted labels) -> value``."""
    from prometheus_client.parser import text_string_to_metric_families

    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")  # the text exposition format
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(await response.text())
        for sample in family.samples
    }


async def test_metrics_count_an_answer_its_resume_and_its_end(make_client: MakeClient) -> None:
    client = await make_client(speed=0)
    body = await ask(client)
    events = await read_events(await client.get(body["url"]), terminal)
    resumed = await read_events(await client.get(f"{body['url']}?last_event_id={events[1].id}"), terminal)
    assert len(resumed) == len(events) - 2
    assert (await client.get(f"{body['url']}?last_event_id={events[-1].id}")).status == 204
    for _ in range(200):  # the producer's end is counted as its task ends, just after its terminal event
        values = await scrape(client)
        if values[("resumable_sse_streams_ended_total", (("status", "done"),))] == 1:
            break
        await asyncio.sleep(0.01)
    requests = {
        labels[0][1]: value for (name, labels), value in values.items() if name == "resumable_sse_requests_total"
    }
    assert requests == {
        "new": 1,
        "resumed": 1,
        "reset": 0,
        "no_content": 1,
        "gone": 0,
        "bad_request": 0,
        "forbidden": 0,
        "unavailable": 0,
        "method_not_allowed": 0,
        "error": 0,
    }
    assert values[("resumable_sse_streams_started_total", ())] == 1
    assert values[("resumable_sse_streams_ended_total", (("status", "done"),))] == 1
    assert values[("resumable_sse_streams_running", ())] == 0
    assert values[("resumable_sse_events_appended_total", ())] == len(answer_tokens(PROMPT))
    assert values[("resumable_sse_readers_active", ())] == 0
    assert values[("resumable_sse_store_seconds_count", (("operation", "claim"),))] == 2  # the POST's, the GET's try
    assert values[("resumable_sse_store_errors_total", (("operation", "append"),))] == 0


async def test_stop_cancels_the_answer_for_every_reader(make_client: MakeClient) -> None:
    client = await make_client(speed=50)
    body = await ask(client)
    readers = [await client.get(body["url"]) for _ in range(2)]
    first = await read_events(readers[0], lambda evs: len(evs) >= 3)
    stop = await client.post(f"/api/answers/{body['stream_id']}/stop")
    assert stop.status == 200
    assert await stop.json() == {"stream_id": body["stream_id"], "cancelled": True}
    ends = [await read_events(reader, terminal) for reader in readers]
    for events in ends:
        assert events[-1].event == "cancelled"
        assert json.loads(events[-1].data)["state"] == "cancelled"
    seqs = [int(str(event.id).rsplit("-", 1)[1]) for event in first + ends[0]]
    assert seqs == list(range(1, len(seqs) + 1))  # the first reader saw every event once, then the cancel
    # A page opened later replays the partial answer and learns it was stopped.
    replay = await read_events(await client.get(body["url"]), terminal)
    assert replay[-1].event == "cancelled"
    assert len(replay) < len(answer_tokens(PROMPT))
    # Stopping again changes nothing; the producer ran once.
    again = await client.post(f"/api/answers/{body['stream_id']}/stop")
    assert await again.json() == {"stream_id": body["stream_id"], "cancelled": False}
    assert (await stats(client))["runs_by_stream"] == {"c1.m1": 1}


async def test_stop_of_an_unknown_answer_is_404(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.post("/api/answers/c1.nothing/stop")
    assert response.status == 404


async def test_unknown_streams_are_refused_and_never_generated(make_client: MakeClient) -> None:
    client = await make_client()
    fresh = await client.get("/stream/c9.m9")
    assert fresh.status == 403  # the app serves only answers it started
    expired = await client.get("/stream/c9.m9?last_event_id=0123abcd-17")
    assert expired.status == 410  # e.g. the server restarted with a memory store: lost, not regenerated
    assert "not generated again" in await expired.text()
    counters = await stats(client)
    assert counters["producer_runs"] == 0
    assert counters["stream_requests"] == 2


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"conversation": "c1", "message": "m1", "prompt": "  "}, "prompt"),
        ({"conversation": "c 1", "message": "m1", "prompt": "hi"}, "conversation"),
        ({"conversation": "c1", "message": "m.1", "prompt": "hi"}, "message"),
        ({"conversation": "c1", "message": "m1", "prompt": "hi", "engine": "gpu"}, "engine"),
        ({"conversation": "c1", "message": "m1", "prompt": "x" * 2001}, "prompt"),
        (["not", "an", "object"], "object"),
    ],
)
async def test_bad_requests_say_what_is_wrong(make_client: MakeClient, body: Any, reason: str) -> None:
    client = await make_client()
    response = await client.post("/api/answers", json=body)
    assert response.status == 400
    assert reason in (await response.json())["error"]
    assert (await stats(client))["producer_runs"] == 0


async def test_answers_asked_while_the_server_shuts_down_are_503(make_client: MakeClient) -> None:
    client = await make_client()
    await client.app[STREAMER_KEY].close(0)  # what the app's cleanup does when the server stops
    for engine in ("async", "blocking"):
        response = await client.post(
            "/api/answers", json={"conversation": "c1", "message": engine, "prompt": PROMPT, "engine": engine}
        )
        assert response.status == 503
        assert (await response.json())["error"] == "the answer service is unavailable; try again shortly"


async def test_stop_of_an_invalid_stream_id_is_400(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.post("/api/answers/" + "x" * 200 + "/stop")
    assert response.status == 400
    assert "longer than 128" in (await response.json())["error"]


async def test_a_body_that_is_not_json_is_400(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.post("/api/answers", data=b"prompt=hi")
    assert response.status == 400


# -- the command line ---------------------------------------------------------------------------------------------


def test_module_runs_and_prints_the_url() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.aiohttp_chat", "--port", "0", "--speed", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("resumable-sse chat example (memory store): open http://127.0.0.1:")
        assert line.rstrip().endswith("/")
    finally:
        process.terminate()
        _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err


def test_help_lists_the_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.aiohttp_chat", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    for option in ("--port", "--host", "--redis", "--speed"):
        assert option in result.stdout


async def test_app_closes_cleanly_with_a_running_answer(make_client: MakeClient) -> None:
    # Shutting the test server down mid-answer must not leave tasks or threads complaining (filterwarnings=error).
    client = await make_client(speed=20)
    await ask(client, engine="blocking")
    await ask(client, message="m2")
    await asyncio.sleep(0.2)


# -- --redis: streams shared by processes ---------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A private Redis server on a free port (never the shared one on 6379), stopped after the test."""
    with RedisServer(require_server_binary()) as server:
        yield server.url


def _serve(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.aiohttp_chat", "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "open http://" in line, line
    return process, line.rsplit(" ", 1)[1].strip()


def _post(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.load(response)
        return answer


def _read_stream(url: str) -> list[SSE]:
    with urllib.request.urlopen(url, timeout=30) as response:
        raw = b""
        while not terminal(events := parse_events(raw)):
            line = response.readline()
            if not line:
                break
            raw += line
        return events


@pytest.mark.redis
def test_two_processes_share_answers_through_redis(redis_url: str) -> None:
    servers = [_serve("--redis", redis_url, "--speed", "200") for _ in range(2)]
    try:
        (_, one), (_, two) = servers
        body = {"conversation": "c1", "message": "m1", "prompt": PROMPT, "engine": "blocking"}
        started = _post(one + "api/answers", body)
        assert started["started"] is True
        assert _post(two + "api/answers", body)["started"] is False  # the claim is in Redis: no second run
        events = _read_stream(two + started["url"].lstrip("/"))  # read from the process that did not produce it
        assert events[-1].event == "done"
        assert "".join(event.data for event in events[:-1]) == answer_text(PROMPT)
        # Stop from one process ends an answer produced by the other, for every reader.
        running = _post(one + "api/answers", {**body, "message": "m2", "engine": "async"})
        assert _post(two + f"api/answers/{running['stream_id']}/stop")["cancelled"] is True
        assert _read_stream(one + running["url"].lstrip("/"))[-1].event == "cancelled"
        with urllib.request.urlopen(one + "api/stats", timeout=10) as response:
            runs = json.load(response)["runs_by_stream"]
        # Each answer ran at most once, here; the stop may come before m2's producer took its first step (it then
        # never ran: the example counts a run as the generator starts).
        assert runs["c1.m1"] == 1
        assert runs.get("c1.m2", 0) <= 1
        with urllib.request.urlopen(two + "api/stats", timeout=10) as response:
            assert json.load(response)["producer_runs"] == 0
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(timeout=20)
            assert process.stdout is not None
            process.stdout.close()
