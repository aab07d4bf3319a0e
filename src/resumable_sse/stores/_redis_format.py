"""How a stream looks inside Redis: events packed into one argument, the published change, replies decoded.

Events of one append travel and are stored as one string: ``<event type>\xfe<data>`` each, joined by ``\xff``
(two bytes UTF-8 text never contains), so an append is one argument and one stream entry however many events it
holds. A published change is ``<epoch>\n<status>\n<first>\n<last>\n<count>\n<packed>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
from collections.abc import Sequence
from typing import Any, Final

from .._event import Entry, Status
from .._log import NewEvent, Page, StreamState

__all__ = [
    "Call",
    "Pending",
    "Script",
    "bounded",
    "ms",
    "pack",
    "parse_change",
    "renewal",
    "status_of",
    "text",
    "unpack",
]

Call = tuple[Sequence[str | bytes], Sequence[Any]]
"""One script call: its keys and its arguments."""

MAX_COMMAND_BYTES: Final = 16 * 1024 * 1024
"""A group commit sends one command per this many bytes of appends: Redis drops a client whose query buffer grows
too large (``client-query-buffer-limit``), and a command that can never succeed must not be sent."""

_STATUSES: Final[dict[bytes, Status]] = {
    b"running": "running",
    b"done": "done",
    b"error": "error",
    b"cancelled": "cancelled",
    b"lost": "lost",
}


def status_of(value: bytes | str) -> Status:
    """A stream status as Redis returns it (bytes or text) as a :data:`Status`."""
    return _STATUSES[value if isinstance(value, bytes) else value.encode()]


def unpack(epoch: str, first: int, packed: bytes, skip: int, limit: int) -> list[Entry]:
    """Entries from packed events (``<type>\\xfe<data>`` joined by ``\\xff``): the first event has seq ``first``;
    ``skip`` events are dropped from the front and at most ``limit`` are kept."""
    # surrogateescape turns the separator bytes into lone surrogates, which valid UTF-8 text never decodes to.
    items = packed.decode("utf-8", "surrogateescape").split("\udcff")[skip : skip + limit]
    start = first + skip
    entries = []
    for index, item in enumerate(items):
        event, _, data = item.partition("\udcfe")
        entries.append(Entry(epoch, start + index, event or None, data))
    return entries


def parse_change(stream_id: str, message: bytes) -> Page:
    """A published change (``<epoch>\\n<status>\\n<first>\\n<last>\\n<count>\\n<packed>``) as a :class:`Page`."""
    epoch_b, status_b, first_b, last_b, count_b, packed = message.split(b"\n", 5)
    epoch, first, last, count = epoch_b.decode(), int(first_b), int(last_b), int(count_b)
    state = StreamState(stream_id, epoch, status_of(status_b), first, last)
    if not count:
        return Page(state)
    start = last - count + 1
    skip = max(0, first - start)  # events of this append already trimmed (a batch larger than max_events)
    return Page(state, unpack(epoch, start, packed, skip, count))


def text(value: bytes | str) -> str:
    """A reply element as text, whatever the client's ``decode_responses``."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def ms(seconds: float) -> int:
    """Seconds as whole milliseconds, at least 1."""
    return max(1, round(seconds * 1000))


class Script:
    """One Lua script of ``stores/lua``: its text and SHA1; run with EVALSHA, loaded (SCRIPT LOAD) after NOSCRIPT."""

    __slots__ = ("sha", "text")

    def __init__(self, name: str) -> None:
        folder = importlib.resources.files("resumable_sse.stores").joinpath("lua")
        self.text = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        self.sha = hashlib.sha1(self.text.encode("utf-8")).hexdigest()


class Pending:
    """An append waiting for the next group commit: its stream, events, keys and the one argument it travels as."""

    __slots__ = ("arg", "events", "final", "future", "keys", "stream_id")

    def __init__(
        self, stream_id: str, events: Sequence[NewEvent], final: Status | None, keys: tuple[bytes, ...], arg: bytes
    ) -> None:
        self.stream_id = stream_id
        self.events = events
        self.final = final
        self.keys = keys
        self.arg = arg
        self.future: asyncio.Future[int] = asyncio.get_running_loop().create_future()


def bounded(items: list[Pending]) -> list[list[Pending]]:
    """``items`` in runs of at most :data:`MAX_COMMAND_BYTES` of arguments (at least one item each)."""
    runs: list[list[Pending]] = [[]]
    size = 0
    for item in items:
        if runs[-1] and size + len(item.arg) > MAX_COMMAND_BYTES:
            runs.append([])
            size = 0
        runs[-1].append(item)
        size += len(item.arg)
    return runs


def renewal(key_prefix: str, leases: Sequence[tuple[str, str]]) -> tuple[list[bytes], bytes]:
    """The keys (state hash and entries of each stream) and the one argument of a renewal of many leases on a single
    server. Every argument costs redis-py's packing ~0.6 us: the tokens travel joined by ``\\xff`` (a byte UTF-8
    never holds), the keys as bytes (nothing for redis-py to encode). 10,000 leases: 21 -> 12 ms of CPU."""
    keys: list[bytes] = []
    for stream_id, _ in leases:
        tag = f"{{{key_prefix}:{stream_id}}}".encode()
        keys += (tag + b":m", tag + b":e")
    return keys, b"\xff".join([token.encode() for _, token in leases])


def pack(events: Sequence[NewEvent]) -> bytes:
    """Events as one argument: ``<type>\\xfe<data>`` each, joined by ``\\xff`` (bytes UTF-8 text never has)."""
    if not events:
        return b""
    text = "\udcff".join([f"{event or ''}\udcfe{data}" for event, data in events])
    packed = text.encode("utf-8", "surrogateescape")
    if packed.count(b"\xff") != len(events) - 1 or packed.count(b"\xfe") != len(events):
        # Some text held lone surrogates (not valid Unicode text): let a strict encode say which.
        for event, data in events:
            (event or "").encode("utf-8")
            data.encode("utf-8")
        raise ValueError("event text must be valid Unicode (no lone surrogates)")
    return packed
