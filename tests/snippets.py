"""The fenced code blocks of the documentation, as tests/test_docs.py runs them.

Every fenced block (```` ``` ```` or ``~~~``, indented ones in lists too) of ``README.md`` and ``docs/*.md`` is
collected, with its language and the directive of an HTML comment on the line just above its opening fence::

    <!-- snippet: skip: why this block is not run -->

The directives are:

- ``skip: REASON``: the block is not run (an install command, the test suite itself, a server meant for a person).
  The reason is required and shown in the test report.
- ``server``: a Python block that runs a server with ``web.run_app(...)``; it is started once, on a free port, and
  the other blocks' ``http://localhost:8000`` URLs are pointed at it. At most one block of the whole documentation
  may say this.
- ``browser``: the JavaScript block a page copies to read a stream; tests/test_browser_snippet.py runs it, as
  printed, in Chromium through a proxy that cuts the connection. At most one block may say this.
- ``wire PATH``: a text block that must be, byte for byte, the body the ``server`` block sends a GET of PATH, with
  the epoch ``5f0c2a9be14d7730`` standing for the stream's real one (so an example of the wire cannot drift from
  what the server sends).

Anything else in a ``snippet:`` comment is an error, so that a typo cannot quietly turn a test off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ("README.md", "docs/*.md")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*snippet:\s*(?P<text>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Snippet:
    """One fenced block: where it is, its language (lowercase, ``""`` when none) and its text."""

    path: str  # relative to the repository root
    line: int  # of the opening fence, from 1
    language: str
    code: str
    directive: str | None  # the text after ``snippet:`` in the comment above the fence, if there is one

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}:{self.language or 'text'}"

    @property
    def skip_reason(self) -> str | None:
        """The reason of a ``skip:`` directive, else None."""
        if self.directive is not None and self.directive.startswith("skip:"):
            return self.directive.removeprefix("skip:").strip()
        return None

    @property
    def is_server(self) -> bool:
        return self.directive == "server"

    @property
    def is_browser(self) -> bool:
        return self.directive == "browser"

    @property
    def wire_path(self) -> str | None:
        """The PATH of a ``wire PATH`` directive, else None."""
        if self.directive is not None and self.directive.startswith("wire "):
            return self.directive.removeprefix("wire ").strip() or None
        return None


def parse(path: Path, text: str) -> list[Snippet]:
    """The fenced blocks of one Markdown document; an unclosed fence is an error."""
    snippets: list[Snippet] = []
    lines = text.split("\n")
    relative = path.resolve().relative_to(ROOT).as_posix() if path.is_absolute() else path.as_posix()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].split()[0].lower() if opening["info"].strip() else ""
        directive = None
        if i > 0:
            found = _DIRECTIVE.match(lines[i - 1])
            if found is not None:
                directive = found["text"]
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and stripped.strip(fence[0]) == "":
                break
            line = lines[j]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            j += 1
        else:
            raise ValueError(f"{relative}:{i + 1}: the fence opened here is never closed")
        snippets.append(Snippet(relative, i + 1, language, "\n".join(body) + "\n", directive))
        i = j + 1
    return snippets


def collect() -> list[Snippet]:
    """Every fenced block of the documentation, in file order."""
    paths: list[Path] = []
    for pattern in DOCUMENTS:
        paths.extend(sorted(ROOT.glob(pattern)))
    return [snippet for path in paths for snippet in parse(path, path.read_text(encoding="utf-8"))]


def check_directive(snippet: Snippet) -> None:
    """Raise ValueError for a ``snippet:`` comment this module does not know."""
    if snippet.directive is None or snippet.is_server or snippet.is_browser or snippet.wire_path is not None:
        return
    reason = snippet.skip_reason
    if reason is None:
        raise ValueError(
            f"{snippet.id}: unknown snippet directive {snippet.directive!r} "
            "(skip: REASON, server, browser or wire PATH)"
        )
    if not reason:
        raise ValueError(f"{snippet.id}: 'skip:' needs a reason")
