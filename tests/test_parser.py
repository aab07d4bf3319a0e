"""The SSE parser against the WHATWG rules, byte for byte.

Every case is parsed whole, one byte at a time, and split at every position into two chunks: a parser that only
works when a line arrives in one piece (or a CRLF in one chunk) fails here.
"""

from __future__ import annotations

import pytest

from resumable_sse._event import encode_event
from resumable_sse._parser import ServerSentEvent, SSEParser

E = ServerSentEvent


def chunkings(stream: bytes) -> list[list[bytes]]:
    """The stream whole, byte by byte, and cut in two at every position."""
    ways = [[stream], [stream[i : i + 1] for i in range(len(stream))]]
    ways += [[stream[:i], stream[i:]] for i in range(1, len(stream))]
    return ways


def parse(chunks: list[bytes], last_event_id: str = "") -> tuple[list[ServerSentEvent], SSEParser]:
    parser = SSEParser(last_event_id)
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.close())
    return events, parser


def parse_all_ways(stream: bytes, last_event_id: str = "") -> list[ServerSentEvent]:
    """Parse ``stream`` every way; assert they agree; return the events."""
    results = [parse(chunks, last_event_id)[0] for chunks in chunkings(stream)]
    for chunks, result in zip(chunkings(stream), results, strict=True):
        assert result == results[0], f"chunking {chunks!r} parsed differently"
    return results[0]


CASES: list[tuple[str, bytes, list[ServerSentEvent]]] = [
    ("one message", b"data: hello\n\n", [E("message", "hello")]),
    ("LF", b"id: 1\nevent: tick\ndata: a\n\n", [E("tick", "a", "1", "1")]),
    ("CRLF", b"id: 1\r\nevent: tick\r\ndata: a\r\n\r\n", [E("tick", "a", "1", "1")]),
    ("CR", b"id: 1\revent: tick\rdata: a\r\r", [E("tick", "a", "1", "1")]),
    (
        "mixed line ends",
        b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r",
        [E("message", "a\nb\nc"), E("message", "d")],
    ),
    ("multi-line data", b"data: one\ndata: two\ndata: three\n\n", [E("message", "one\ntwo\nthree")]),
    ("empty data lines kept", b"data\ndata\n\n", [E("message", "\n")]),
    ("data with no colon is an empty line of data", b"data\n\n", [E("message", "")]),
    ("data with colon and nothing after", b"data:\n\n", [E("message", "")]),
    ("only one leading space stripped", b"data:  two spaces\n\n", [E("message", " two spaces")]),
    ("no space after colon", b"data:x\n\n", [E("message", "x")]),
    ("tab is not stripped", b"data:\tx\n\n", [E("message", "\tx")]),
    ("colons in the value are kept", b"data: a: b:c\n\n", [E("message", "a: b:c")]),
    ("trailing spaces kept", b"data: x  \n\n", [E("message", "x  ")]),
    ("comment ignored", b": ping\n\n:\ndata: x\n: in the middle\n\n", [E("message", "x")]),
    ("no data: nothing dispatched", b"event: tick\n\n", []),
    ("event type reset after dispatch", b"event: a\ndata: 1\n\ndata: 2\n\n", [E("a", "1"), E("message", "2")]),
    (
        "event type reset even when nothing was dispatched",
        b"event: a\n\ndata: 2\n\n",
        [E("message", "2")],
    ),
    ("empty event type is message", b"event:\ndata: x\n\n", [E("message", "x")]),
    (
        "last event id persists; id is only the event's own field",
        b"id: 7\ndata: a\n\ndata: b\n\n",
        [E("message", "a", "7", "7"), E("message", "b", None, "7")],
    ),
    (
        "id-only block moves the last event id without dispatching",
        b"id: 7\n\ndata: b\n\n",
        [E("message", "b", None, "7")],
    ),
    (
        "empty id resets the last event id",
        b"id: 7\ndata: a\n\nid\ndata: b\n\n",
        [E("message", "a", "7", "7"), E("message", "b", "", "")],
    ),
    (
        "id with NUL is ignored",
        b"id: 7\ndata: a\n\nid: 8\x009\ndata: b\n\n",
        [E("message", "a", "7", "7"), E("message", "b", None, "7")],
    ),
    ("last id field in a block wins", b"id: 1\nid: 2\ndata: x\n\n", [E("message", "x", "2", "2")]),
    ("field names are case-sensitive", b"Data: x\nDATA: y\nEvent: t\ndata: z\n\n", [E("message", "z")]),
    ("unknown fields ignored", b"foo: bar\nretryx: 5\ndata: z\n\n", [E("message", "z")]),
    ("space before the colon is part of the name", b"data : x\ndata: y\n\n", [E("message", "y")]),
    ("leading BOM stripped", b"\xef\xbb\xbfdata: x\n\n", [E("message", "x")]),
    (
        "only one BOM stripped: a second one makes an unknown field",
        b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n",
        [E("message", "y")],
    ),
    ("BOM inside data kept", b"data: \xef\xbb\xbfx\n\n", [E("message", "\ufeffx")]),
    ("UTF-8 text", "data: héllo → 世界 🎉\n\n".encode(), [E("message", "héllo → 世界 🎉")]),
    ("invalid UTF-8 replaced", b"data: a\xffb\n\n", [E("message", "a\ufffdb")]),
    ("incomplete event at the end discarded", b"data: a\n\ndata: b\n", [E("message", "a")]),
    ("unterminated last line discarded", b"data: a\n\ndata: b", [E("message", "a")]),
    ("NUL in data kept", b"data: a\x00b\n\n", [E("message", "a\x00b")]),
    ("blank lines between events", b"\n\n\r\n\rdata: x\n\n\n\n", [E("message", "x")]),
]


@pytest.mark.parametrize(("stream", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_cases(stream: bytes, expected: list[ServerSentEvent]) -> None:
    assert parse_all_ways(stream) == expected


@pytest.mark.parametrize(
    ("stream", "retry"),
    [
        (b"retry: 2000\n\n", 2000),
        (b"retry:0\n\n", 0),
        (b"retry: 1000\nretry: 3000\n\n", 3000),
        (b"retry: 1000\nretry: 3x\n\n", 1000),  # not all digits: ignored
        (b"retry: -5\n\n", None),
        (b"retry: 1.5\n\n", None),
        (b"retry:  100\n\n", None),  # the second space is part of the value
        (b"retry: \n\n", None),
        (b"retry\n\n", None),
        ("retry: \u0661\u0662\n\n".encode(), None),  # Arabic-Indic digits are not ASCII digits
        (b"retry: 2000\n", 2000),  # set when the field is read, not when an event is dispatched
    ],
)
def test_retry(stream: bytes, retry: int | None) -> None:
    for chunks in chunkings(stream):
        events, parser = parse(chunks)
        assert events == []
        assert parser.retry == retry


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    """A CR ending a chunk and the LF opening the next make one line end, not a line end and a blank line."""
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r") == []  # had the LF been a blank line, "a" would be dispatched alone
    assert parser.feed(b"\n\r") == [E("message", "a\nb")]
    assert parser.feed(b"\n") == []  # the LF after the dispatching CR belongs to it
    assert parser.feed(b"data: c\n\n") == [E("message", "c")]


def test_cr_then_empty_chunk_then_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\n") == [E("message", "a")]


def test_multibyte_character_split_across_chunks() -> None:
    data = "🎉".encode()
    parser = SSEParser()
    assert parser.feed(b"data: " + data[:1]) == []
    assert parser.feed(data[1:3]) == []
    assert parser.feed(data[3:] + b"\n\n") == [E("message", "🎉")]


def test_bom_stripped_once_per_parser_not_per_chunk() -> None:
    parser = SSEParser()
    assert parser.feed(b"\xef\xbb") == []
    assert parser.feed(b"\xbfdata: a\n\n") == [E("message", "a")]
    assert parser.feed(b"\xef\xbb\xbfdata: b\n\ndata: c\n\n") == [E("message", "c")]


def test_last_event_id_carried_in_and_updated_at_dispatch_only() -> None:
    """The position moves when a blank line ends the block, never on an unfinished event (exactly-once resume)."""
    parser = SSEParser("e-4")
    assert parser.last_event_id == "e-4"
    assert parser.feed(b"data: a\n\n") == [E("message", "a", None, "e-4")]
    parser.feed(b"id: e-5\ndata: b\n")
    assert parser.last_event_id == "e-4"  # the event is not finished: a reconnect must ask for it again
    parser.close()
    assert parser.last_event_id == "e-4"


def test_comments_counted() -> None:
    parser = SSEParser()
    parser.feed(b": ping\n\n:\n\ndata: x\n\n")
    assert parser.comments == 2


def test_resumable_sse_wire_format_round_trips() -> None:
    """What the server encodes (including data with every kind of line break) parses back to the same event."""
    data = "line one\r\nline two\rline three\nend"
    wire = b"retry: 2000\n\n" + encode_event(data, id="abc-1", event="tick") + b": ping\n\n"
    wire += b"event: reset\ndata: {}\n\n" + encode_event('{"state":"done"}', id="abc-2", event="done")
    assert parse_all_ways(wire) == [
        E("tick", "line one\nline two\nline three\nend", "abc-1", "abc-1"),
        E("reset", "{}", None, "abc-1"),
        E("done", '{"state":"done"}', "abc-2", "abc-2"),
    ]


def test_json() -> None:
    assert E("done", '{"state": "done"}').json() == {"state": "done"}
    with pytest.raises(ValueError, match="Expecting value"):
        E("message", "not json").json()
