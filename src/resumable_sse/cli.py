"""The ``resumable-sse`` command line: ``resumable-sse tail URL`` follows a stream and prints its events.

Also runs as ``python -m resumable_sse``. Exit codes (:data:`EXIT_CODES`) tell a script how the stream ended.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Final, Literal, TextIO

from . import __version__
from .client import ClientError, EventStream, RetriesExhausted, ServerSentEvent, StreamGone, check_url, connect
from .exceptions import StreamEnded

__all__ = [
    "EXIT_CANCELLED",
    "EXIT_CODES",
    "EXIT_DONE",
    "EXIT_ERROR",
    "EXIT_GAVE_UP",
    "EXIT_GONE",
    "EXIT_HTTP",
    "EXIT_INTERRUPTED",
    "EXIT_LOST",
    "EXIT_USAGE",
    "main",
]

EXIT_DONE: Final = 0
EXIT_USAGE: Final = 2
EXIT_ERROR: Final = 3
EXIT_LOST: Final = 4
EXIT_CANCELLED: Final = 5
EXIT_GONE: Final = 6
EXIT_HTTP: Final = 7
EXIT_GAVE_UP: Final = 8
EXIT_INTERRUPTED: Final = 130

EXIT_CODES: Final[dict[int, str]] = {
    EXIT_DONE: "the stream ended with done (or had already ended: 204)",
    EXIT_USAGE: "bad command line",
    EXIT_ERROR: "the stream ended with error (the producer failed)",
    EXIT_LOST: "the stream ended with lost (its producer died)",
    EXIT_CANCELLED: "the stream ended with cancelled",
    EXIT_GONE: "410 Gone: the stream is unknown or has expired",
    EXIT_HTTP: "another HTTP error (4xx), a TLS certificate error, or the response is not an event stream",
    EXIT_GAVE_UP: "gave up reconnecting (--max-retries attempts in a row failed)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

_STATE_EXIT: Final = {"error": EXIT_ERROR, "lost": EXIT_LOST, "cancelled": EXIT_CANCELLED}
_PROG: Final = "resumable-sse"

_TAIL_DESCRIPTION: Final = """\
Follow the event stream at URL and print its events as they arrive. When the
connection drops, reconnect with Last-Event-ID set to the last event printed,
so that (with a resumable-sse server) each event is printed exactly once, in
order. Stop when the stream ends.

Output (stdout): the data of each event, each followed by a line break (an
event whose data has several lines prints several lines); a reset (the server
could not continue from the position and starts over) is reported on stderr.
With --text: the data of the plain (message) events joined as one continuous
text, as a chat answer reads, with no line break of its own between events;
typed events (e.g. usage) are not printed; a reset starts a new line, and a
line break ends the output. With --json: one JSON object per line, {"id": ...,
"event": ..., "data": ...}, for every event, resets and the final event
included. Reconnections and how the stream ended are reported on stderr.
"""


def _epilog() -> str:
    lines = ["exit status:"]
    lines += [f"  {code:<4} {meaning}" for code, meaning in sorted(EXIT_CODES.items())]
    lines += ["", "Resume later from where you stopped: --last-event-id with the id of the last event you kept."]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG, description="Tools for resumable Server-Sent Events streams.", allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"{_PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tail = commands.add_parser(
        "tail",
        help="follow a stream and print its events",
        description=_TAIL_DESCRIPTION,
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    tail.add_argument("url", metavar="URL", help="the stream's URL, e.g. http://localhost:8080/stream/abc")
    tail.add_argument(
        "--last-event-id", metavar="ID", help="resume after this event id (sent as the Last-Event-ID header)"
    )
    output = tail.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object per event: id, event, data")
    output.add_argument(
        "--text",
        action="store_true",
        help="print the data of plain events as one continuous text, with no line break between events",
    )
    tail.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra request header, e.g. 'Authorization: Bearer ...' (repeatable)",
    )
    tail.add_argument(
        "--max-retries",
        type=int,
        default=None,
        metavar="N",
        help="give up after N reconnection attempts in a row that get nothing (default: never give up)",
    )
    tail.add_argument(
        "--read-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="reconnect after this long without a byte from the server (default: 60; above the heartbeat)",
    )
    tail.add_argument("-q", "--quiet", action="store_true", help="do not report reconnections on stderr")
    return parser


def _headers(values: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    headers: dict[str, str] = {}
    for value in values:
        name, colon, content = value.partition(":")
        if not colon or not name.strip():
            parser.error(f"--header takes 'NAME: VALUE', not {value!r}")
        headers[name.strip()] = content.strip()
    return headers


class _Printer:
    """Writes the events to stdout in the chosen mode, flushing each, and reports resets on stderr."""

    def __init__(self, mode: Literal["lines", "text", "json"], out: TextIO, err: TextIO) -> None:
        self.mode = mode
        self.out = out
        self.err = err
        self.open_line = False  # text mode: the output does not end with a line break

    def event(self, event: ServerSentEvent) -> None:
        if self.mode == "json":
            record = {"id": event.id, "event": event.event, "data": event.data}
            self._write(json.dumps(record, ensure_ascii=False) + "\n")
        elif event.event == "reset":
            self.end_line()  # the text that follows starts over: not glued to what came before
            self.err.write(f"{_PROG}: the stream was reset, the output starts over: {event.data}\n")
            self.err.flush()
        elif self.mode == "text":
            if event.event == "message" and event.data:
                self._write(event.data)
                self.open_line = not event.data.endswith("\n")
        elif event.event != "done" and event.event != "cancelled":
            self._write(event.data + "\n")

    def end_line(self) -> None:
        """End continuous text with a line break, so that what is written next starts a line of its own."""
        if self.open_line:
            self._write("\n")
            self.open_line = False

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


async def _tail(args: argparse.Namespace, headers: dict[str, str], out: TextIO, err: TextIO) -> int:
    events: EventStream = connect(
        args.url,
        last_event_id=args.last_event_id,
        headers=headers,
        raise_on=("error", "lost", "cancelled"),
        max_retries=args.max_retries,
        read_timeout=args.read_timeout if args.read_timeout > 0 else None,
    )
    printer = _Printer("json" if args.json else "text" if args.text else "lines", out, err)
    try:
        try:
            async with events:
                async for event in events:
                    printer.event(event)
        finally:
            printer.end_line()  # before anything goes to stderr, which is often the same terminal
    except StreamEnded as exc:
        if args.json and events.terminal is not None:
            printer.event(events.terminal)
        err.write(f"{_PROG}: {exc}\n")
        return _STATE_EXIT.get(exc.state, EXIT_ERROR)
    except StreamGone as exc:
        err.write(f"{_PROG}: the stream is gone (unknown or expired): {exc}\n")
        return EXIT_GONE
    except RetriesExhausted as exc:
        err.write(f"{_PROG}: {exc}\n")
        return EXIT_GAVE_UP
    except ClientError as exc:
        err.write(f"{_PROG}: {exc}\n")
        return EXIT_HTTP
    if events.terminal is None:
        err.write(f"{_PROG}: the stream had already ended (204 No Content)\n")
    return EXIT_DONE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    headers = _headers(args.header, parser)
    try:
        check_url(args.url)
    except ValueError as exc:
        parser.error(str(exc))
    if args.last_event_id is not None and any(c in args.last_event_id for c in "\r\n\0"):
        parser.error("--last-event-id must not contain CR, LF or NUL")
    if args.max_retries is not None and args.max_retries < 0:
        parser.error("--max-retries must not be negative")
    handler: logging.Handler | None = None
    client_logger = logging.getLogger("resumable_sse.client")
    if not args.quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{_PROG}: %(message)s"))
        client_logger.addHandler(handler)
        client_logger.setLevel(logging.INFO)
    try:
        return asyncio.run(_tail(args, headers, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        sys.stderr.write(f"{_PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head`): stop quietly, and keep Python from complaining
        # about the unflushable stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_DONE
    finally:
        if handler is not None:
            client_logger.removeHandler(handler)
