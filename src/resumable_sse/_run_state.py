"""A producer run's frame (:class:`~._producer.Run`): its life (the states, and the moves between them, in one
place), what it needs of the engine that owns it (:class:`Settings`, :class:`Registry`), how it opens its source
(:func:`open_source`) and what it says of a failure (:func:`producer_failed`, :func:`append_refused`).

A run is in exactly one :class:`State` (:data:`STATES`). It moves only as :data:`MOVES` lists; :func:`check_move`
refuses any other move with :class:`IllegalMove`: a bug in the runtime, never the user's. What is not part of the
life is data on the run, not a state: the append in flight (and whether it is a retry), the store's verdict on the
appends, why the pump was stopped (:class:`Stop`), and a cancel from outside waiting to be re-raised.

The way through: STARTING -> OPENING -> PUMPING -> DRAINING -> ENDING -> ENDED. Stops: STARTING -> HALTING;
OPENING or PUMPING -> HALTING (asked within the task's own step) or INTERRUPTED (from outside it); either -> DRAINING.
The factory failing: OPENING -> DRAINING. An end written elsewhere: DRAINING or ENDING -> FENCED -> ENDED.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, NamedTuple, Protocol, Union, final

from ._event import Status
from ._feed import call_in_thread
from ._log import EventLog, NewEvent
from ._logger import logger
from ._observe import Observer
from ._readers import Hub
from .exceptions import EventTooLarge, InvalidEventData

__all__ = [
    "DRAINING",
    "ENDED",
    "ENDING",
    "FENCED",
    "HALTING",
    "INTERRUPTED",
    "MOVES",
    "OPENING",
    "PUMPING",
    "STARTING",
    "STATES",
    "Factory",
    "IllegalMove",
    "Registry",
    "Settings",
    "Source",
    "State",
    "Stop",
    "append_refused",
    "check_move",
    "open_source",
    "producer_failed",
]


@final
class State:
    """One state of a run's life: one of the constants below, and no other (compared with ``is``)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name: Final = name

    def __repr__(self) -> str:
        return f"<State {self.name}>"


STARTING: Final = State("STARTING")  # its task is made and has not run yet
OPENING: Final = State("OPENING")  # calling the factory (awaited on the loop, or in a thread of its own)
PUMPING: Final = State("PUMPING")  # pulling the source; appends start as events come
INTERRUPTED: Final = State("INTERRUPTED")  # stopped from outside the task: the run cancelled its task, takes it back
HALTING: Final = State("HALTING")  # stopped in the task's own step (or before it ran): the pump stops at its next look
DRAINING: Final = State("DRAINING")  # the pump is over: the append in flight settles (an end from elsewhere may come)
ENDING: Final = State("ENDING")  # the terminal entry is on its way (a store's notice of it is no end from elsewhere)
FENCED: Final = State("FENCED")  # the stream ended, or was taken, elsewhere: the run reads how, and writes nothing
ENDED: Final = State("ENDED")  # the end is written, learned or given up: nothing more of this run touches the store
STATES: Final = (STARTING, OPENING, PUMPING, INTERRUPTED, HALTING, DRAINING, ENDING, FENCED, ENDED)

MOVES: Final[dict[State, frozenset[State]]] = {
    STARTING: frozenset({OPENING, HALTING}),
    OPENING: frozenset({PUMPING, INTERRUPTED, HALTING, DRAINING}),
    PUMPING: frozenset({INTERRUPTED, HALTING, DRAINING}),
    INTERRUPTED: frozenset({DRAINING}),
    HALTING: frozenset({DRAINING}),
    DRAINING: frozenset({ENDING, FENCED}),
    ENDING: frozenset({FENCED}),
    FENCED: frozenset(),
    ENDED: frozenset(),
}
"""Every move a run makes in its life. Besides these, every state but ENDED may move to ENDED: the run settled its
end, or its task was cancelled before its first step, or an exception the run does not handle ended it."""


class IllegalMove(RuntimeError):
    """A run was asked to make a move that :data:`MOVES` does not list."""


def check_move(stream_id: str, state: State, to: State) -> None:
    """Raise :class:`IllegalMove` unless a run of ``stream_id`` in ``state`` may move to ``to``."""
    if to not in MOVES[state] and (to is not ENDED or state is ENDED):
        raise IllegalMove(f"producer run of {stream_id!r}: {state.name} -> {to.name}")


class Stop(NamedTuple):
    """Why the pump was stopped from the run's side: the end it asks for, and whether that end was written elsewhere
    (then the run writes nothing). The first stop's status and message hold; an end written elsewhere always counts."""

    status: Status
    message: str
    elsewhere: bool


Source = Union[AsyncIterable[Any], Iterable[Any]]  # noqa: UP007 (a runtime alias on 3.10)
"""What a producer factory returns: an async iterable (run on the loop) or a plain iterable (run in a thread)."""

Factory = Callable[[], Union[Source, Awaitable[Source]]]  # noqa: UP007 (a runtime alias on 3.10)
"""A producer function: an async generator function, an async function returning the events, or a plain function
(called in a thread of its own) returning them."""


class Settings(Protocol):
    """What the producer runtime needs of the engine that owns it (the :class:`~resumable_sse.Streamer`)."""

    @property
    def log(self) -> EventLog: ...  # the store as the engine calls it (timed when there is an observer)

    @property
    def observer(self) -> Observer | None: ...
    @property
    def hub(self) -> Hub: ...
    @property
    def lease(self) -> float: ...
    @property
    def idle_timeout(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def max_event_bytes(self) -> int: ...
    @property
    def max_batch_bytes(self) -> int: ...
    @property
    def error_message(self) -> str: ...
    @property
    def store_retry_timeout(self) -> float: ...

    async def append(
        self, stream_id: str, token: str, events: Sequence[NewEvent], after: int, *, final: Status | None = None
    ) -> int:
        """A producer's append, retried while the store is unreachable."""


class Registry(Protocol):
    """Where a run is kept while it runs (:class:`~._producers.Producers`)."""

    @property
    def streamer(self) -> Settings: ...

    def forget(self, run: Any) -> None:
        """The run (a :class:`~._producer.Run`, which imports this module) ended: drop it, if it is still the one
        kept for its stream and epoch."""


async def open_source(factory: Factory, stream_id: str) -> object:
    """Call a producer's factory and return its source: a coroutine function is awaited, an async generator function
    called; a plain function may block before it returns (a legacy SDK's ``create(stream=True)`` connects first), so
    it is called in a thread of its own, never on the event loop."""
    if inspect.iscoroutinefunction(factory):
        return await factory()
    if inspect.isasyncgenfunction(factory):
        return factory()
    return await call_in_thread(factory, f"resumable-sse producer {stream_id}")


def producer_failed(stream_id: str, exc: Exception, generic: str) -> str:
    """Log a producer's failure, once, with the stream id; what clients are told of it (``generic`` unless the event
    itself was refused)."""
    extra = {"stream_id": stream_id}
    if isinstance(exc, (EventTooLarge, InvalidEventData)):
        said = "an event was too large" if isinstance(exc, EventTooLarge) else "an event was not valid text"
        logger.error("stream %r: %s; it ends with error (clients get %r)", stream_id, exc, said, extra=extra)
        return said
    logger.error(
        "producer of stream %r raised; the stream ends with error (clients get the generic message)",
        stream_id,
        exc_info=exc,
        extra=extra,
    )
    return generic


def append_refused(stream_id: str, exc: EventTooLarge) -> str:
    """Log the store's refusal of an append (an event longer than it takes); what clients are told of it."""
    logger.error(
        "stream %r: the store refused an append: %s; it ends with error", stream_id, exc, extra={"stream_id": stream_id}
    )
    return str(exc)
