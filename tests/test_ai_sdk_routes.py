"""The two routes ``useChat`` calls (``POST /api/chat``, ``GET /api/chat/{id}/stream``) and the cancel route, on
aiohttp and FastAPI: one producer run per answer, 204 when nothing runs, exact continuations."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from resumable_sse.ai_sdk_routes import answer_id, parse_chat_request

from .ai_sdk_server import FRAMEWORKS, Model, answer_tokens, chat_server

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def chat_body(chat_id: str, prompt: str, **more: Any) -> dict[str, Any]:
    message = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": prompt}]}
    return {"id": chat_id, "messages": [message], "trigger": "submit-message", "messageId": None, **more}


def text_of(body: str) -> str:
    """The text a client builds from a UI message stream body (the deltas, in order)."""
    text = ""
    for line in body.splitlines():
        if line.startswith('data: {"type":"text-delta"'):
            text += json.loads(line[6:])["delta"]
    return text


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_post_streams_the_answer_and_a_second_post_joins_it(
    framework: str, session: aiohttp.ClientSession
) -> None:
    model = Model(count=60)
    async with chat_server(framework, model) as (base, _streamer):
        body = chat_body("c1", "hi")
        first, second = await asyncio.gather(
            session.post(f"{base}/api/chat", json=body), session.post(f"{base}/api/chat", json=body)
        )
        texts = [(await first.read()).decode(), (await second.read()).decode()]
        assert first.headers["x-vercel-ai-ui-message-stream"] == "v1"
        expected = "".join(answer_tokens("hi", 60))
        assert [text_of(t) for t in texts] == [expected, expected]
        assert model.runs["c1"] == 1
        assert '{"type":"start","messageId":"c1.1"}' in texts[0]
        # Finished: nothing to resume (the answer belongs to the chat's history now).
        after = await session.get(f"{base}/api/chat/c1/stream")
        assert after.status == 204
        assert (await session.get(f"{base}/api/chat/unknown/stream")).status == 204


async def test_resume_replays_a_running_answer_or_continues_exactly_from_last_event_id(
    framework: str, session: aiohttp.ClientSession
) -> None:
    model = Model(count=150, delay=0.01)
    async with chat_server(framework, model) as (base, _streamer):
        post = await session.post(f"{base}/api/chat", json=chat_body("c2", "go"))
        seen = b""
        while seen.count(b'"text-delta"') < 20:
            seen += await post.content.readany()
        post.close()  # the client's connection drops: the answer goes on
        ids = re.findall(rb"^id: (\S+)$", seen, re.M)
        last = ids[-1].decode()
        replay = await session.get(f"{base}/api/chat/c2/stream")
        resumed = await session.get(f"{base}/api/chat/c2/stream", headers={"Last-Event-ID": last})
        assert replay.status == resumed.status == 200
        whole, rest = (await replay.read()).decode(), (await resumed.read()).decode()
        expected = "".join(answer_tokens("go", 150))
        assert text_of(whole) == expected
        # The continuation: exactly what follows the last event read (the cut may split an event: only whole ones).
        cut = seen[: seen.rindex(b"\n\n") + 2].decode()
        assert text_of(cut) + text_of(rest) == expected
        assert '"type":"start"' not in rest
        assert model.runs["c2"] == 1
        end_id = re.findall(r"^id: (\S+)$", rest, re.M)[-1]
        assert (await session.get(f"{base}/api/chat/c2/stream", headers={"Last-Event-ID": end_id})).status == 204


async def test_a_new_turn_is_a_new_answer_and_cancel_ends_only_when_asked(
    framework: str, session: aiohttp.ClientSession
) -> None:
    model = Model(count=400, delay=0.01)
    async with chat_server(framework, model) as (base, streamer):
        first = await session.post(f"{base}/api/chat", json=chat_body("c3", "one", tokens=3))
        assert text_of((await first.read()).decode()) == "".join(answer_tokens("one", 3))
        turn = chat_body("c3", "two")
        turn["messages"] = [*turn["messages"], {"id": "a1", "role": "assistant", "parts": []}, turn["messages"][0]]
        second = await session.post(f"{base}/api/chat", json=turn)
        await second.content.readuntil(b'"text-delta"')
        second.close()  # stop(): the connection goes, the answer does not
        await asyncio.sleep(0.05)
        assert (await streamer.status("c3.3")).status == "running"  # type: ignore[union-attr]
        assert model.runs["c3"] == 2
        cancelled = await session.delete(f"{base}/api/chat/c3/stream")
        assert cancelled.status == 202
        assert (await streamer.status("c3.3")).status == "cancelled"  # type: ignore[union-attr]
        assert (await session.get(f"{base}/api/chat/c3/stream")).status == 204


async def test_a_body_that_is_not_a_chat_request_is_400(framework: str, session: aiohttp.ClientSession) -> None:
    async with chat_server(framework, Model()) as (base, _streamer):
        bad = await session.post(f"{base}/api/chat", data=b"{not json")
        assert bad.status == 400
        assert "not JSON" in await bad.text()
        no_id = await session.post(f"{base}/api/chat", json={"messages": []})
        assert no_id.status == 400
        assert "no chat 'id'" in await no_id.text()


def test_answer_ids_name_the_turn_and_each_regeneration() -> None:
    submit = parse_chat_request(json.dumps(chat_body("abc", "x")).encode())
    assert answer_id(submit) == "abc.1"
    again = parse_chat_request(
        json.dumps({**chat_body("abc", "x"), "trigger": "regenerate-message", "messageId": "m9"}).encode()
    )
    assert re.fullmatch(r"abc\.1\.[0-9a-f]{12}", answer_id(again))
    assert parse_chat_request(json.dumps(chat_body("abc", "what?")).encode()).last_user_text == "what?"


@pytest.mark.parametrize("example", ["ai_sdk_chat", "fastapi_chat"])
async def test_the_examples_answer_once_and_keep_the_answer_in_the_history(
    example: str, session: aiohttp.ClientSession
) -> None:
    from examples.aiohttp_chat.fake_llm import answer_text

    if example == "ai_sdk_chat":
        from aiohttp import web
        from examples.ai_sdk_chat.app import create_app

        runner = web.AppRunner(create_app(speed=0))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base, close = f"http://127.0.0.1:{runner.addresses[0][1]}", runner.cleanup
    else:
        from examples.fastapi_chat.app import create_app as create_fastapi_app

        from ._live_server import Uvicorn

        server = await Uvicorn(create_fastapi_app(speed=0)).__aenter__()
        base, close = f"http://127.0.0.1:{server.port}", server.close
    try:
        body = (await (await session.post(f"{base}/api/chat", json=chat_body("e1", "Why?"))).read()).decode()
        assert text_of(body) == answer_text("Why?")
        history = await (await session.get(f"{base}/api/chats/e1/messages")).json()
        assert [m["role"] for m in history] == ["user", "assistant"]
        assert history[1] == {
            "id": "e1.1",
            "role": "assistant",
            "parts": [{"type": "text", "text": answer_text("Why?")}],
        }
        assert (await session.get(f"{base}/api/chat/e1/stream")).status == 204
        stats = await (await session.get(f"{base}/api/stats")).json()
        assert stats.get("runs", stats.get("runs_by_stream")) in ({"e1": 1}, {"e1.1": 1})
    finally:
        await close()
