"""The Redis store's packed events, as the Lua scripts take and publish them: every shape an append can have comes
back as the same entries, through the one-event fast paths and the general one alike."""

from __future__ import annotations

import pytest

from resumable_sse._log import NewEvent
from resumable_sse.stores._redis_format import pack, parse_change, unpack

APPENDS: list[list[NewEvent]] = [
    [(None, "tok 1765142412345678901")],  # a paced token
    [(None, "")],
    [(None, "é, 中文 and 🙂")],
    [("note", "typed")],
    [(None, "two\nlines")],
    [("done", '{"state":"done"}')],
    [(None, "a"), ("note", "b"), (None, "")],
]


@pytest.mark.parametrize("events", APPENDS, ids=range(len(APPENDS)))
def test_an_append_comes_back_as_its_entries(events: list[NewEvent]) -> None:
    packed = pack(events)
    last = 10 + len(events)
    message = b"ep\nrunning\n1\n%d\n%d\n%s" % (last, len(events), packed)
    page = parse_change("s", message)
    assert page.state == ("s", "ep", "running", 1, last)
    assert [(e.seq, e.event, e.data) for e in page.entries] == [
        (11 + i, event, data) for i, (event, data) in enumerate(events)
    ]
    assert [(e.event, e.data) for e in unpack("ep", 11, packed, 0, 100)] == list(events)


@pytest.mark.parametrize("count", [1, 3])
def test_events_of_an_append_already_trimmed_are_not_entries(count: int) -> None:
    """A batch larger than max_events: the published change's first retained seq lies inside (or past) it."""
    events: list[NewEvent] = [(None, f"e{i}") for i in range(count)]
    message = b"ep\nrunning\n%d\n%d\n%d\n%s" % (count + 1, count, count, pack(events))
    assert parse_change("s", message).entries == []
    message = b"ep\nrunning\n%d\n%d\n%d\n%s" % (count, count, count, pack(events))
    assert [e.data for e in parse_change("s", message).entries] == [f"e{count - 1}"]


def test_text_that_is_not_valid_unicode_is_refused() -> None:
    with pytest.raises(UnicodeEncodeError):
        pack([(None, "lone \udcff surrogate")])
