"""What a producer's run hears of its append in flight on a store that replies later (``AppendsThen`` in ``_log``).

The store settles it in the step that learns the outcome (the Redis store's group commit), so the run appends what its
producer yielded meanwhile in that very step: it joins the group that follows at once, where through a future it would
come a step later, after that group had gone (and a new sender task would be started for it). No future is made per
append (``benchmarks/fleet.py --only redis``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from ._logger import logger

__all__ = ["Receiver"]


class Receiver:
    """The outcome of a run's append in flight (an :class:`~._log.Outcome`): one per run, reused for each append (a
    run has one in flight at a time). ``on_result`` and ``on_error`` are the run's; what they raise is logged here,
    never raised into the store's step (see the rule of :class:`~._log.Outcome`). Waiting for the outcome (the run's
    end) makes a future, only then."""

    __slots__ = ("on_error", "on_result", "settled", "stream_id", "waiter")

    def __init__(
        self, stream_id: str, on_result: Callable[[int], None], on_error: Callable[[BaseException], None]
    ) -> None:
        self.stream_id = stream_id
        self.on_result = on_result
        self.on_error = on_error
        self.settled = True
        self.waiter: asyncio.Future[None] | None = None

    def start(self) -> Receiver:
        """An append goes out: this receives its outcome."""
        self.settled = False
        return self

    def done(self) -> bool:
        return self.settled

    def set_result(self, result: int, /) -> None:
        if self.settled:
            return
        self.settled = True
        try:
            self.on_result(result)
        except Exception as exc:
            self._failed(exc)
            with contextlib.suppress(Exception):
                self.on_error(exc)  # the run stops appending (its end reports the failure)
        self._wake()

    def set_exception(self, exception: BaseException, /) -> None:
        if self.settled:
            return
        self.settled = True
        try:
            self.on_error(exception)
        except Exception as exc:
            self._failed(exc)
        self._wake()

    def _failed(self, exc: Exception) -> None:
        """A bug in the runtime: logged, never raised into the store's step (its group goes on)."""
        extra = {"stream_id": self.stream_id}
        logger.error("stream %r: taking an append's outcome failed", self.stream_id, exc_info=exc, extra=extra)

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wait(self) -> asyncio.Future[None]:
        """A future done once the append in flight is settled and the run has taken its outcome."""
        waiter = self.waiter
        if waiter is None:
            waiter = self.waiter = asyncio.get_running_loop().create_future()
            if self.settled:
                waiter.set_result(None)
        return waiter
