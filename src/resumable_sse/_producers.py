"""The producers of this process: the :class:`Producers` registry (runs keyed by stream and epoch, their leases kept
together), the :class:`Producer` handle :meth:`Streamer.start <resumable_sse.Streamer.start>` returns, and
:func:`check_factory`, which refuses what cannot be a producer before any stream is claimed for it.

Every run is kept under ``(stream id, epoch)`` and removed by identity when it ends; all of their leases are renewed
in one store call per period (no timer per stream), and a run that lost its lease, or whose producer went idle too
long, is stopped. A run whose task was cancelled before its first step never removed itself: the keeper lets go of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Callable, Iterable

from ._event import Status
from ._log import StreamState
from ._logger import logger
from ._producer import Factory, Run, Settings
from ._run_state import ENDED
from ._tasks import spawn

__all__ = ["Producer", "Producers", "check_factory"]


def check_factory(producer: object) -> None:
    """Refuse at once what cannot be a producer function (a generator object, an iterable, None)."""
    if callable(producer):
        return
    kind = type(producer).__name__
    if isinstance(producer, (AsyncIterable, Iterable)):
        raise TypeError(
            f"a producer must be a function that returns the events, not a {kind} object: pass the generator "
            "function itself (or lambda: gen), so that it runs once, only when the stream is claimed"
        )
    raise TypeError(f"a producer must be a function that returns the events, not {kind}")


class Producer:
    """A producer this process runs: await :meth:`wait` for the terminal state it ended its stream with."""

    def __init__(self, run: Run) -> None:
        self._run = run

    @property
    def stream_id(self) -> str:
        """The stream it produces."""
        return self._run.stream_id

    @property
    def epoch(self) -> str:
        """The epoch of the stream it created."""
        return self._run.epoch

    def done(self) -> bool:
        """True once the stream has its terminal entry (or the producer was fenced out)."""
        return self._run.task.done()

    def result(self) -> Status:
        """The end state; raises :class:`asyncio.InvalidStateError` while the producer runs."""
        return self._run.task.result()

    def add_done_callback(self, callback: Callable[[Producer], None]) -> None:
        """Call ``callback(self)`` on the event loop once the stream has ended."""
        self._run.task.add_done_callback(lambda _task: callback(self))

    async def wait(self) -> Status:
        """Wait until the stream ends; return its terminal state. Everything told of the end (the observer's
        ``stream_ended``, callbacks added before) has been told when it returns. Raises
        :class:`asyncio.CancelledError` if the producer's task itself was cancelled (it ended its stream first)."""
        task = self._run.task
        if task.done():
            # An ended task's callbacks run a step after it ended: yield once, so that they ran, as they do when the
            # task ends while this waits (awaiting an ended task does not yield).
            await asyncio.sleep(0)
        return await asyncio.shield(task)


def _status(run: Run, task: asyncio.Task[Status]) -> Status:
    """How a run ended its stream: as it recorded (also when its task then ended cancelled); a task cancelled before
    it ran was cancelled; one that failed, error."""
    if run.outcome is not None:
        return run.outcome
    return "cancelled" if task.cancelled() else "error" if task.exception() is not None else task.result()


class Producers:
    """Every producer this process runs (see the module docstring)."""

    def __init__(self, streamer: Settings) -> None:
        self.streamer = streamer
        self.runs: dict[tuple[str, str], Run] = {}
        self._keeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.runs)

    def start(self, token: str, state: StreamState, factory: Factory) -> Producer:
        """Run ``factory()`` as the producer of the stream just claimed with ``token`` (shape ``state``)."""
        run = Run(self, token, state, factory)
        self.runs[state.stream_id, state.epoch] = run
        observer = self.streamer.observer
        if observer is not None:
            observer.stream_started(run.stream_id)
            run.task.add_done_callback(lambda task: observer.stream_ended(run.stream_id, _status(run, task)))
        if self._keeper is None or self._keeper.done():
            self._keeper = spawn(self._keep_leases(), "resumable-sse leases")
        return Producer(run)

    def get(self, stream_id: str, epoch: str) -> Run | None:
        return self.runs.get((stream_id, epoch))

    def of(self, stream_id: str) -> list[Run]:
        """The runs of ``stream_id`` in this process (more than one while an old epoch's run winds down)."""
        return [run for (sid, _), run in self.runs.items() if sid == stream_id]

    def forget(self, run: Run) -> None:
        if self.runs.get((run.stream_id, run.epoch)) is run:
            del self.runs[run.stream_id, run.epoch]

    async def _keep_leases(self) -> None:
        """Renew every local producer's lease in one store call; stop producers that lost it or went idle."""
        streamer = self.streamer
        while self.runs:
            await asyncio.sleep(streamer.lease / 3)
            self._discard_unstarted()
            runs = [run for run in self.runs.values() if not run.task.done()]
            try:
                kept = await streamer.log.renew([(run.stream_id, run.token) for run in runs], streamer.lease)
            except Exception as exc:
                logger.warning(
                    "could not renew the leases of %d producers: %s; tried again in %.1f s (readers notice nothing "
                    "unless it lasts the lease: those streams then end lost)",
                    len(runs),
                    exc,
                    streamer.lease / 3,
                    extra={"stream_id": None, "stream_ids": [run.stream_id for run in runs[:100]]},
                )
                continue
            now = time.monotonic()
            for run, last_seq in zip(runs, kept, strict=True):
                if last_seq < 0:
                    run.fence("lost", "")
                    streamer.hub.suspect(run.stream_id)
                elif last_seq < run.last_seq:
                    streamer.hub.suspect(run.stream_id)  # the store went back in time: readers must hear of it
                elif not run.pending and now - run.last_progress > streamer.idle_timeout:
                    logger.error(
                        "producer of stream %r yielded nothing for %.0f s; the stream ends with error (clients get "
                        "'the producer was idle too long')",
                        run.stream_id,
                        streamer.idle_timeout,
                        extra={"stream_id": run.stream_id},
                    )
                    run.stop("error", "the producer was idle too long")

    def _discard_unstarted(self) -> None:
        """Let go of the runs whose task was cancelled before its first step: their coroutine never ran, so they never
        removed themselves (any other run does when it ends). No end is written: readers get lost after the lease."""
        hub = self.streamer.hub
        for run in [run for run in self.runs.values() if run.task.done() and run.state is not ENDED]:
            run.move(ENDED)
            hub.suspect(run.stream_id)
            hub.detach(run.tail, producer=True)
            self.forget(run)

    async def close(self, grace: float) -> None:
        """Give running producers ``grace`` seconds, then cancel them (``cancelled``, "server shutdown"); wait for
        every one of them to end."""
        tasks = [run.task for run in self.runs.values()]
        if tasks:
            _, running = await asyncio.wait(tasks, timeout=grace)
            for run in list(self.runs.values()):
                run.stop("cancelled", "server shutdown")
            if running:
                await asyncio.wait(running)
            self._discard_unstarted()
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
