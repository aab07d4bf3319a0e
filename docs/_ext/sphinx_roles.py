"""A griffe extension for the API reference: the docstrings' Sphinx roles shown as code.

The docstrings are written for Sphinx-style readers (``:class:`~resumable_sse.Event```, ``:func:`setup```);
mkdocstrings' ``sphinx`` style parses their fields (``:param x:``) but leaves roles in the text as they are. This
turns each role into a code span of what Sphinx would show: the last component of the path after ``~``, the
explicit title of ``title <target>``, else the whole target.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|exc|mod|obj|const):`(?P<target>[^`]+)`")


def _shown(match: re.Match[str]) -> str:
    target = match["target"].strip()
    titled = re.fullmatch(r"(?P<title>.+?)\s*<[^>]+>", target)
    if titled is not None:
        return f"`{titled['title']}`"
    if target.startswith("~"):
        target = target[1:].rpartition(".")[2]
    return f"`{target}`"


def show_roles(text: str) -> str:
    """``text`` with every Sphinx cross-reference role replaced by a code span."""
    return _ROLE.sub(_shown, text)


class SphinxRoles(griffe.Extension):
    """Rewrites the roles of every docstring once the object tree is built."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = show_roles(obj.docstring.value)
