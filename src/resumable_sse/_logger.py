"""The engine's logger: the ``resumable_sse`` logger behind a guard, so that a log call never raises.

An application's handler or filter on the ``resumable_sse`` logger (or a handler of an ancestor, the root's) runs
inside the call that logs: ``Logger.filter`` and a handler's ``handle`` let an exception propagate, and the engine
logs from done callbacks, the Redis group commit, the live tail's delivery, the lease keeper and the auditor. A raise
there would end a stream, stall a commit or kill a background task. Every module of the engine logs through
:data:`logger` instead: a record that a handler or filter fails on is dropped, and the first such failure in the
process is written to ``sys.stderr`` with its traceback (as ``logging`` does for a handler's own errors); later ones
are counted in :attr:`SafeLogger.failures`, not written.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any, Final

__all__ = ["SafeLogger", "logger"]


class SafeLogger(logging.LoggerAdapter):  # type: ignore[type-arg]  # (generic only in the stubs, not on 3.10)
    """A logger whose calls never raise (see the module docstring); records are the wrapped logger's, unchanged."""

    def __init__(self, wrapped: logging.Logger) -> None:
        super().__init__(wrapped, {})
        self.failures = 0
        """Log calls that a handler or filter raised in (their records were dropped)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return msg, kwargs  # the caller's own ``extra`` (LoggerAdapter's default would replace it)

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        # stacklevel 2: the record names the engine's call site, not this method (Python 3.11+ skips logging's
        # own frames before counting).
        kwargs.setdefault("stacklevel", 2)
        try:
            super().log(level, msg, *args, **kwargs)
        except Exception:
            self.failures += 1
            if self.failures == 1:
                _tell_stderr()


def _tell_stderr() -> None:
    """Say once, on stderr, that a handler or filter raised (the logger itself cannot be trusted with it)."""
    with contextlib.suppress(Exception):  # (no stderr to write to: nothing else can be told)
        sys.stderr.write(
            "resumable_sse: a handler or filter of the resumable_sse logger raised; the record was dropped and the "
            "engine went on (said once; later failures are only counted):\n" + traceback.format_exc()
        )


logger: Final = SafeLogger(logging.getLogger("resumable_sse"))
"""The ``resumable_sse`` logger as the engine uses it: ``logger.warning(...)`` and so on, never raising."""
