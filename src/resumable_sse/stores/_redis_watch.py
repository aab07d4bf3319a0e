"""Change notifications from Redis: one pub/sub connection per Redis node carries every stream a process follows.

Every script that changes a stream publishes the change on the stream's channel (``{p:s}:c``, in the stream's hash
slot): its new shape and the entries it appended. A :class:`RedisWatch` subscribes to the channels of the streams its
owner follows, so a paced token costs one round trip (the append) and reaches every process that follows it with no
read at all. On a single server that is ``SUBSCRIBE``; on a cluster, sharded pub/sub (``SSUBSCRIBE`` on the node that
owns the slot), so that no message crosses the cluster bus.

Pub/sub forgets what it could not deliver. Whenever a subscription becomes effective (a new channel, or every
channel after a reconnect) the watch says so with ``on_change(stream_id, None)``: the owner reads the stream again,
so nothing that happened before or during the gap goes unseen. A quiet connection is pinged; one that stops
answering is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final, Protocol

from .._log import OnChange, Page
from .._tasks import spawn
from ._redis_format import parse_change

__all__ = ["RedisWatch"]

logger = logging.getLogger("resumable_sse")

_PING_EVERY: Final = 5.0
"""Seconds of silence after which a watch connection is pinged; a second silence as long means it is dead."""
_RETRY_FIRST_DELAY: Final = 0.05
_RETRY_MAX_DELAY: Final = 1.0


class _Listener:
    """One pub/sub connection (to one Redis node) and the channels it should carry."""

    def __init__(self, watch: RedisWatch, connect: Callable[[], Any], sharded: bool) -> None:
        self.watch = watch
        self.connect = connect
        self.sharded = sharded
        self.wanted: set[bytes] = set()
        self.changed = asyncio.Event()
        self.task = spawn(self.run(), "resumable-sse redis watch")

    def want(self, channel: bytes, on: bool) -> None:
        if on:
            self.wanted.add(channel)
        else:
            self.wanted.discard(channel)
        self.changed.set()

    async def run(self) -> None:
        delay = _RETRY_FIRST_DELAY
        failing = False
        while True:
            connection: Any = None
            subscribed: set[bytes] = set()
            try:
                connection = self.connect()
                await connection.connect()
                await self.serve(connection, subscribed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    followed = sorted({self.watch.channels[c] for c in self.wanted if c in self.watch.channels})
                    logger.warning(
                        "change notifications from Redis interrupted (%s); reconnecting: readers of its %d streams "
                        "wait, and each stream is read again once it is followed again",
                        exc,
                        len(followed),
                        extra={"stream_id": None, "stream_ids": followed[:100]},
                    )
                failing = True
            else:
                return
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.disconnect()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_DELAY)
            if subscribed:
                delay = _RETRY_FIRST_DELAY
                failing = False

    async def serve(self, connection: Any, subscribed: set[bytes]) -> None:
        """Dispatch the connection's messages, one read each, while :meth:`subscribe` keeps its subscriptions.

        Subscriptions are sent while a read is pending (a write never disturbs the read of a reply), so a new follow
        takes effect in one round trip; the reading loop itself costs no task or future per message.
        """
        self.changed.set()  # a new connection subscribes to everything wanted
        writer = asyncio.ensure_future(self.subscribe(connection, subscribed))
        silent = 0
        try:
            while True:
                message = await connection.read_response(disable_decoding=True, timeout=_PING_EVERY)
                if writer.done():
                    writer.result()  # its failure is the connection's
                if message is None:  # silence: ping, and give up on a connection that stays silent
                    silent += 1
                    if silent > 1:
                        raise ConnectionError("Redis did not answer a ping on the watch connection")
                    await connection.send_command(b"PING")
                    continue
                silent = 0
                if isinstance(message, list) and message:
                    self.dispatch(message, subscribed)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def subscribe(self, connection: Any, subscribed: set[bytes]) -> None:
        """Send (S)SUBSCRIBE and (S)UNSUBSCRIBE whenever :attr:`wanted` changes; on a failure, drop the connection
        (its reader then fails and the listener reconnects)."""
        sub, unsub = (b"SSUBSCRIBE", b"SUNSUBSCRIBE") if self.sharded else (b"SUBSCRIBE", b"UNSUBSCRIBE")
        try:
            while True:
                await self.changed.wait()
                self.changed.clear()
                add, drop = self.wanted - subscribed, subscribed - self.wanted
                for channels in self.batches(add):
                    await connection.send_command(sub, *channels)
                subscribed |= add
                for channels in self.batches(drop):
                    await connection.send_command(unsub, *channels)
                subscribed -= drop
        except Exception:
            await connection.disconnect()
            raise

    def batches(self, channels: set[bytes]) -> list[list[bytes]]:
        """The channels in as few commands as the server takes: one on a single server; on a cluster one per slot
        (SSUBSCRIBE and SUNSUBSCRIBE refuse channels of several slots with CROSSSLOT, even on one node)."""
        if not channels:
            return []
        if not self.sharded:
            return [list(channels)]
        from redis.crc import key_slot  # here: this module imports without the optional redis package

        by_slot: dict[int, list[bytes]] = {}
        for channel in channels:
            by_slot.setdefault(key_slot(channel), []).append(channel)
        return list(by_slot.values())

    def dispatch(self, message: Any, subscribed: set[bytes]) -> None:
        kind = message[0]
        if kind in (b"message", b"smessage"):
            self.watch.changed(message[1], message[2])
        elif kind in (b"subscribe", b"ssubscribe"):
            self.watch.resync(message[1])  # effective from now: whatever came before must be read
        elif kind == b"sunsubscribe" and message[1] in self.wanted:
            # The cluster moved the slot to another node: follow it there.
            subscribed.discard(message[1])
            self.watch.moved(message[1])


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
        self.listeners: dict[Any, _Listener] = {}  # node name (None on a single server) -> its listener
        self.placed: dict[bytes, _Listener] = {}
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
            listener = self.listeners[node] = _Listener(self, connect, sharded=node is not None)
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
