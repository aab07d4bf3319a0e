"""Ids (DESIGN §2), payload normalization and the wire encoding, byte for byte."""

from __future__ import annotations

import pytest

from resumable_sse import Entry, Event, EventId, EventTooLarge, InvalidEventId
from resumable_sse._event import encode_comment, encode_event, encode_retry, new_epoch, normalize
from resumable_sse._streamer import Reset


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
    assert entry.terminal
    assert entry.json() == {"state": "done"}
    assert not Entry("ep", 7, None, "x").terminal


def test_encoding_helpers() -> None:
    assert encode_event("x") == b"data: x\n\n"
    assert encode_retry(1500) == b"retry: 1500\n\n"
    assert encode_comment() == b":\n\n"
    assert encode_comment("ping") == b": ping\n\n"
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        encode_event("x", id="a\x00b")
    with pytest.raises(ValueError, match="CR or LF"):
        encode_event("x", event="a\nb")
    with pytest.raises(ValueError, match="negative"):
        encode_retry(-1)
    assert Reset("trimmed", "ep-9").wire() == b'event: reset\ndata: {"reason":"trimmed","first_id":"ep-9"}\n\n'


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


def test_size_limit_counts_utf8_bytes() -> None:
    assert normalize("é" * 50, 100) == (None, "é" * 50)  # 100 bytes: allowed
    with pytest.raises(EventTooLarge, match="101 bytes exceeds max_event_bytes=100"):
        normalize("é" * 50 + "x", 100)
    with pytest.raises(EventTooLarge):
        normalize("x" * 101, 100)


@pytest.mark.parametrize("name", ["done", "error", "cancelled", "lost", "reset"])
def test_reserved_event_types_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        Event("x", event=name)


@pytest.mark.parametrize("name", ["", "a\nb", "a\rb", "x" * 65, "nul\x00"])
def test_invalid_event_types_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="event type"):
        Event("x", event=name)
