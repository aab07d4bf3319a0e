"""An incremental Server-Sent Events parser that follows the WHATWG rules exactly. Sans-I/O: bytes in, events out.

The rules (HTML Living Standard, "Server-sent events", "Interpreting an event stream"):

- The stream is UTF-8; invalid bytes become U+FFFD. One leading byte order mark is stripped, once per stream.
- Lines end with CRLF, a lone LF or a lone CR. A CRLF may be split across two chunks: a chunk that ends in CR has
  ended its line, and an LF that opens the next chunk belongs to that same line end.
- A line starting with ``:`` is a comment. Otherwise the field name runs up to the first ``:`` and the value
  follows, less one leading space if there is one; a line with no ``:`` is a field name with an empty value.
- ``data`` appends the value and an LF to the data buffer; ``event`` sets the event type; ``id`` sets the last
  event id buffer unless the value contains NUL; ``retry`` sets the reconnection time if the value is ASCII digits;
  any other field is ignored. Field names are case-sensitive.
- A blank line dispatches: the last event id (which persists from event to event) takes the buffer's value; when
  the data buffer is empty nothing is dispatched; otherwise one trailing LF is removed from the data and an event
  is made, typed ``message`` when no ``event`` field was given. Data and event type buffers are then cleared.
- At the end of the stream an incomplete event (no blank line yet) is discarded, never dispatched.

An empty ``retry:`` value is ignored: it names no time (the standard's "only ASCII digits" is read as "one or more").
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["SSEParser", "ServerSentEvent"]

_LINE_END: Final = re.compile(r"\r\n|\r|\n")
_DIGITS: Final = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched server-sent event.

    :ivar event: the event type; ``message`` when the server sent no ``event:`` field (as in browsers).
    :ivar data: the data lines joined with LF.
    :ivar id: the ``id:`` field of this event, or None when it had none (or its id contained NUL and was ignored).
        resumable-sse servers give every logged event an id; their in-band ``reset`` event has none.
    :ivar last_event_id: the stream's last event id when this event was dispatched (the browser's
        ``MessageEvent.lastEventId``): it persists from event to event, so an event without ``id:`` carries the
        previous one. This is what a client sends back as ``Last-Event-ID``.
    """

    event: str = "message"
    data: str = ""
    id: str | None = None
    last_event_id: str = ""

    def json(self) -> Any:
        """The data parsed as JSON (resumable-sse's terminal and reset events, and dict/list payloads, are JSON)."""
        return json.loads(self.data)


class SSEParser:
    """Parse one event stream (one HTTP response body) incrementally: :meth:`feed` it bytes, get events back.

    Use a new parser for each response: a reconnection starts a new stream, whose leading BOM is stripped and whose
    first partial event must not be glued to the previous response's unfinished one. Pass the previous stream's
    :attr:`last_event_id` to carry it across, as EventSource does.

    :param last_event_id: the last event id to start from (the one sent as ``Last-Event-ID``).
    """

    def __init__(self, last_event_id: str = "") -> None:
        self.last_event_id: str = last_event_id
        """The stream's last event id: updated when a blank line ends an event (dispatched or not)."""
        self.retry: int | None = None
        """The last valid ``retry:`` value in milliseconds seen in this stream, or None."""
        self.comments = 0
        """How many comment lines (e.g. heartbeats) were seen: a sign of life that dispatches nothing."""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False  # whether the first character (a possible BOM) has been seen
        self._after_cr = False  # the last line ended with a CR at the very end of a chunk
        self._partial: list[str] = []  # the current line so far, across chunks
        self._id_buffer = last_event_id
        self._id_field: str | None = None
        self._event_type = ""
        self._data: list[str] = []
        self._has_data = False

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Parse the next bytes of the stream; return the events they complete, in order."""
        return self._feed_text(self._decoder.decode(chunk))

    def close(self) -> list[ServerSentEvent]:
        """End of stream: flush the decoder. An event still unfinished is discarded, per the standard.

        Returns the events a final line completes: never any, as an unterminated line cannot end an event; it
        exists so that the end of a stream is explicit and the state is cleared.
        """
        events = self._feed_text(self._decoder.decode(b"", final=True))
        self._partial.clear()
        self._data.clear()
        self._has_data = False
        self._event_type = ""
        self._id_field = None
        return events

    def _feed_text(self, text: str) -> list[ServerSentEvent]:
        if not text:
            return []
        if not self._started:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        if self._after_cr:
            self._after_cr = False
            if text.startswith("\n"):
                text = text[1:]
        events: list[ServerSentEvent] = []
        position = 0
        for match in _LINE_END.finditer(text):
            line = text[position : match.start()]
            if self._partial:
                self._partial.append(line)
                line = "".join(self._partial)
                self._partial.clear()
            position = match.end()
            event = self._line(line)
            if event is not None:
                events.append(event)
        if position < len(text):
            self._partial.append(text[position:])
        elif text.endswith("\r"):
            # The chunk ended with a CR that closed a line: an LF opening the next chunk is part of that line end.
            self._after_cr = True
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event_type = value
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
                self._id_field = value
        elif name == "retry" and _DIGITS.fullmatch(value):
            self.retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        self.last_event_id = self._id_buffer
        id_field, self._id_field = self._id_field, None
        event_type, self._event_type = self._event_type, ""
        if not self._has_data:
            return None
        data = "\n".join(self._data)  # each data line appended "value\n"; the final LF is removed
        self._data.clear()
        self._has_data = False
        return ServerSentEvent(event_type or "message", data, id_field, self.last_event_id)
