"""Events, event ids and the SSE wire format.

Everything here is pure: no I/O, no clock, no event loop. The wire encoding is a plain function of an entry so
that it can be tested byte for byte and computed once per entry however many readers send it.

Id format (DESIGN §2): ``<epoch>-<seq>``. ``epoch`` is a random token of ``[a-z0-9]`` made when the stream is
created; ``seq`` counts from 1 with no gaps within an epoch. Clients must treat ids as opaque strings.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, Union

from .exceptions import EventTooLarge, InvalidEventId

__all__ = [
    "RESERVED_EVENTS",
    "TERMINAL_EVENTS",
    "Entry",
    "Event",
    "EventId",
    "Payload",
    "Status",
    "encode_comment",
    "encode_event",
    "encode_retry",
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
_EVENT_TYPE_RE: Final = re.compile(r"[^\r\n\x00]{1,64}")
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
                raise ValueError(f"event type must be 1-64 characters with no CR, LF or NUL, got {self.event!r}")
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


def normalize(item: object, max_bytes: int) -> tuple[str | None, str]:
    """Turn what a producer yielded into ``(event type, data text)``.

    Raises :class:`TypeError` for a payload of the wrong type and :class:`EventTooLarge` when the UTF-8 data is
    larger than ``max_bytes``, so that nothing of an oversized event is ever written.
    """
    if type(item) is str:  # the hot path: a token
        data, event = item, None
    elif isinstance(item, Event):
        data, event = _text(item.data), item.event
    else:
        data, event = _text(item), None
    # len(str) <= UTF-8 length <= 4 * len(str): encode only when the cheap bounds cannot decide.
    if len(data) * 4 > max_bytes and (len(data) > max_bytes or len(data.encode("utf-8")) > max_bytes):
        raise EventTooLarge(f"event of {len(data.encode('utf-8'))} bytes exceeds max_event_bytes={max_bytes}")
    return event, data


class Entry:
    """One entry of a stream's log, as stores return it: sequence number, id, event type and data.

    Entries are immutable and shared by every reader; :meth:`wire` encodes one once and caches the bytes.
    """

    __slots__ = ("_wire", "data", "epoch", "event", "id", "seq")

    def __init__(self, epoch: str, seq: int, event: str | None, data: str) -> None:
        self.epoch: Final = epoch
        self.seq: Final = seq
        self.id: Final = f"{epoch}-{seq}"
        self.event: Final = event
        self.data: Final = data
        self._wire: bytes | None = None

    @property
    def terminal(self) -> bool:
        """True for the stream's last entry (``done``, ``error``, ``cancelled`` or ``lost``)."""
        return self.event in TERMINAL_EVENTS

    def wire(self) -> bytes:
        """The entry as an SSE event, exactly as it goes on the wire."""
        wire = self._wire
        if wire is None:
            data = self.data
            if self.event is None and "\n" not in data and "\r" not in data:  # a token: the common case
                wire = f"id: {self.id}\ndata: {data}\n\n".encode()
            else:
                wire = encode_event(data, id=self.id, event=self.event)
            self._wire = wire
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


def encode_event(data: str, *, id: str | None = None, event: str | None = None) -> bytes:
    """Encode one SSE event per the WHATWG rules, with LF line ends.

    Each line of ``data`` (split at CRLF, CR or LF) becomes one ``data:`` field, so the client's joined data equals
    ``data`` with line breaks normalised to LF. ``id`` and ``event`` must not contain CR, LF or NUL (callers have
    validated them); they are checked here too because a bad id would corrupt the stream for every reader.
    """
    head = ""
    if id is not None:
        if "\n" in id or "\r" in id or "\0" in id:
            raise ValueError(f"an SSE id must not contain CR, LF or NUL: {id!r}")
        head = f"id: {id}\n"
    if event is not None:
        if "\n" in event or "\r" in event:
            raise ValueError(f"an SSE event type must not contain CR or LF: {event!r}")
        head += f"event: {event}\n"
    if "\n" in data or "\r" in data:
        body = "".join(f"data: {line}\n" for line in _LINE_BREAK_RE.split(data))
    else:
        body = f"data: {data}\n"
    return f"{head}{body}\n".encode()


def encode_retry(milliseconds: int) -> bytes:
    """A ``retry:`` field on its own: tells the browser how long to wait before reconnecting."""
    if milliseconds < 0:
        raise ValueError("retry must not be negative")
    return f"retry: {milliseconds}\n\n".encode()


def encode_comment(text: str = "") -> bytes:
    """An SSE comment line (ignored by clients; used as a heartbeat)."""
    if "\n" in text or "\r" in text:
        raise ValueError("a comment must be a single line")
    return f":{' ' + text if text else ''}\n\n".encode()
