"""Event ids (``<epoch>-<seq>``), payload normalization and validation, and the wire encoding, byte for byte."""

from __future__ import annotations

import pytest

from resumable_sse import Entry, Event, EventId, EventTooLarge, InvalidEventId
from resumable_sse._event import (
    Reset,
    encode_comment,
    encode_event,
    encode_retry,
    is_plain_token,
    new_epoch,
    normalize,
)
from resumable_sse._parser import SSEParser
from resumable_sse.exceptions import InvalidEventData


def test_epochs_are_random_sse_safe_tokens() -> None:
    epochs = {new_epoch() for _ in range(1000)}
    assert len(epochs) == 1000
    for epoch in epochs:
        assert EventId.parse(f"{epoch}-1") == EventId(epoch, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("abc-1", EventId("abc", 1)), ("0123456789abcdef-42", EventId("0123456789abcdef", 42))],
)
def test_parse_valid_ids(text: str, expected: EventId) -> None:
    assert EventId.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "abc-",
        "-1",
        "abc-0",
        "abc-01",
        "abc--1",
        "ABC-1",
        "ab c-1",
        "abc-1\n",
        "abc-1\x00",
        "é-1",
        "abc-1e3",
        "abc-" + "9" * 19,
        "a" * 70 + "-1",
    ],
)
def test_parse_rejects_malformed_ids(text: str) -> None:
    with pytest.raises(InvalidEventId):
        EventId.parse(text)
    with pytest.raises(ValueError):  # noqa: PT011 - InvalidEventId is also a ValueError
        EventId.parse(text)


def test_entry_wire_bytes() -> None:
    assert Entry("ep", 1, None, "tok").wire() == b"id: ep-1\ndata: tok\n\n"
    assert (
        Entry("ep", 2, "note", "a\r\nb\rc\nd").wire()
        == b"id: ep-2\nevent: note\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    )
    assert Entry("ep", 3, None, "").wire() == b"id: ep-3\ndata: \n\n"
    assert Entry("ep", 4, None, "trailing\n").wire() == b"id: ep-4\ndata: trailing\ndata: \n\n"
    assert Entry("ep", 5, None, "ünï 🎉").wire() == "id: ep-5\ndata: ünï 🎉\n\n".encode()
    entry = Entry("ep", 6, "done", '{"state":"done"}')
    assert entry.wire() == b'id: ep-6\nevent: done\ndata: {"state":"done"}\n\n'
    assert entry.wire() is entry.wire()  # encoded once, shared by every reader
    assert entry.terminal
    assert entry.json() == {"state": "done"}
    assert not Entry("ep", 7, None, "x").terminal


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("tok", b"data: tok\n\n"),  # a token: the hot path
        (" leading and trailing spaces ", b"data:  leading and trailing spaces \n\n"),
        ("", b"data: \n\n"),
        ("a\nb", b"data: a\ndata: b\n\n"),  # LF
        ("a\rb", b"data: a\ndata: b\n\n"),  # CR
        ("a\r\nb", b"data: a\ndata: b\n\n"),  # CRLF is one line break, not two
        ("a\n\rb", b"data: a\ndata: \ndata: b\n\n"),  # LF then CR: two breaks, an empty line between
        ("a\r\n\r\nb", b"data: a\ndata: \ndata: b\n\n"),
        ("\n", b"data: \ndata: \n\n"),
        ("end\r\n", b"data: end\ndata: \n\n"),
        ("x: y\n: not a comment", b"data: x: y\ndata: : not a comment\n\n"),  # data lines are prefixed
        ("nul\x00", b"data: nul\x00\n\n"),
        ("é 🎉", "data: é 🎉\n\n".encode()),
    ],
)
def test_encode_event_data_lines(data: str, expected: bytes) -> None:
    assert encode_event(data) == expected
    # A WHATWG parser joins the data lines with LF: the client gets the text with its line breaks normalised to LF.
    (parsed,) = SSEParser().feed(expected)
    assert parsed.data == data.replace("\r\n", "\n").replace("\r", "\n")


def test_encode_event_fields_in_order() -> None:
    assert encode_event("x", id="ep-1") == b"id: ep-1\ndata: x\n\n"
    assert encode_event("x", event="note") == b"event: note\ndata: x\n\n"
    assert encode_event("x", id="ep-2", event="note") == b"id: ep-2\nevent: note\ndata: x\n\n"
    assert encode_event("a\r\nb", id="ep-3", event="note") == b"id: ep-3\nevent: note\ndata: a\ndata: b\n\n"


def test_reset_wire_bytes() -> None:
    assert Reset.event == "reset"
    trimmed = Reset("trimmed", "ep-9")
    assert trimmed.data == '{"reason":"trimmed","first_id":"ep-9"}'
    assert trimmed.wire() == b'event: reset\ndata: {"reason":"trimmed","first_id":"ep-9"}\n\n'
    assert Reset("epoch", None).wire() == b'event: reset\ndata: {"reason":"epoch","first_id":null}\n\n'
    assert Reset("position", "ep-1") == Reset("position", "ep-1")  # a value, like the one it replaces


def test_retry_and_comment_bytes() -> None:
    assert encode_retry(1500) == b"retry: 1500\n"
    assert encode_retry(0) == b"retry: 0\n"
    with pytest.raises(ValueError, match="negative"):
        encode_retry(-1)
    assert encode_comment() == b":\n"
    assert encode_comment("ping") == b": ping\n"  # a line, not a block: no empty event
    with pytest.raises(ValueError, match="single line"):
        encode_comment("a\nb")


def test_normalize_payloads() -> None:
    assert normalize("t", 100) == (None, "t")
    assert normalize(b"\xc3\xa9", 100) == (None, "é")
    assert normalize({"a": [1, "é"]}, 100) == (None, '{"a":[1,"é"]}')
    assert normalize([1], 100) == (None, "[1]")
    assert normalize(Event("x", event="tok"), 100) == ("tok", "x")
    assert normalize(Event({"a": 1}), 100) == (None, '{"a":1}')
    with pytest.raises(TypeError, match="not int"):
        normalize(42, 100)
    with pytest.raises(TypeError, match="UTF-8"):
        normalize(b"\xff", 100)


@pytest.mark.parametrize(
    "item",
    [
        "\ud800",
        "ok \udfff",
        "a\udc80b" * 3,
        Event("\ud83d"),  # half of an emoji's surrogate pair
        Event("x\ud800", event="note"),
        {"text": "\ud800"},  # JSON allows it (json.dumps writes it as is with ensure_ascii=False); UTF-8 does not
        ["\udfff"],
    ],
)
def test_normalize_refuses_lone_surrogates(item: object) -> None:
    with pytest.raises(InvalidEventData, match="lone surrogate"):
        normalize(item, 1000)
    with pytest.raises(ValueError):  # noqa: PT011 - InvalidEventData is also a ValueError
        normalize(item, 1000)


def test_normalize_accepts_text_beyond_the_bmp() -> None:
    assert normalize("🎉", 4) == (None, "🎉")  # one code point, 4 UTF-8 bytes: no surrogates in a Python str
    assert normalize("\U0001f389", 100) == (None, "🎉")


@pytest.mark.parametrize(
    ("item", "plain"),
    [
        ("tok", True),
        ("", True),
        ("x" * 100, True),  # exactly max_bytes
        ("x" * 101, False),  # too large: normalize() must say so
        ("é", False),  # non-ASCII: normalize() must check it (its UTF-8 size, its surrogates)
        ("\ud800", False),
        (b"tok", False),
        (Event("tok"), False),
        (["tok"], False),
    ],
)
def test_is_plain_token(item: object, plain: bool) -> None:
    assert is_plain_token(item, 100) is plain


@pytest.mark.parametrize("item", ["tok", "", "multi\nline", "x" * 100])
def test_a_plain_token_is_what_normalize_would_return(item: str) -> None:
    assert is_plain_token(item, 100)
    assert normalize(item, 100) == (None, item)


def test_a_str_subclass_is_not_a_plain_token() -> None:
    class Text(str):
        pass

    assert not is_plain_token(Text("tok"), 100)
    assert normalize(Text("tok"), 100) == (None, "tok")


def test_size_limit_counts_utf8_bytes() -> None:
    assert normalize("é" * 50, 100) == (None, "é" * 50)  # 100 bytes: allowed
    with pytest.raises(EventTooLarge, match="101 bytes exceeds max_event_bytes=100"):
        normalize("é" * 50 + "x", 100)
    with pytest.raises(EventTooLarge, match="101 bytes"):
        normalize("x" * 101, 100)
    with pytest.raises(EventTooLarge):
        normalize(Event({"k": "v" * 100}), 100)


@pytest.mark.parametrize("name", ["done", "error", "cancelled", "lost", "reset"])
def test_reserved_event_types_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        Event("x", event=name)


@pytest.mark.parametrize("name", ["", "a\nb", "a\rb", "x" * 65, "nul\x00", "\ud800", "a\udfffb"])
def test_invalid_event_types_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="event type"):
        Event("x", event=name)
