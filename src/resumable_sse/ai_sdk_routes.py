"""The two routes the AI SDK's ``useChat`` calls, on aiohttp and on Starlette/FastAPI, answered by a producer.

::

    async def answer(chat: ChatRequest) -> AsyncIterator[str]:   # text, or UI message chunks as dicts
        async for token in model.stream(chat.messages):
            yield token

    app.add_routes(aiohttp_chat_routes(answer))                   # aiohttp
    app.router.routes.extend(starlette_chat_routes(answer))       # FastAPI, Starlette

* ``POST /api/chat`` (``DefaultChatTransport``'s send): the JSON body (``id``, ``messages``, ``trigger``,
  ``messageId`` and the app's own fields) becomes a :class:`ChatRequest`; the answer is a resumable stream whose id
  :func:`answer_id` derives from it (the chat id and the number of messages before the answer), so a second POST
  of the same turn, while its answer runs, gets that answer from its first chunk: the producer runs once per answer.
  The stream id is also the answer's ``messageId``: keep the finished answer in the chat's history under it, and a
  replay replaces it in ``useChat``'s messages, never adds it twice.
* ``GET /api/chat/{id}/stream`` (the transport's ``reconnectToStream``): ``204`` when the chat has no running
  answer (the AI SDK asks on every page load; a finished answer is in the history the page loaded); the running
  answer from its start otherwise (a replay, which ``useChat`` rebuilds the message from), or with ``Last-Event-ID``
  the exact continuation (what the ``ResumableChatTransport`` of ``resumable-sse.js`` sends).
* ``DELETE /api/chat/{id}/stream`` (with ``cancel=True``): cancels the chat's running answer. ``useChat``'s
  ``stop()`` only closes the client's connection: the answer goes on, and a reload shows it; a page that means
  "stop generating" calls this after ``stop()``.

Which answer of a chat is current is kept by an :class:`Answers` (in this process's memory by default; with several
processes sharing a Redis store, :class:`RedisAnswers`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from ._producer import Source
from ._streamer import Streamer
from .exceptions import InvalidStreamId, ProducerError

__all__ = [
    "Answers",
    "ChatRequest",
    "MemoryAnswers",
    "RedisAnswers",
    "aiohttp_chat_routes",
    "answer_id",
    "parse_chat_request",
    "starlette_chat_routes",
]

MAX_CHAT_ID: Final = 96  # so that an answer id (chat id, '.', message count, a regeneration's tag) fits 128


@dataclass(frozen=True)
class ChatRequest:
    """What ``useChat`` sent: the chat's ``id``, its ``messages`` (UI messages, the new user message last),
    ``trigger`` (``submit-message`` or ``regenerate-message``), ``message_id`` (the message to regenerate or to
    replace), the whole JSON ``body`` (with the app's own fields) and the framework's ``request``."""

    id: str
    messages: list[dict[str, Any]]
    trigger: str
    message_id: str | None
    body: Mapping[str, Any]
    request: Any = field(repr=False, compare=False)

    @property
    def last_user_text(self) -> str:
        """The text parts of the last user message, joined (what a model that answers one prompt is asked)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                parts = message.get("parts") or []
                return "".join(p.get("text", "") for p in parts if isinstance(p, dict) and p.get("type") == "text")
        return ""


def parse_chat_request(raw: bytes, request: Any = None) -> ChatRequest:
    """The :class:`ChatRequest` of a POST body; :class:`ValueError` with a plain reason when it is not one."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    chat_id, messages, trigger = body.get("id"), body.get("messages"), body.get("trigger", "submit-message")
    if not isinstance(chat_id, str) or not chat_id:
        raise ValueError("the body has no chat 'id'")
    if len(chat_id) > MAX_CHAT_ID:
        raise ValueError(f"the chat id is longer than {MAX_CHAT_ID} characters")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError("'messages' must be a list of UI messages")
    if trigger not in ("submit-message", "regenerate-message"):
        raise ValueError("'trigger' must be 'submit-message' or 'regenerate-message'")
    message_id = body.get("messageId")
    return ChatRequest(chat_id, messages, trigger, message_id if isinstance(message_id, str) else None, body, request)


def answer_id(chat: ChatRequest) -> str:
    """The stream id (and ``messageId``) of the answer ``chat`` asks for: ``<chat id>.<messages before it>``, and
    for a regeneration a tag of the message it replaces, so each turn (and each regeneration) is a stream of its
    own, and the same turn asked twice is the same stream."""
    turn = f"{chat.id}.{len(chat.messages)}"
    if chat.trigger == "regenerate-message" and chat.message_id:
        turn += "." + hashlib.sha256(chat.message_id.encode()).hexdigest()[:12]
    return turn


class Answers(Protocol):
    """Which answer (a stream id) is a chat's current one: set when a POST starts or joins it, read by the resume
    route. Keep it where every process that serves the chat can read it."""

    async def current(self, chat_id: str) -> str | None: ...

    async def begin(self, chat_id: str, stream_id: str) -> None: ...


class MemoryAnswers:
    """:class:`Answers` in this process's memory, at most ``max_chats`` (the oldest forgotten first)."""

    def __init__(self, max_chats: int = 100_000) -> None:
        self.chats: dict[str, str] = {}
        self.max_chats = max_chats

    async def current(self, chat_id: str) -> str | None:
        return self.chats.get(chat_id)

    async def begin(self, chat_id: str, stream_id: str) -> None:
        self.chats.pop(chat_id, None)
        self.chats[chat_id] = stream_id
        while len(self.chats) > self.max_chats:
            del self.chats[next(iter(self.chats))]


class RedisAnswers:
    """:class:`Answers` in Redis (a ``redis.asyncio`` client), one key per chat that expires after ``ttl`` seconds
    (keep it at least as long as the store keeps a finished stream)."""

    def __init__(self, redis: Any, *, prefix: str = "resumable-sse:chat:", ttl: float = 3600.0) -> None:
        self.redis, self.prefix, self.ttl = redis, prefix, ttl

    async def current(self, chat_id: str) -> str | None:
        value = await self.redis.get(self.prefix + chat_id)
        return value.decode() if isinstance(value, bytes) else value

    async def begin(self, chat_id: str, stream_id: str) -> None:
        await self.redis.set(self.prefix + chat_id, stream_id, px=int(self.ttl * 1000))


AnswerFunction = Callable[[ChatRequest], Source]
"""``answer(chat)``: an async generator function (or a plain one, run in a worker thread) of text or chunks."""


def _producer(answer: AnswerFunction, chat_of: Callable[[Any], ChatRequest]) -> Callable[[Any], Source]:
    """``answer`` as a ``producer(request)`` of the same kind (the engine runs each kind where it belongs)."""
    if inspect.isasyncgenfunction(answer):

        async def async_producer(request: Any) -> AsyncIterator[Any]:
            async for item in answer(chat_of(request)):
                yield item

        return async_producer

    def producer(request: Any) -> Source:
        return answer(chat_of(request))

    return producer


async def _nothing(_request: Any) -> AsyncIterator[str]:
    """The resume route's producer: it never claims a stream (it asks only for running ones); should one expire
    between the question and the claim, it ends at once rather than start an answer nobody asked for."""
    for _ in ():
        yield ""  # (an async generator)
    raise ProducerError("no answer is running for this chat")


_CHAT: Final = "resumable_sse.chat"
_ANSWER: Final = "resumable_sse.answer"


class _Routes:
    """What the routes decide, whatever the framework: which answer a resume gets, and a cancel's status."""

    def __init__(self, answers: Answers | None, api: str) -> None:
        self.chats: Answers = answers if answers is not None else MemoryAnswers()
        self.stream_path = api.rstrip("/") + "/{id}/stream"

    async def resumable(self, engine: Streamer, chat_id: str, position: bool) -> str | None:
        """The answer a resume of ``chat_id`` is served: the chat's current one while it runs; with a position
        also once it has ended (the tail after that position). None: nothing to resume (204)."""
        sid = await self.chats.current(chat_id)
        if sid is None or position:
            return sid
        state = await engine.status(sid)
        return sid if state is not None and not state.finished else None

    async def cancel(self, engine: Streamer, chat_id: str) -> int:
        """Cancel the chat's running answer: 202, or 204 when none ran."""
        sid = await self.chats.current(chat_id)
        return 202 if sid is not None and await engine.cancel(sid) else 204


def aiohttp_chat_routes(
    answer: AnswerFunction,
    *,
    api: str = "/api/chat",
    answers: Answers | None = None,
    cancel: bool = False,
    **options: Any,
) -> list[Any]:
    """The AI SDK's chat routes on aiohttp (``app.add_routes(...)``): ``POST {api}``, ``GET {api}/{id}/stream``
    and, with ``cancel=True``, ``DELETE {api}/{id}/stream``. ``options`` go to
    :func:`~resumable_sse.resumable_handler` (``streamer``, ``authorize``, ``heartbeat``, ``send_timeout``, ...)."""
    from aiohttp import web

    from .aiohttp import _streamer_for, resumable_handler

    routes = _Routes(answers, api)
    engine = options.get("streamer")
    # A request's own storage carries the chat and its answer id to the stream handler (typed keys where aiohttp
    # has them: 3.13 warns of plain ones).
    request_key = getattr(web, "RequestKey", None)
    chat_key: Any = request_key(_CHAT, ChatRequest) if request_key else _CHAT
    answer_key: Any = request_key(_ANSWER, str) if request_key else _ANSWER
    serve = resumable_handler(
        _producer(answer, lambda request: request[chat_key]),
        stream_id=lambda request: request[answer_key],
        protocol="ai-sdk",
        **options,
    )
    resume = resumable_handler(_nothing, stream_id=lambda request: request[answer_key], protocol="ai-sdk", **options)

    async def post(request: web.Request) -> web.StreamResponse:
        # The route is POST; what it serves is the stream's GET (no position: from the first chunk, joined if the
        # answer runs already). A clone is aiohttp's own way to hand a request on changed (made before the body is
        # read: aiohttp clones no request whose body was read; the original reads it).
        stream_request = request.clone(
            method="GET", headers={k: v for k, v in request.headers.items() if k.lower() != "last-event-id"}
        )
        try:
            chat = parse_chat_request(await request.read(), request)
        except ValueError as exc:
            return web.Response(status=400, text=f"{exc}\n")
        sid = answer_id(chat)
        stream_request[chat_key], stream_request[answer_key] = chat, sid
        await routes.chats.begin(chat.id, sid)
        return await serve(stream_request)

    async def get(request: web.Request) -> web.StreamResponse:
        position = bool(request.headers.get("Last-Event-ID") or request.query.get("last_event_id"))
        try:
            sid = await routes.resumable(engine or _streamer_for(request), request.match_info["id"], position)
        except InvalidStreamId as exc:
            return web.Response(status=400, text=f"{exc}\n")
        if sid is None:
            return web.Response(status=204)
        request[answer_key] = sid
        response = await resume(request)
        return web.Response(status=204) if response.status == 410 else response  # expired: nothing to resume

    async def delete(request: web.Request) -> web.StreamResponse:
        return web.Response(status=await routes.cancel(engine or _streamer_for(request), request.match_info["id"]))

    made = [web.post(api, post), web.get(routes.stream_path, get)]
    return [*made, web.delete(routes.stream_path, delete)] if cancel else made


def starlette_chat_routes(
    answer: AnswerFunction,
    *,
    api: str = "/api/chat",
    answers: Answers | None = None,
    cancel: bool = False,
    **options: Any,
) -> list[Any]:
    """The AI SDK's chat routes as Starlette routes (``app.router.routes.extend(...)`` on FastAPI, or
    ``Starlette(routes=[...])``): ``POST {api}``, ``GET {api}/{id}/stream`` and, with ``cancel=True``,
    ``DELETE {api}/{id}/stream``. ``options`` go to :func:`~resumable_sse.starlette.resumable_endpoint`."""
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    from .starlette import _streamer_for, resumable_endpoint

    routes = _Routes(answers, api)
    engine = options.get("streamer")
    serve = resumable_endpoint(
        _producer(answer, lambda request: request.scope[_CHAT]),
        stream_id=lambda request: request.scope[_ANSWER],
        protocol="ai-sdk",
        **options,
    )
    resume = resumable_endpoint(
        _nothing, stream_id=lambda request: request.scope[_ANSWER], protocol="ai-sdk", **options
    )

    async def post(request: Request) -> Response:
        try:
            chat = parse_chat_request(await request.body(), request)
        except ValueError as exc:
            return PlainTextResponse(f"{exc}\n", 400)
        sid = answer_id(chat)
        # The route is POST; what it serves is the stream's GET (no position: from the first chunk, joined if the
        # answer runs already): the same ASGI request, its scope saying so.
        headers = [(k, v) for k, v in request.scope["headers"] if k.lower() != b"last-event-id"]
        scope = {**request.scope, "method": "GET", "headers": headers, _CHAT: chat, _ANSWER: sid}
        await routes.chats.begin(chat.id, sid)
        return await serve(Request(scope, request.receive))

    async def get(request: Request) -> Response:
        position = bool(request.headers.get("last-event-id") or request.query_params.get("last_event_id"))
        try:
            sid = await routes.resumable(engine or _streamer_for(request), request.path_params["id"], position)
        except InvalidStreamId as exc:
            return PlainTextResponse(f"{exc}\n", 400)
        if sid is None:
            return Response(status_code=204)
        request.scope[_ANSWER] = sid
        response = await resume(request)
        return Response(status_code=204) if response.status_code == 410 else response

    async def delete(request: Request) -> Response:
        return Response(status_code=await routes.cancel(engine or _streamer_for(request), request.path_params["id"]))

    made = [Route(api, post, methods=["POST"]), Route(routes.stream_path, get, methods=["GET"])]
    return [*made, Route(routes.stream_path, delete, methods=["DELETE"])] if cancel else made
