"""How a stream looks inside Redis: events packed into one argument, the published change, replies decoded.

Events of one append travel and are stored as one string: ``<event type>\xfe<data>`` each, joined by ``\xff``
(two bytes UTF-8 text never contains), so an append is one argument and one stream entry however many events it
holds; an append longer than the longest argument Redis takes (``proto-max-bulk-len``) goes as several, in order,
in the same call (:func:`split`). A published change is ``<epoch>\n<status>\n<first>\n<last>\n<count>\n<packed>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
from collections.abc import Sequence
from typing import Any, Final

from .._event import Entry, Status
from .._log import NewEvent, Outcome, Page, StreamState
from ..exceptions import EventTooLarge

__all__ = [
    "Call",
    "Pending",
    "Script",
    "applied_page",
    "bounded",
    "hash_tag",
    "merged",
    "ms",
    "pack",
    "parse_change",
    "pending",
    "renewal",
    "split",
    "status_of",
    "text",
    "unpack",
]

Call = tuple[Sequence[str | bytes], Sequence[Any]]
"""One script call: its keys and its arguments."""

MAX_COMMAND_BYTES: Final = 16 * 1024 * 1024
"""A group commit sends one command per this many bytes of appends: Redis drops a client whose query buffer grows
too large (``client-query-buffer-limit``), and a command that can never succeed must not be sent."""

DEFAULT_BULK_LEN: Final = 512 * 1024 * 1024
"""Redis's default ``proto-max-bulk-len``: the longest argument assumed where ``CONFIG GET`` is not allowed."""

LEAST_BULK_LEN: Final = 1024 * 1024
"""The least ``proto-max-bulk-len`` Redis can be configured with: an argument this long is accepted by every Redis."""

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
    if count == 1 and first <= last:  # a paced token's append: no split, no loop (storm.py --profile, server B)
        event, _, data = packed.partition(b"\xfe")
        return Page(state, [Entry(epoch, last, event.decode() or None, data.decode())])
    start = last - count + 1
    skip = max(0, first - start)  # events of this append already trimmed (a batch larger than max_events)
    return Page(state, unpack(epoch, start, packed, skip, count))


def applied_page(item: Pending, seq: int, epoch: str, first: int) -> Page:
    """What an applied append (``item``, its last event numbered ``seq``) tells this process's readers: the stream's
    new shape and the append's entries still retained (``first`` is the first retained seq)."""
    events = item.events
    if len(events) == 1:  # a paced token's append: no comprehension, no slice (fleet.py --profile)
        event, data = events[0]
        entries = [Entry(epoch, seq, event or None, data)] if first <= seq else []
    else:
        start = seq - len(events) + 1
        entries = [Entry(epoch, start + i, event or None, data) for i, (event, data) in enumerate(events)]
        del entries[: max(0, first - start)]
    return Page(StreamState(item.stream_id, epoch, item.final or "running", first, seq), entries)


def hash_tag(key_prefix: str, stream_id: str) -> str:
    """``{<key_prefix>:<stream_id>}``: what every key and channel of a stream starts with (``:m`` its state hash,
    ``:e`` its entries, ``:c`` and ``:x`` its channels), so that on a cluster they all hash to one slot."""
    return f"{{{key_prefix}:{stream_id}}}"


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
    """An append waiting for the next group commit: its stream, events, keys and the one argument it travels as
    (``<token>\\n<after>\\n<final>\\n<count>\\n<end>\\n<packed>``, ``end`` being ``after + count``); :attr:`args` is
    what is sent, that argument or, when it is longer than Redis takes, its parts (:func:`split`)."""

    __slots__ = ("arg", "args", "events", "final", "future", "keys", "stream_id")

    def __init__(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        final: Status | None,
        keys: tuple[bytes, ...],
        arg: bytes,
        outcome: Outcome | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.events = events
        self.final = final
        self.keys = keys
        self.arg = arg
        self.args: tuple[bytes, ...] = (arg,)
        # Where the outcome goes (a future unless the caller takes it in the committer's step: AppendsThen).
        self.future: Outcome = asyncio.get_running_loop().create_future() if outcome is None else outcome


def pending(
    key_prefix: str,
    stream_id: str,
    token: str,
    events: Sequence[NewEvent],
    after: int,
    final: Status | None,
    outcome: Outcome,
) -> Pending:
    """An append of ``events`` after ``after`` as it waits for the group commit, its outcome to go to ``outcome``."""
    if final is not None and not events:
        raise ValueError("a final append needs the terminal entry")
    count, status = len(events), (final or "").encode()
    arg = b"%s\n%d\n%s\n%d\n%d\n%s" % (token.encode(), after, status, count, after + count, pack(events))
    tag = hash_tag(key_prefix, stream_id).encode()  # bytes: nothing for redis-py to encode
    return Pending(stream_id, events, final, (tag + b":m", tag + b":e", tag + b":c"), arg, outcome)


def split(item: Pending, limit: int) -> tuple[bytes, ...]:
    """The arguments ``item`` is sent as so that none is longer than ``limit`` (Redis's ``proto-max-bulk-len``: Redis
    drops the connection of a client that sends a longer one, which would look like an outage and be retried).

    An append too long for one argument goes as consecutive appends of the same stream in the same script call, so
    still atomically: each names the sequence number its predecessor ends at, the last carries the final status,
    and each names the end of the whole (``end``), which is how a retry of the whole call is recognised. Raises
    :class:`EventTooLarge`, naming the limit, when one event alone cannot fit (nothing of the append is sent).
    """
    arg = item.arg
    if len(arg) <= limit:
        return (arg,)
    token, after_b, final, _, end_b, packed = arg.split(b"\n", 5)
    # Each part's header is at most this long (three numbers of at most 20 digits each, five line ends).
    head = len(token) + len(final) + 65
    after = int(after_b)
    parts: list[bytes] = []
    run: list[bytes] = []
    size = head
    pieces = packed.split(b"\xff")  # one piece an event: 0xFF never occurs in UTF-8 text
    for piece in pieces:
        if head + len(piece) > limit:
            raise EventTooLarge(
                f"an event of {len(piece) - 1} bytes does not fit in the store: Redis takes arguments of at most "
                f"{limit} bytes (its proto-max-bulk-len)"
            )
        if run and size + 1 + len(piece) > limit:
            parts.append(b"%s\n%d\n\n%d\n%s\n%s" % (token, after, len(run), end_b, b"\xff".join(run)))
            after += len(run)
            run, size = [], head
        run.append(piece)
        size += len(piece) + (len(run) > 1)
    parts.append(b"%s\n%d\n%s\n%d\n%s\n%s" % (token, after, final, len(run), end_b, b"\xff".join(run)))
    return tuple(parts)


def merged(replies: Sequence[Any]) -> Any:
    """One append's reply from the replies of its parts: the first refusal (unknown, fenced) if any, else the last
    part's (which holds the sequence number, epoch and first retained of the whole)."""
    for reply in replies:
        if int(reply[0]) < 0:
            return reply
    return replies[-1]


def bounded(items: list[Pending]) -> list[list[Pending]]:
    """``items`` in runs of at most :data:`MAX_COMMAND_BYTES` of arguments (at least one item each; the parts of an
    append stay together: they are applied atomically)."""
    runs: list[list[Pending]] = [[]]
    size = 0
    for item in items:
        item_size = sum([len(arg) for arg in item.args])
        if runs[-1] and size + item_size > MAX_COMMAND_BYTES:
            runs.append([])
            size = 0
        runs[-1].append(item)
        size += item_size
    return runs


def renewal(key_prefix: str, leases: Sequence[tuple[str, str]]) -> list[tuple[list[bytes], bytes]]:
    """The calls of a renewal of many leases on a single server: each the keys (state hash and entries of each
    stream) and one argument, the tokens joined by ``\\xff`` (a byte UTF-8 never holds), at most
    :data:`LEAST_BULK_LEN` long (any Redis takes that; 30,000 of the Streamer's tokens). One joined argument and keys
    as bytes, not an argument per token: 10,000 leases renew in 12 ms of CPU instead of 21."""
    keys: list[bytes] = []
    for stream_id, _ in leases:
        tag = hash_tag(key_prefix, stream_id).encode()
        keys += (tag + b":m", tag + b":e")
    tokens = [token.encode() for _, token in leases]
    joined = b"\xff".join(tokens)
    if len(joined) <= LEAST_BULK_LEN:
        return [(keys, joined)]
    calls: list[tuple[list[bytes], bytes]] = []
    start = size = 0
    for index, token in enumerate(tokens):
        if index > start and size + len(token) + 1 > LEAST_BULK_LEN:
            calls.append((keys[2 * start : 2 * index], b"\xff".join(tokens[start:index])))
            start, size = index, 0
        size += len(token) + 1
    calls.append((keys[2 * start :], b"\xff".join(tokens[start:])))
    return calls


def pack(events: Sequence[NewEvent]) -> bytes:
    """Events as one argument: ``<type>\\xfe<data>`` each, joined by ``\\xff`` (bytes UTF-8 text never has)."""
    if not events:
        return b""
    if len(events) == 1:
        event, data = events[0]
        if event is None and data.isascii():  # a paced token: 0.3 us instead of 1.6 (no 0xFE or 0xFF in ASCII)
            return b"\xfe" + data.encode("ascii")
    text = "\udcff".join([f"{event or ''}\udcfe{data}" for event, data in events])
    packed = text.encode("utf-8", "surrogateescape")
    if packed.count(b"\xff") != len(events) - 1 or packed.count(b"\xfe") != len(events):
        # Some text held lone surrogates (not valid Unicode text): let a strict encode say which.
        for event, data in events:
            (event or "").encode("utf-8")
            data.encode("utf-8")
        raise ValueError("event text must be valid Unicode (no lone surrogates)")
    return packed
