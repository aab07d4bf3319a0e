"""The AI SDK's UI message stream: the dialect that ``useChat`` (npm ``ai`` 5 and later) reads.

The AI SDK's chat client parses every ``data:`` of an SSE response as one *UI message chunk* (a JSON object with a
``type``: ``start``, ``text-start``, ``text-delta``, ``text-end``, ``finish``, ``error``, reasoning, tool, data and
source parts, ...) and fails the whole answer on anything else, such as this library's own ``done`` or ``reset``
events. This module frames a resumable stream in those terms; the log, the ids and every guarantee stay the same:

* The producer's items become chunks as they are produced (:func:`ui_message_stream`): text is sent as
  ``text-delta`` chunks of a text part, inside ``start``/``text-start`` ... ``text-end``/``finish``; a ``dict`` is a
  chunk of the producer's own, checked against the chunk types the AI SDK accepts (:func:`validate_chunk`) and
  passed through. So the log holds the chunks, and every event on the wire keeps its ``id:`` line (the AI SDK's
  parser accepts and ignores it; the transport of ``resumable-sse.js`` resumes with it, exactly).
* The terminal entry is said in the AI SDK's terms (:data:`DIALECT`): ``done`` is ``data: [DONE]``; ``error`` and
  ``lost`` an ``error`` chunk with ``errorText``, then ``[DONE]``; ``cancelled`` an ``abort`` chunk, then ``[DONE]``.
* A reset (the store lost history, or the stream was created again) is a replay the client accepts: a new
  ``start`` chunk (it carries ``"resumableSse": {"reset": reason}``, which the AI SDK ignores), then every retained
  chunk; a text or reasoning part whose ``*-start`` was trimmed away is opened again before its first delta.
* Responses carry the ``x-vercel-ai-ui-message-stream: v1`` header.

``resumable_handler(producer, protocol="ai-sdk")`` (aiohttp) and ``resumable_endpoint(producer, protocol="ai-sdk")``
(Starlette, FastAPI) serve a stream in this dialect; :mod:`resumable_sse.ai_sdk_routes` serves the two routes
``useChat`` calls. ``docs/ai-sdk.md`` shows both ends.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, cast

from ._event import Entry, Reset, encode_event
from ._producer import Factory, Source
from ._subscription import Item
from .exceptions import InvalidEventData

__all__ = [
    "CHUNK_TYPES",
    "DIALECT",
    "HEADERS",
    "UIMessageStream",
    "frame_factory",
    "ui_message_stream",
    "validate_chunk",
]

HEADERS: Final[Mapping[str, str]] = {"x-vercel-ai-ui-message-stream": "v1"}
"""The header that tells the AI SDK the body is a UI message stream."""

DONE: Final = b"data: [DONE]\n\n"
TEXT_PART: Final = "text-"
"""Text parts opened for yielded text are named ``text-1``, ``text-2``, ... (the AI SDK's ids are per message)."""

# Each chunk type the AI SDK's uiMessageChunkSchema accepts (ai 7), with its required string fields and the other
# fields it requires. A type beginning ``data-`` is a data part (``data`` required); extra fields are allowed.
_S, _ANY = "str", "any"
CHUNK_TYPES: Final[Mapping[str, Mapping[str, str]]] = {
    "start": {},
    "finish": {},
    "abort": {},
    "error": {"errorText": _S},
    "message-metadata": {"messageMetadata": _ANY},
    "start-step": {},
    "finish-step": {},
    "reset-step": {},
    "text-start": {"id": _S},
    "text-delta": {"id": _S, "delta": _S},
    "text-end": {"id": _S},
    "reasoning-start": {"id": _S},
    "reasoning-delta": {"id": _S, "delta": _S},
    "reasoning-end": {"id": _S},
    "tool-input-start": {"toolCallId": _S, "toolName": _S},
    "tool-input-delta": {"toolCallId": _S, "inputTextDelta": _S},
    "tool-input-available": {"toolCallId": _S, "toolName": _S, "input": _ANY},
    "tool-input-error": {"toolCallId": _S, "toolName": _S, "input": _ANY, "errorText": _S},
    "tool-approval-request": {"approvalId": _S, "toolCallId": _S},
    "tool-approval-response": {"approvalId": _S, "approved": "bool"},
    "tool-output-available": {"toolCallId": _S, "output": _ANY},
    "tool-output-error": {"toolCallId": _S, "errorText": _S},
    "tool-output-denied": {"toolCallId": _S},
    "custom": {"kind": _S},
    "source-url": {"sourceId": _S, "url": _S},
    "source-document": {"sourceId": _S, "mediaType": _S, "title": _S},
    "file": {"url": _S, "mediaType": _S},
    "reasoning-file": {"url": _S, "mediaType": _S},
    "steering-message": {"id": _S, "parts": "list"},
}
FINISH_REASONS: Final = frozenset({"stop", "length", "content-filter", "tool-calls", "error", "interrupted", "other"})
_KINDS: Final[Mapping[str, type | tuple[type, ...]]] = {"str": str, "bool": bool, "list": list}


def validate_chunk(chunk: Mapping[str, Any]) -> dict[str, Any]:
    """``chunk`` as a dict if the AI SDK accepts it as a UI message chunk; else :class:`InvalidEventData` saying
    why (a producer that yields it ends its stream with ``error``: the client would have failed on it anyway)."""
    kind = chunk.get("type")
    if not isinstance(kind, str):
        raise InvalidEventData(f"a UI message chunk needs a string 'type', got {chunk!r:.200}")
    if kind.startswith("data-"):
        required: Mapping[str, str] = {"data": _ANY}
    else:
        found = CHUNK_TYPES.get(kind)
        if found is None:
            raise InvalidEventData(
                f"{kind!r} is not a UI message chunk type the AI SDK accepts (one of {', '.join(CHUNK_TYPES)}, "
                "or data-*)"
            )
        required = found
    for name, want in required.items():
        if name not in chunk:
            raise InvalidEventData(f"a {kind!r} chunk needs the field {name!r}")
        if want != _ANY and not isinstance(chunk[name], _KINDS[want]):
            raise InvalidEventData(f"the field {name!r} of a {kind!r} chunk must be a {want}")
    if kind == "finish" and chunk.get("finishReason", "stop") not in FINISH_REASONS:
        raise InvalidEventData(f"finishReason must be one of {', '.join(sorted(FINISH_REASONS))}")
    return dict(chunk)


class _Framer:
    """Turns a producer's items into chunks: opens the answer with ``start``, puts text into text parts, passes the
    producer's own chunks through, and closes what is open at the end (``text-end``, then ``finish``)."""

    def __init__(self, message_id: str | None) -> None:
        self.message_id = message_id
        self.started = False
        self.finished = False
        self.text: str | None = None  # the id of the text part open for yielded text
        self.parts = 0

    def feed(self, item: object) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if isinstance(item, bytes):
            item = item.decode("utf-8")
        if isinstance(item, str):
            if not self.started:
                out.append(self._start())
            if not item:
                return out  # an empty delta shows nothing; the client's text part need not hear of it
            if self.text is None:
                self.parts += 1
                self.text = f"{TEXT_PART}{self.parts}"
                out.append({"type": "text-start", "id": self.text})
            out.append({"type": "text-delta", "id": self.text, "delta": item})
            return out
        if not isinstance(item, Mapping):
            raise TypeError(
                f"a producer of a UI message stream yields text or UI message chunks (dicts), not {type(item).__name__}"
            )
        chunk = validate_chunk(item)
        kind = chunk["type"]
        if kind == "start":
            if self.message_id is not None:
                chunk.setdefault("messageId", self.message_id)
            self.started = True
        elif not self.started:
            out.append(self._start())
        if self.text is not None and kind not in ("message-metadata",):
            out.append(self._end_text())
        if kind == "finish":
            self.finished = True
        out.append(chunk)
        return out

    def close(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.started:
            out.append(self._start())
        if self.text is not None:
            out.append(self._end_text())
        if not self.finished:
            out.append({"type": "finish", "finishReason": "stop"})
        return out

    def _start(self) -> dict[str, Any]:
        self.started = True
        return {"type": "start"} if self.message_id is None else {"type": "start", "messageId": self.message_id}

    def _end_text(self) -> dict[str, Any]:
        chunk = {"type": "text-end", "id": self.text}
        self.text = None
        return chunk


UIMessageStream = AsyncIterator[dict[str, Any]] | Iterator[dict[str, Any]]


def ui_message_stream(source: Source, message_id: str | None = None) -> UIMessageStream:
    """The UI message chunks of ``source``'s items (text, or chunks as dicts): async for an async iterable, a
    plain generator (which the engine drains in a worker thread) for a plain one.

    :param message_id: the ``messageId`` of the ``start`` chunk (the id the assistant message gets in ``useChat``;
        keep the finished answer in the chat's history under the same id, so a replay replaces it, never adds it).
    """
    framer = _Framer(message_id)
    if isinstance(source, AsyncIterable):
        return _async_chunks(source, framer)
    return _sync_chunks(source, framer)


async def _async_chunks(source: AsyncIterable[Any], framer: _Framer) -> AsyncIterator[dict[str, Any]]:
    async for item in source:
        for chunk in framer.feed(item):
            yield chunk
    for chunk in framer.close():
        yield chunk


def _sync_chunks(source: Iterable[Any], framer: _Framer) -> Iterator[dict[str, Any]]:
    for item in source:
        yield from framer.feed(item)
    yield from framer.close()


def frame_factory(factory: Factory, message_id: str | None = None) -> Factory:
    """``factory`` (what the engine calls to open a stream's source) with its source framed as UI message chunks,
    of the same kind, so the engine runs it where it ran ``factory``: an async generator function or an async
    function on the event loop, any other function in a worker thread."""
    if inspect.isasyncgenfunction(factory):  # (inspect sees through a functools.partial, as the engine does)

        async def async_gen() -> AsyncIterator[dict[str, Any]]:
            async for chunk in _async_chunks(factory(), _Framer(message_id)):
                yield chunk

        return async_gen
    if inspect.iscoroutinefunction(factory):

        async def opened() -> UIMessageStream:
            return ui_message_stream(await factory(), message_id)

        return opened

    def in_thread() -> UIMessageStream:
        return ui_message_stream(cast(Source, factory()), message_id)

    return in_thread


class Dialect:
    """How a response frames the log in the AI SDK's terms; the HTTP layer asks it for a per-response
    :meth:`encoder`. A live entry is a chunk already (:func:`ui_message_stream` put it in the log so), and goes out
    as it is: its cached wire bytes, with its id, so the aiohttp adapter's direct writes of the live tail stay right.
    Only the terminal entry, a reset and the parts a trimmed replay begins inside are framed here."""

    headers: Final = HEADERS

    def frame(self, factory: Factory, stream_id: str) -> Factory:
        """The stream's source as UI message chunks; the ``start`` chunk's ``messageId`` is the stream id."""
        return frame_factory(factory, stream_id)

    def encoder(self) -> Callable[[Sequence[Item]], bytes]:
        """A function encoding one batch of a response's items; it keeps what a replay after a reset opened."""
        opened: set[tuple[str, str]] | None = None  # (kind, id) of parts opened since a reset; None: no reset seen

        def encode(batch: Sequence[Item]) -> bytes:
            nonlocal opened
            out: list[bytes] = []
            for item in batch:
                if isinstance(item, Reset):
                    opened = set()
                    reset = {"type": "start", "resumableSse": {"reset": item.reason}}
                    out.append(encode_event(json.dumps(reset, separators=(",", ":"))))
                elif item.terminal:
                    out.append(_terminal(item))
                else:
                    assert isinstance(item, Entry)
                    if opened is not None:
                        out.extend(_reopen(item, opened))
                    out.append(item.wire())
            return b"".join(out)

        return encode


def _terminal(item: Item) -> bytes:
    """A terminal entry (or the end of a stream the store lost) in the AI SDK's terms, then ``[DONE]``."""
    ident = item.id if isinstance(item, Entry) else None
    if item.event == "done":
        return (f"id: {ident}\n".encode() if ident else b"") + DONE
    try:
        message = str(json.loads(item.data).get("message") or item.event)
    except (ValueError, AttributeError):
        message = str(item.event)
    chunk = (
        {"type": "abort", "reason": message} if item.event == "cancelled" else {"type": "error", "errorText": message}
    )
    return encode_event(json.dumps(chunk, separators=(",", ":")), ident) + DONE


def _reopen(entry: Entry, opened: set[tuple[str, str]]) -> list[bytes]:
    """The ``*-start`` a replayed text or reasoning part lacks (its start was trimmed from the log) before its first
    chunk; nothing for every other chunk."""
    try:
        chunk = json.loads(entry.data)
        kind, part = chunk["type"], chunk.get("id")
    except (ValueError, KeyError, TypeError):
        return []
    if not isinstance(kind, str) or not isinstance(part, str):
        return []
    family, _, phase = kind.partition("-")
    if family not in ("text", "reasoning"):
        return []
    key = (family, part)
    if phase == "start" or key in opened:
        opened.add(key)
        return []
    opened.add(key)
    return [encode_event(json.dumps({"type": f"{family}-start", "id": part}, separators=(",", ":")))]


DIALECT: Final = Dialect()
"""The UI message stream dialect, as ``protocol="ai-sdk"`` selects it."""
