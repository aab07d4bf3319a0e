"""The resumable-sse 0.1 API, kept so that 0.1 applications run unchanged on the new engine (deprecated).

0.1 applications serve FastAPI + sse-starlette like this::

    from resumable_sse.factory import get_streamer
    streamer = get_streamer(backend="memory")            # or backend="redis", redis_client=redis.asyncio.Redis()

    @app.get("/stream")
    async def stream(request: Request, session_id: str):
        return EventSourceResponse(streamer.stream(session_id=session_id, generator=fake_generator()))

That code keeps working, and gains the guarantees of the new engine: the generator runs once per session however
many requests ask (the generator object a later request passes is closed unused), a refresh replays the session
from the log instead of generating it again, ``last_id`` resumes exactly after that event, and a finished session is
replayed, never generated again. :func:`get_streamer` warns with :class:`DeprecationWarning`; new code uses
:func:`resumable_sse.starlette.resumable_endpoint` (or :class:`~resumable_sse.Streamer` directly), which also
answers ``204``/``410`` and reads ``Last-Event-ID`` by itself; "Migrating from 0.1" (docs/migration.md) has the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from typing import Any, Literal

from ._event import EventId
from ._streamer import Reset, Streamer, Subscription, validate_stream_id
from .exceptions import InvalidEventId, InvalidStreamId, StreamNotFound
from .stores import MemoryStore

__all__ = ["LegacyStreamer", "get_streamer"]

_FROM_START = ("", "0", "$0")


_LEGACY_OPTIONS = ("stream_prefix", "status_prefix", "end_marker")  # 0.1's storage layout, gone


def get_streamer(
    backend: Literal["memory", "redis"] = "memory",
    redis_client: Any = None,
    **store_options: Any,
) -> LegacyStreamer:
    """The 0.1 entry point: a streamer on the memory store, or on Redis through ``redis_client``.

    Deprecated: use :func:`resumable_sse.starlette.resumable_endpoint` with a :class:`~resumable_sse.Streamer`.

    :param backend: ``"memory"`` (one process) or ``"redis"`` (every process sharing ``redis_client``'s server).
    :param redis_client: a ``redis.asyncio.Redis`` (or ``RedisCluster``) client; required for ``"redis"``.
    :param store_options: passed to the store (``max_events``, ``ttl``; ``key_prefix`` for Redis). 0.1's
        ``stream_prefix``, ``status_prefix`` and ``end_marker`` are accepted and ignored (with a warning): they
        named 0.1's Redis keys and its in-band end marker, which this version replaces by its own keys (under
        ``key_prefix``) and terminal events.
    """
    warnings.warn(
        "resumable_sse.factory.get_streamer() is the resumable-sse 0.1 API and is deprecated: serve streams with "
        "resumable_sse.starlette.resumable_endpoint(producer) (FastAPI/Starlette) or resumable_sse.resumable_handler "
        "(aiohttp); see 'Migrating from 0.1' (docs/migration.md)",
        DeprecationWarning,
        stacklevel=2,
    )
    ignored = [name for name in _LEGACY_OPTIONS if store_options.pop(name, None) is not None]
    if ignored:
        warnings.warn(
            f"get_streamer(): {', '.join(ignored)} named resumable-sse 0.1's storage and are ignored; streams now end "
            "with terminal events (done, error, cancelled, lost), not an end marker",
            DeprecationWarning,
            stacklevel=2,
        )
    if backend == "memory":
        if redis_client is not None:
            raise ValueError("redis_client is only used with backend='redis'")
        return LegacyStreamer(Streamer(MemoryStore(**store_options)))
    if backend == "redis":
        if redis_client is None:
            raise ValueError("backend='redis' needs redis_client=redis.asyncio.Redis(...)")
        from .stores.redis import RedisStore

        return LegacyStreamer(Streamer(RedisStore(redis_client, **store_options)))
    raise ValueError(f"unknown backend {backend!r}: use 'memory' or 'redis'")


def _stream_id(session_id: str) -> str:
    """The stream id of a 0.1 session id: itself when it is a valid stream id, else a digest of it (0.1 took any
    string; this version's ids are 1 to 128 characters of ``A-Z a-z 0-9 . _ : -``)."""
    try:
        return validate_stream_id(session_id)
    except InvalidStreamId:
        return "session-" + hashlib.sha256(str(session_id).encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _as_dict(item: Any) -> dict[str, str]:
    """An event as sse-starlette's ``EventSourceResponse`` takes it: ``id`` (none for ``reset``), ``event`` when
    typed, ``data``."""
    event: dict[str, str] = {}
    item_id = getattr(item, "id", None)
    if item_id is not None:
        event["id"] = item_id
    if item.event is not None:
        event["event"] = item.event
    event["data"] = item.data
    return event


class LegacyStreamer:
    """What 0.1's ``get_streamer()`` returned, over a :class:`~resumable_sse.Streamer` (``.streamer``)."""

    def __init__(self, streamer: Streamer) -> None:
        self.streamer = streamer
        """The engine underneath: ``cancel``, ``status`` and new-style endpoints can share it."""

    async def stream(
        self, session_id: str, generator: AsyncIterator[Any] | Iterable[Any], last_id: str | None = "0"
    ) -> AsyncGenerator[dict[str, str], None]:
        """The events of session ``session_id`` after ``last_id`` as dicts (``id``, ``event``, ``data``), then the
        live tail, until the session's terminal event (``done``, ``error``, ``cancelled``, ``lost``).

        ``generator`` (an async generator *object*, or, as in 0.1, a plain iterable, which is then iterated in a
        worker thread) becomes the session's producer only when the session is new; otherwise it is closed unused.
        Any string is a session id, as in 0.1: one that is not a valid stream id is stored under a digest of it.
        ``last_id`` ``"0"`` (or empty, or None) means from the first event; the id of an event resumes strictly
        after it. A ``last_id`` that cannot be continued exactly (a 0.1 id, another life of the session, trimmed
        away) gets a ``reset`` event first, then the session from its earliest retained event. A ``last_id`` for a
        session the store no longer has (expired) generates it again as a new life, after a ``reset``, as 0.1 did.
        """
        position = None if last_id is None or last_id in _FROM_START else last_id
        subscription = await self._open(_stream_id(session_id), generator, position)
        try:
            async with contextlib.aclosing(subscription.batches()) as batches:
                async for batch in batches:
                    for item in batch:
                        yield _as_dict(item)
        finally:
            subscription.close()

    async def _open(
        self, session_id: str, generator: AsyncIterator[Any] | Iterable[Any], position: str | None
    ) -> Subscription:
        async def produce_async() -> AsyncIterator[Any]:
            assert isinstance(generator, AsyncIterable)
            try:
                async for item in generator:
                    yield item
            finally:
                aclose = getattr(generator, "aclose", None)
                if aclose is not None:
                    await aclose()

        def produce_blocking() -> Iterable[Any]:
            assert isinstance(generator, Iterable)
            return generator  # a plain function: the engine iterates what it returns in a worker thread

        produce = produce_async if isinstance(generator, AsyncIterable) else produce_blocking

        engine, ours = self.streamer, False
        try:
            old_id = False
            if position is not None:
                try:
                    EventId.parse(position)
                except InvalidEventId:
                    position, old_id = None, True  # not an id of this version (0.1's): replay after a reset
            if position is None:
                ours = await engine.start(session_id, produce) is not None
                subscription = await engine.subscribe(session_id)
                if old_id:
                    subscription.reset = Reset("epoch", subscription.state.first_id)
                return subscription
            try:
                return await engine.subscribe(session_id, position)
            except StreamNotFound:
                ours = await engine.start(session_id, produce) is not None
                return await engine.subscribe(session_id, position)
        finally:
            if not ours:  # another request (or process) produces this session: this generator is not needed
                aclose = getattr(generator, "aclose", None)
                if aclose is not None:
                    await aclose()
                else:
                    close = getattr(generator, "close", None)  # a plain generator
                    if close is not None:
                        close()
