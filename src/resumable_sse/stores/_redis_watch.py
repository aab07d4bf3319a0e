"""Change notifications from Redis: one pub/sub connection per Redis node carries every stream a process follows.

Every script that changes a stream publishes the change on the stream's channel (``{p:s}:c``, in the stream's hash
slot): its new shape and the entries it appended. A :class:`RedisWatch` subscribes to the channels of the streams its
owner follows, so a paced token costs one round trip (the append) and reaches every process that follows it with no
read at all. On a single server that is ``SUBSCRIBE``; on a cluster, sharded pub/sub (``SSUBSCRIBE`` on the node that
owns the slot), so that no message crosses the cluster bus.

Pub/sub forgets what it could not deliver. Whenever a subscription becomes effective (a new channel, or every
channel after a reconnect) the watch says so with ``on_change(stream_id, None)``: the owner reads the stream again,
so nothing that happened before or during the gap goes unseen. A quiet connection is pinged; one that stops
answering is replaced. The connection itself is ``_compat_redis.Listener`` (what it assumes of redis-py is said there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from .._compat_redis import Listener
from .._log import OnChange, Page
from .._logger import logger
from ._redis_format import parse_change

__all__ = ["RedisWatch"]


class Store(Protocol):
    """What a watch needs of its store (the :class:`~resumable_sse.stores.redis.RedisStore`)."""

    def keys(self, stream_id: str) -> tuple[str, str, str, str]:
        """The stream's keys; the last two are its channels (every change; ends from outside the producer)."""

    def pubsub_connection(self, channel: str) -> tuple[Any, Callable[[], Any]]:
        """The node carrying ``channel`` and a factory of connections to it."""

    def forget_watch(self, watch: RedisWatch) -> None:
        """Called by a closed watch."""


class RedisWatch:
    """A :class:`~resumable_sse.Watch` on a :class:`~resumable_sse.stores.redis.RedisStore` (see module docstring)."""

    def __init__(self, store: Store, on_change: OnChange) -> None:
        self.store = store
        self.on_change = on_change
        self.channels: dict[bytes, str] = {}  # channel -> stream id
        self.followed: dict[str, bytes] = {}  # stream id -> the channel followed
        self.told: dict[str, tuple[str, int]] = {}  # stream id -> (epoch, last seq) of the last local() report
        self.listeners: dict[Any, Listener] = {}  # node name (None on a single server) -> its listener
        self.placed: dict[bytes, Listener] = {}
        self.closed = False

    def follow(self, stream_id: str, entries: bool = True) -> None:
        if self.closed:
            return
        channel = self.store.keys(stream_id)[2 if entries else 3].encode()
        current = self.followed.get(stream_id)
        if current == channel:
            return
        if current is not None:
            self.drop(current)
        self.followed[stream_id] = channel
        self.channels[channel] = stream_id
        self.place(channel)

    def place(self, channel: bytes) -> None:
        node, connect = self.store.pubsub_connection(channel.decode())
        listener = self.listeners.get(node)
        if listener is None:
            listener = self.listeners[node] = Listener(self, connect, sharded=node is not None)
        self.placed[channel] = listener
        listener.want(channel, True)

    def unfollow(self, stream_id: str) -> None:
        self.told.pop(stream_id, None)
        channel = self.followed.pop(stream_id, None)
        if channel is not None:
            self.drop(channel)

    def drop(self, channel: bytes) -> None:
        self.channels.pop(channel, None)
        listener = self.placed.pop(channel, None)
        if listener is not None:
            listener.want(channel, False)

    def local(self, stream_id: str, page: Page) -> None:
        """A change this process made itself (an append): reported at once, whatever channel is followed; its echo
        from the server, should the stream's channel of every change be followed, is then not reported again."""
        if stream_id in self.followed:
            self.told[stream_id] = (page.state.epoch, page.state.last_seq)
            self.on_change(stream_id, page)

    def moved(self, channel: bytes) -> None:
        listener = self.placed.pop(channel, None)
        if listener is not None:
            listener.wanted.discard(channel)
        self.place(channel)

    def changed(self, channel: bytes, message: bytes) -> None:
        stream_id = self.channels.get(channel)
        if stream_id is None:
            return
        try:
            told = self.told.get(stream_id)
            if told is not None:  # the echo of a change reported at once by local()?
                epoch, _, _, last, _ = message.split(b"\n", 5)[:5]
                if told[0] == epoch.decode() and int(last) <= told[1]:
                    return
            page = parse_change(stream_id, message)
        except (ValueError, KeyError):
            logger.error(
                "stream %r: unreadable change notification; reading the stream instead (readers miss nothing)",
                stream_id,
                extra={"stream_id": stream_id},
            )
            self.on_change(stream_id, None)
            return
        self.on_change(stream_id, page)

    def resync(self, channel: bytes) -> None:
        stream_id = self.channels.get(channel)
        if stream_id is not None:
            self.on_change(stream_id, None)

    async def close(self) -> None:
        self.closed = True
        tasks = [listener.task for listener in self.listeners.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.listeners.clear()
        self.channels.clear()
        self.followed.clear()
        self.told.clear()
        self.store.forget_watch(self)
