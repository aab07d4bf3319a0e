"""The Redis watch's own pub/sub connection: where resumable-sse relies on how redis-py works inside.

redis-py's async ``PubSub`` would do this job, but costs the process that follows a stream about twice the CPU per
message (``benchmarks/watch.py``: 18-24 us against 2.5-3.5 us for this loop, 100,000 messages over 1,000 channels);
every paced token is echoed to the process that appended it, and the fleet benchmark's Redis row spends 34-45 us of
CPU per token in all, so that would be a quarter more per token. The watch keeps one connection per node of its own,
and assumes of redis-py:

1. A connection made by a pool's (or a cluster node's) ``connection_class`` from its ``connection_kwargs`` with
   ``socket_timeout=None``, ``health_check_interval=0`` and ``protocol=2`` (and without
   ``maint_notifications_config``, which needs RESP3) is a plain RESP2 connection of that pool's server.
2. ``Connection.read_response()`` with no ``timeout`` on such a connection (``socket_timeout=None``) waits for the
   next reply however long it takes, with no timer of its own (a timer per read would cost two thirds of the loop's
   CPU per message), and returns pub/sub messages as replies (RESP2).
3. ``Connection.send_command`` may run while a ``read_response`` is pending on the same connection: a write never
   disturbs the read (true while health checks are off: a health check would read a reply from under the reader).

``tests/test_compat_redis.py`` checks each against a real redis-server and cluster, and fails (never hangs) the day
one stops holding. At run time a broken assumption shows as a failing connection: the listener logs it, reconnects,
and every followed stream is read again (``on_change(stream_id, None)``), so readers miss nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from asyncio import FIRST_COMPLETED
from collections.abc import Callable
from typing import Any, Final, Protocol

from ._logger import logger
from ._tasks import spawn

__all__ = ["Listener", "Watch", "connection_factory"]


def connection_factory(pool: Any) -> Callable[[], Any]:
    """A factory of new, unconnected RESP2 connections like those of ``pool`` (a ``ConnectionPool``, or a cluster's
    ``ClusterNode``: both keep ``connection_class`` and ``connection_kwargs``), with no socket timeout and no health
    checks of redis-py's own (the watch pings itself)."""
    connection_class: Callable[..., Any] = pool.connection_class
    kwargs = dict(pool.connection_kwargs)
    # RESP2: messages come back as replies of the read (RESP3 would hand them to a push handler instead).
    # Maintenance notifications (redis-py 7+) need RESP3: none on this connection.
    kwargs.update(socket_timeout=None, health_check_interval=0, protocol=2)
    kwargs.pop("maint_notifications_config", None)
    return lambda: connection_class(**kwargs)


class Watch(Protocol):
    """What a listener reports to (the ``RedisWatch``)."""

    channels: dict[bytes, str]

    def changed(self, channel: bytes, message: bytes) -> None:
        """A change published on ``channel``."""

    def resync(self, channel: bytes) -> None:
        """A subscription to ``channel`` became effective: what came before must be read."""

    def moved(self, channel: bytes) -> None:
        """The cluster moved ``channel``'s slot to another node."""


_PING_EVERY: Final = 5.0
"""Seconds of silence after which a watch connection is pinged; a second silence as long means it is dead."""
_RETRY_FIRST_DELAY: Final = 0.05
_RETRY_MAX_DELAY: Final = 1.0


class Listener:
    """One pub/sub connection (to one Redis node) and the channels it should carry."""

    def __init__(self, watch: Watch, connect: Callable[[], Any], sharded: bool) -> None:
        self.watch = watch
        self.connect = connect
        self.sharded = sharded
        self.wanted: set[bytes] = set()
        self.changed = asyncio.Event()
        self.heard = 0  # replies read so far (messages, confirmations, pongs): the silence watch compares it
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
        """Dispatch the connection's messages (:meth:`read`) while :meth:`subscribe` keeps its subscriptions, and
        ping a connection that has been silent for ``_PING_EVERY`` seconds (one that stays silent as long is dead).

        Subscriptions are sent while a read is pending (a write never disturbs the read of a reply), so a new follow
        takes effect in one round trip. Silence is judged here, every ``_PING_EVERY`` seconds, rather than by a
        timeout on each read: a read's timeout costs a timer per message, two thirds of the reading loop's CPU
        (``benchmarks/watch.py``), and every followed token is a message.
        """
        self.changed.set()  # a new connection subscribes to everything wanted
        writer = asyncio.ensure_future(self.subscribe(connection, subscribed))
        reader = asyncio.ensure_future(self.read(connection, subscribed))
        silent, heard = 0, self.heard
        try:
            while True:
                done, _ = await asyncio.wait((writer, reader), timeout=_PING_EVERY, return_when=FIRST_COMPLETED)
                for task in done:
                    task.result()  # its failure is the connection's (the reader never returns)
                if self.heard != heard:
                    silent, heard = 0, self.heard
                    continue
                silent += 1  # silence: ping, and give up on a connection that stays silent
                if silent > 1:
                    raise ConnectionError("Redis did not answer a ping on the watch connection")
                await connection.send_command(b"PING")
        finally:
            writer.cancel()
            reader.cancel()
            await asyncio.gather(writer, reader, return_exceptions=True)

    async def read(self, connection: Any, subscribed: set[bytes]) -> None:
        """Read and dispatch every message, for as long as the connection lasts: no task or future per message."""
        while True:
            message = await connection.read_response(disable_decoding=True)  # no timeout (socket_timeout is None)
            self.heard += 1
            if isinstance(message, list) and message:
                self.dispatch(message, subscribed)

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
