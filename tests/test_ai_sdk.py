"""The AI SDK's UI message stream dialect (``protocol="ai-sdk"``), on both adapters, byte for byte.

What the AI SDK's client needs of a body: every ``data:`` one UI message chunk it accepts, ended by ``[DONE]``; our
``id:`` lines kept (so a resume is exact), terminal states in its own terms, a reset as a replay from a new
``start``, and the ``x-vercel-ai-ui-message-stream: v1`` header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from resumable_sse import MemoryStore, ProducerError, Streamer
from resumable_sse.ai_sdk import ui_message_stream, validate_chunk
from resumable_sse.exceptions import InvalidEventData

from ._adapters import ADAPTERS, Harness, Route

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=ADAPTERS)
async def http(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    harness = Harness(request.param)
    yield harness
    await harness.close()


def epoch_of(body: str) -> str:
    found = re.search(r"^id: ([a-z0-9]+)-1$", body, re.M)
    assert found, body
    return found.group(1)


def chunk(seq: int, epoch: str, data: dict[str, Any]) -> str:
    return f"id: {epoch}-{seq}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def serve(http: Harness, producer: Any, streamer: Streamer | None = None, **options: Any) -> Any:
    return await http.serve(
        [Route("/chat/{stream_id}", http.endpoint(producer, protocol="ai-sdk", **options))], streamer
    )


async def tokens(_request: object) -> AsyncIterator[str]:
    for token in ["Hello", ", ", "world"]:
        yield token


async def test_text_is_sent_as_text_deltas_inside_start_and_finish_with_ids_kept(http: Harness) -> None:
    client = await serve(http, tokens)
    response = await client.get("/chat/a1")
    body = (await response.read()).decode()
    assert response.status == 200
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert response.headers["Content-Type"].startswith("text/event-stream")
    epoch = epoch_of(body)
    expected = "retry: 2000\n" + "".join(
        chunk(seq, epoch, data)
        for seq, data in enumerate(
            [
                {"type": "start", "messageId": "a1"},
                {"type": "text-start", "id": "text-1"},
                {"type": "text-delta", "id": "text-1", "delta": "Hello"},
                {"type": "text-delta", "id": "text-1", "delta": ", "},
                {"type": "text-delta", "id": "text-1", "delta": "world"},
                {"type": "text-end", "id": "text-1"},
                {"type": "finish", "finishReason": "stop"},
            ],
            start=1,
        )
    )
    assert body == expected + f"id: {epoch}-8\ndata: [DONE]\n\n"


async def test_a_resume_continues_exactly_and_the_end_id_gets_204(http: Harness) -> None:
    client = await serve(http, tokens)
    body = (await (await client.get("/chat/a2")).read()).decode()
    epoch = epoch_of(body)
    resumed = await client.get("/chat/a2", headers={"Last-Event-ID": f"{epoch}-4"})
    assert (await resumed.read()).decode() == "retry: 2000\n" + "".join(
        [
            chunk(5, epoch, {"type": "text-delta", "id": "text-1", "delta": "world"}),
            chunk(6, epoch, {"type": "text-end", "id": "text-1"}),
            chunk(7, epoch, {"type": "finish", "finishReason": "stop"}),
            f"id: {epoch}-8\ndata: [DONE]\n\n",
        ]
    )
    at_end = await client.get("/chat/a2", headers={"Last-Event-ID": f"{epoch}-8"})
    assert at_end.status == 204


async def test_chunks_pass_through_and_text_parts_close_around_them(http: Harness) -> None:
    async def mixed(_request: object) -> AsyncIterator[Any]:
        yield {"type": "start", "messageMetadata": {"model": "fake"}}
        yield "thinking done. "
        yield {"type": "data-weather", "data": {"city": "Oslo"}}
        yield b"sunny"
        yield {"type": "finish", "finishReason": "length"}

    client = await serve(http, mixed)
    body = (await (await client.get("/chat/m1")).read()).decode()
    datas = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
    assert datas == [
        {"type": "start", "messageMetadata": {"model": "fake"}, "messageId": "m1"},
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "thinking done. "},
        {"type": "text-end", "id": "text-1"},
        {"type": "data-weather", "data": {"city": "Oslo"}},
        {"type": "text-start", "id": "text-2"},
        {"type": "text-delta", "id": "text-2", "delta": "sunny"},
        {"type": "text-end", "id": "text-2"},
        {"type": "finish", "finishReason": "length"},
    ]
    assert body.endswith("data: [DONE]\n\n")


async def test_a_chunk_the_ai_sdk_would_refuse_ends_the_answer_with_an_error_chunk(
    http: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    async def bad(_request: object) -> AsyncIterator[Any]:
        yield "fine"
        yield {"type": "text-delta", "delta": "no id"}

    client = await serve(http, bad)
    with caplog.at_level(logging.ERROR, "resumable_sse"):
        body = (await (await client.get("/chat/b1")).read()).decode()
    epoch = epoch_of(body)
    # Nothing of the bad chunk is sent; the error chunk carries the terminal entry's id, and [DONE] follows.
    assert body.endswith(
        chunk(4, epoch, {"type": "error", "errorText": "an event was not valid text"}) + "data: [DONE]\n\n"
    ), body
    assert "a 'text-delta' chunk needs the field 'id'" in caplog.text


async def test_error_and_cancel_are_said_in_the_ai_sdk_terms(http: Harness) -> None:
    gate = asyncio.Event()

    async def failing(_request: object) -> AsyncIterator[str]:
        yield "partial"
        raise ProducerError("the model is overloaded")

    async def waiting(_request: object) -> AsyncIterator[str]:
        yield "partial"
        await gate.wait()
        yield "never"

    streamer = Streamer(MemoryStore())
    client = await http.serve(
        [
            Route("/fail/{stream_id}", http.endpoint(failing, protocol="ai-sdk")),
            Route("/wait/{stream_id}", http.endpoint(waiting, protocol="ai-sdk")),
        ],
        streamer,
    )
    failed = (await (await client.get("/fail/e1")).read()).decode()
    assert failed.endswith(
        f'id: {epoch_of(failed)}-4\ndata: {{"type":"error","errorText":"the model is overloaded"}}\n\ndata: [DONE]\n\n'
    )
    response = await client.get("/wait/c1")
    assert (await response.content.readuntil(b'"partial"}\n\n')).startswith(b"retry:")
    assert await streamer.cancel("c1")
    rest = (await response.read()).decode()
    assert rest.endswith('data: {"type":"abort","reason":"cancelled"}\n\ndata: [DONE]\n\n'), rest
    assert "[DONE]" not in rest[: rest.index("abort")]


async def test_a_reset_is_a_replay_from_a_new_start_never_a_reset_event(http: Harness) -> None:
    client = await serve(http, tokens)
    body = (await (await client.get("/chat/r1")).read()).decode()
    # A position from another life of the stream: the client is told by a new start, then the whole replay.
    replay = (await (await client.get("/chat/r1", headers={"Last-Event-ID": "zzz-3"})).read()).decode()
    assert "event:" not in replay
    assert (
        replay
        == 'retry: 2000\ndata: {"type":"start","resumableSse":{"reset":"epoch"}}\n\n' + body[len("retry: 2000\n") :]
    )


async def test_a_trimmed_replay_reopens_the_parts_whose_start_was_trimmed(http: Harness) -> None:
    async def long(_request: object) -> AsyncIterator[Any]:
        yield {"type": "reasoning-start", "id": "r"}
        yield {"type": "reasoning-delta", "id": "r", "delta": "hmm"}
        yield {"type": "reasoning-end", "id": "r"}
        for token in ["a", "b", "c", "d"]:
            yield token

    client = await serve(http, long, Streamer(MemoryStore(max_events=4)))
    body = (await (await client.get("/chat/t1")).read()).decode()
    found = re.search(r"^id: ([a-z0-9]+)-", body, re.M)  # (the first events may have been trimmed already)
    assert found, body
    epoch = found.group(1)
    replay = (await (await client.get("/chat/t1", headers={"Last-Event-ID": f"{epoch}-1"})).read()).decode()
    datas = [line[6:] for line in replay.splitlines() if line.startswith("data: ")]
    assert [json.loads(d) if d != "[DONE]" else d for d in datas] == [
        {"type": "start", "resumableSse": {"reset": "trimmed"}},
        {"type": "text-start", "id": "text-1"},  # reopened: its own start was trimmed
        {"type": "text-delta", "id": "text-1", "delta": "d"},
        {"type": "text-end", "id": "text-1"},
        {"type": "finish", "finishReason": "stop"},
        "[DONE]",
    ]


def test_validate_chunk_names_what_is_wrong() -> None:
    assert validate_chunk({"type": "data-x", "data": 1}) == {"type": "data-x", "data": 1}
    with pytest.raises(InvalidEventData, match="'bogus' is not a UI message chunk type"):
        validate_chunk({"type": "bogus"})
    with pytest.raises(InvalidEventData, match="string 'type'"):
        validate_chunk({"delta": "x"})
    with pytest.raises(InvalidEventData, match="'approved' of a 'tool-approval-response' chunk must be a bool"):
        validate_chunk({"type": "tool-approval-response", "approvalId": "a", "approved": "yes"})
    with pytest.raises(InvalidEventData, match="finishReason"):
        validate_chunk({"type": "finish", "finishReason": "done"})


def test_a_plain_generator_is_framed_in_its_own_thread_kind() -> None:
    chunks = ui_message_stream(iter(["x"]), "m")
    assert list(chunks) == [  # type: ignore[arg-type]
        {"type": "start", "messageId": "m"},
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "x"},
        {"type": "text-end", "id": "text-1"},
        {"type": "finish", "finishReason": "stop"},
    ]


def test_an_unknown_protocol_is_refused_when_the_endpoint_is_made() -> None:
    from resumable_sse import resumable_handler

    with pytest.raises(ValueError, match="protocol must be 'sse' or 'ai-sdk'"):
        resumable_handler(tokens, protocol="vercel")  # type: ignore[arg-type]
