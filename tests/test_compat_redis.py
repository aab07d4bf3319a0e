"""What the Redis watch assumes of redis-py's connections (``_compat_redis``), checked against a real redis-server
and a real cluster: each test fails, never hangs, the day an assumption stops holding."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from .conftest import STORE_FACTORIES

pytestmark = pytest.mark.redis


async def _read(connection: Any, timeout: float = 5.0) -> Any:
    """A read as the watch makes it (no timeout of redis-py's), bounded here so that a test never hangs."""
    return await asyncio.wait_for(connection.read_response(disable_decoding=True), timeout)


async def _check(store: Any) -> None:
    channel = store.keys("compat")[2]
    node, connect = store.pubsub_connection(channel)
    sharded = node is not None
    subscribe, message_kind = (b"SSUBSCRIBE", b"smessage") if sharded else (b"SUBSCRIBE", b"message")
    connection = connect()
    await connection.connect()
    try:
        # 2: a read with no timeout waits through silence (no error, no None: no timer of its own or the socket's),
        # and the connection goes on: here it outlives 0.3 s of silence, then reads the subscription's reply.
        silence = asyncio.ensure_future(connection.read_response(disable_decoding=True))
        await asyncio.sleep(0.3)
        assert not silence.done()
        # 3: a command sent while a read is pending on the same connection: the read gets its reply.
        await connection.send_command(subscribe, channel)
        assert await asyncio.wait_for(silence, 5) == [subscribe.lower(), channel.encode(), 1]
        # 2: a published message is the reply of a read (RESP2).
        reading = asyncio.ensure_future(_read(connection))
        await asyncio.sleep(0.05)
        await store.client.execute_command("SPUBLISH" if sharded else "PUBLISH", channel, b"change")
        assert await reading == [message_kind, channel.encode(), b"change"]
        # The watch's own ping, sent while a read is pending (RESP2 pub/sub answers a PING with a "pong" message).
        reading = asyncio.ensure_future(_read(connection))
        await asyncio.sleep(0.05)
        await connection.send_command(b"PING")
        assert await reading == [b"pong", b""]
    finally:
        await connection.disconnect()


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_the_watch_connection_is_read_and_written_at_once(kind: str) -> None:
    store: Any = await STORE_FACTORIES[kind]()
    try:
        if kind == "redis-cluster":
            await store.client.initialize()  # (the store does this before its first command)
        await asyncio.wait_for(_check(store), timeout=20)
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_the_watch_connection_has_no_timeout_no_health_check_and_speaks_resp2(kind: str) -> None:
    """1: built from the pool's (or the node's) connection class and arguments, with redis-py's own socket timeout
    and health checks off (a health check would read a reply from under the reader) and RESP2."""
    store: Any = await STORE_FACTORIES[kind]()
    try:
        if kind == "redis-cluster":
            await store.client.initialize()
        _node, connect = store.pubsub_connection(store.keys("compat")[2])
        connection = connect()
        assert connection.health_check_interval == 0
        assert connection.socket_timeout is None
        await connection.connect()
        try:
            await connection.send_command(b"HELLO")
            hello = await asyncio.wait_for(_read(connection), timeout=5)
            fields = dict(zip(hello[::2], hello[1::2], strict=True))
            assert fields[b"proto"] == 2
        finally:
            await connection.disconnect()
    finally:
        await store.close()
