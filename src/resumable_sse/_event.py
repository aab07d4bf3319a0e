"""Events, event ids and the SSE wire format.

Everything here is pure: no I/O, no clock, no event loop. The wire encoding is a plain function of an entry so
that it can be tested byte for byte and computed once per entry however many readers send it.

Every event reaches the wire through one function, :func:`encode_event`, and every producer item becomes an event
through one function, :func:`normalize`, which is where text is validated: what it returns is safe for the wire and
for every store, so the encoder does not check again.

Event ids are ``<epoch>-<seq>``. ``epoch`` is a random token of ``[a-z0-9]`` made when the stream is created (a
stream created again gets a new one); ``seq`` counts from 1 with no gaps within an epoch. Clients must treat ids as
opaque strings. ``docs/protocol.md`` describes the whole wire protocol.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, NamedTuple, TypeGuard, Union

from .exceptions import EventTooLarge, InvalidEventData, InvalidEventId

__all__ = [
    "RESERVED_EVENTS",
    "TERMINAL_EVENTS",
    "Entry",
    "Event",
    "EventId",
    "Payload",
    "Reset",
    "Status",
    "encode_comment",
    "encode_event",
    "encode_retry",
    "is_plain_token",
    "new_epoch",
    "normalize",
]

Status = Literal["running", "done", "error", "cancelled", "lost"]
"""A stream's state: ``running`` until its one terminal entry is written, then the terminal state."""

TERMINAL_EVENTS: Final[frozenset[str]] = frozenset({"done", "error", "cancelled", "lost"})
"""Event types of terminal entries; a stream's last entry has one of these types and no other entry does."""

RESERVED_EVENTS: Final[frozenset[str]] = TERMINAL_EVENTS | {"reset"}
"""Event types the library sends itself; a producer may not use them, so a client can trust them."""

_EPOCH_RE: Final = re.compile(r"[a-z0-9]{1,32}")
_SEQ_RE: Final = re.compile(r"[1-9][0-9]{0,17}")
# No CR, LF or NUL (they would end the field on the wire) and no lone surrogate (it has no UTF-8 form).
_EVENT_TYPE_RE: Final = re.compile(r"[^\r\n\x00\ud800-\udfff]{1,64}")
_LINE_BREAK_RE: Final = re.compile(r"\r\n|\r|\n")
_MAX_ID_LENGTH: Final = 64


def new_epoch() -> str:
    """A fresh random epoch token: 16 lowercase hex characters (64 bits)."""
    return secrets.token_hex(8)


class EventId(NamedTuple):
    """A position in a stream: the stream's epoch and a sequence number (1 is the first event)."""

    epoch: str
    seq: int

    def __str__(self) -> str:
        return f"{self.epoch}-{self.seq}"

    @classmethod
    def parse(cls, value: str) -> EventId:
        """Parse an id sent back by a client; raise :class:`InvalidEventId` with a plain reason if malformed."""
        if len(value) > _MAX_ID_LENGTH:
            raise InvalidEventId(f"event id is longer than {_MAX_ID_LENGTH} characters")
        epoch, sep, seq = value.rpartition("-")
        if not sep or not _EPOCH_RE.fullmatch(epoch) or not _SEQ_RE.fullmatch(seq):
            raise InvalidEventId(f"malformed event id {value!r}: expected '<epoch>-<sequence number>'")
        return cls(epoch, int(seq))


Payload = Union[str, bytes, dict[str, Any], list[Any], "Event"]
"""What a producer may yield: text, UTF-8 bytes, a JSON-able dict or list, or an :class:`Event`."""


@dataclass(frozen=True, slots=True)
class Event:
    """An event a producer yields when it needs an SSE event type; a bare ``str``/``bytes``/``dict`` is a message.

    ``data`` is text, UTF-8 bytes, or a JSON-able ``dict``/``list``. ``event`` is the SSE event type (browsers
    dispatch it to ``addEventListener(event, ...)``); the types the library uses itself (``done``, ``error``,
    ``cancelled``, ``lost``, ``reset``) are reserved so that clients can trust them. The id is never chosen by
    the producer: the event log assigns it.
    """

    data: str | bytes | dict[str, Any] | list[Any]
    event: str | None = None

    def __post_init__(self) -> None:
        if self.event is not None:
            if not isinstance(self.event, str) or not _EVENT_TYPE_RE.fullmatch(self.event):
                raise ValueError(
                    f"event type must be 1-64 characters with no CR, LF, NUL or lone surrogate, got {self.event!r}"
                )
            if self.event in RESERVED_EVENTS:
                raise ValueError(
                    f"event type {self.event!r} is reserved for the library's own events "
                    f"({', '.join(sorted(RESERVED_EVENTS))})"
                )


def _text(data: object) -> str:
    if isinstance(data, str):
        return data
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TypeError(f"bytes payloads must be UTF-8 text: {exc}") from exc
    if isinstance(data, (dict, list)):
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    raise TypeError(f"a producer may yield str, bytes, dict, list or Event, not {type(data).__name__}")


def is_plain_token(item: object, max_bytes: int) -> TypeGuard[str]:
    """True when ``item`` is an ``str`` that :func:`normalize` would return unchanged as ``(None, item)``.

    That is: exactly ``str`` (not a subclass), ASCII only, and at most ``max_bytes`` characters. ASCII text is valid
    UTF-8 of one byte per character, so neither the size check nor the text check can fail, and a producer's hot
    loop may queue ``(None, item)`` without calling :func:`normalize`. Both tests are O(1) in CPython (a string
    knows whether it is ASCII). Anything else, including non-ASCII text, must go through :func:`normalize`.
    """
    return type(item) is str and item.isascii() and len(item) <= max_bytes


def normalize(item: object, max_bytes: int) -> tuple[str | None, str]:
    """Turn what a producer yielded into ``(event type, data text)``, validated for the wire and every store.

    This is the one place an item becomes an event, so it is where text is checked: the data must be Unicode text
    with a UTF-8 form (no lone surrogate such as ``"\\ud800"``, which ``str`` and JSON allow but UTF-8 does not) and
    at most ``max_bytes`` bytes of it. :func:`encode_event` and the stores then trust what this returns. (The event
    type was checked when the :class:`Event` was made.)

    Raises :class:`TypeError` for a payload of the wrong type or bytes that are not UTF-8,
    :class:`~resumable_sse.exceptions.InvalidEventData` for text with no UTF-8 form, and :class:`EventTooLarge`
    when the UTF-8 data is larger than ``max_bytes``, so that nothing of a bad event is ever written.
    """
    if type(item) is str:  # the hot path: a token
        data, event = item, None
    elif isinstance(item, Event):
        data, event = _text(item.data), item.event
    else:
        data, event = _text(item), None
    if data.isascii():  # O(1): ASCII is its own UTF-8, one byte a character
        size = len(data)
    else:
        try:
            size = len(data.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InvalidEventData(
                f"event data is not valid Unicode text: {exc.object[exc.start : exc.end]!r} at index {exc.start} "
                "is a lone surrogate, which has no UTF-8 form"
            ) from None
    if size > max_bytes:
        raise EventTooLarge(f"event of {size} bytes exceeds max_event_bytes={max_bytes}")
    return event, data


def encode_event(data: str, id: str | None = None, event: str | None = None) -> bytes:
    """Encode one SSE event per the WHATWG rules, with LF line ends: the one encoder every event goes through.

    Fields come in the order ``id``, ``event``, ``data``; each line of ``data`` (split at CRLF, CR or LF) becomes one
    ``data:`` field, so the client's joined data equals ``data`` with line breaks normalised to LF; a blank line
    ends the event.

    The input is trusted, not checked: ``data`` comes from :func:`normalize` (or is the library's own JSON), ids are
    made from an epoch and a sequence number, and event types were checked when their :class:`Event` was made or are
    the library's own. An id or event type containing CR, LF or NUL, or text with a lone surrogate, would corrupt
    the stream or fail here with :class:`UnicodeEncodeError`. ``id`` and ``event`` may be passed by position (a call
    measurably cheaper than one with keywords); :meth:`Entry.wire` makes the commonest form, a one-line token with an
    id, itself, exactly as this function would.
    """
    if "\n" in data or "\r" in data:
        data = _LINE_BREAK_RE.sub("\ndata: ", data)
    if event is None:
        if id is not None:  # a token from the log
            return f"id: {id}\ndata: {data}\n\n".encode()
        return f"data: {data}\n\n".encode()
    if id is None:
        return f"event: {event}\ndata: {data}\n\n".encode()
    return f"id: {id}\nevent: {event}\ndata: {data}\n\n".encode()


def encode_retry(milliseconds: int) -> bytes:
    """A ``retry:`` field line (no blank line after it): how long a client waits before reconnecting.

    It goes at the start of the first event block of a response, never in a block of its own: the WHATWG rules
    dispatch nothing for a block without ``data``, but some clients (httpx-sse) hand such a block to the application
    as an empty ``message`` event. Put in front of an encoded event (``encode_retry(2000) + entry.wire()``), it
    makes one block that sets the reconnection time and dispatches that event.
    """
    if milliseconds < 0:
        raise ValueError("retry must not be negative")
    return f"retry: {milliseconds}\n".encode()


def encode_comment(text: str = "") -> bytes:
    """An SSE comment line (ignored by clients; the heartbeat is one). Not an event.

    One line and no blank line after it: a blank line ends a block, and some clients (httpx-sse) hand a block
    without data to the application as an empty event once the stream has a last event id. A comment line between
    two events is valid SSE and dispatches nothing in any parser.
    """
    if "\n" in text or "\r" in text:
        raise ValueError("a comment must be a single line")
    return f":{' ' + text if text else ''}\n".encode()


class Entry:
    """One entry of a stream's log, as stores return it: sequence number, id, event type and data.

    Entries are immutable and shared by every reader; :meth:`wire` encodes one once and caches the bytes.
    """

    __slots__ = ("_wire", "data", "epoch", "event", "seq")

    def __init__(self, epoch: str, seq: int, event: str | None, data: str) -> None:
        # Made for every event on the hot path: nothing is derived here (the id is made when asked for, and the wire
        # form once, by the first reader that writes it).
        self.epoch: Final = epoch
        self.seq: Final = seq
        self.event: Final = event
        self.data: Final = data
        self._wire: bytes | None = None

    @property
    def id(self) -> str:
        """The event id: ``<epoch>-<seq>``."""
        return f"{self.epoch}-{self.seq}"

    @property
    def terminal(self) -> bool:
        """True for the stream's last entry (``done``, ``error``, ``cancelled`` or ``lost``)."""
        return self.event in TERMINAL_EVENTS

    def wire(self) -> bytes:
        """The entry as an SSE event, exactly as it goes on the wire (encoded on first use, then cached)."""
        wire = self._wire
        if wire is None:
            data = self.data
            if self.event is None and "\n" not in data and "\r" not in data:
                # The hot path, a one-line token: what encode_event makes of it, without the call.
                wire = self._wire = f"id: {self.epoch}-{self.seq}\ndata: {data}\n\n".encode()
            else:
                wire = self._wire = encode_event(data, self.id, self.event)
        return wire

    def json(self) -> Any:
        """The data parsed as JSON (terminal and dict/list events carry JSON)."""
        return json.loads(self.data)

    def __repr__(self) -> str:
        return f"Entry(id={self.id!r}, event={self.event!r}, data={self.data!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return (self.id, self.event, self.data) == (other.id, other.event, other.data)

    def __hash__(self) -> int:
        return hash((self.id, self.event, self.data))


@dataclass(frozen=True, slots=True)
class Reset:
    """Sent in-band before a replay that is not the continuation the client asked for (never a silent gap).

    ``reason`` is ``epoch`` (the position is from an earlier life of the stream), ``trimmed`` (it is older than the
    retained history) or ``position`` (it lies beyond the stream's end, e.g. the store was restored from an older
    snapshot). ``first_id`` is the id of the first event that follows the reset, or None when none is retained yet.
    The client should discard what it built from the stream and rebuild it from the events that follow.
    """

    reason: str
    first_id: str | None

    event: ClassVar[str] = "reset"
    terminal: ClassVar[bool] = False

    @property
    def data(self) -> str:
        """The reset's JSON data: ``{"reason": ..., "first_id": ...}``."""
        return json.dumps({"reason": self.reason, "first_id": self.first_id}, separators=(",", ":"))

    def wire(self) -> bytes:
        """The reset as an SSE event without an id (it is not part of the log, so it moves no client's position)."""
        return encode_event(self.data, event=self.event)
