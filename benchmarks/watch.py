"""The live tail's pub/sub: CPU per message in the process that follows, the watch's own loop vs redis-py's PubSub.

A private redis-server; another process publishes ``--messages`` messages of 200 bytes (about one token's change)
over ``--channels`` channels the follower subscribed to; the follower's CPU time per message is printed for each way,
over ``--rounds`` rounds, alternating:
  watch    the loop of ``resumable_sse._compat_redis.Listener``: one connection, ``read_response`` per message (no
           timeout: the listener judges silence apart)
  pubsub   redis-py's ``redis.asyncio.client.PubSub.get_message``, the public way

Why the watch keeps a connection of its own: every paced token is echoed to the process that appended it, so this
CPU is paid per token in ``fleet.py`` on the Redis store.

    python benchmarks/watch.py [--messages 100000] [--channels 1000] [--rounds 3]
"""

from __future__ import annotations

import asyncio
import resource
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import _bench
import redis.asyncio

from resumable_sse._compat_redis import connection_factory

PAYLOAD = b"x" * 200


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _channel(index: int) -> str:
    return f"{{c{index}}}:c"


async def publish(url: str, messages: int, channels: int) -> None:
    client = redis.asyncio.Redis.from_url(url)
    for start in range(0, messages, 500):
        async with client.pipeline(transaction=False) as pipe:
            for index in range(start, min(start + 500, messages)):
                pipe.publish(_channel(index % channels), PAYLOAD)
            await pipe.execute()
    await client.aclose()


async def _measure(url: str, messages: int, channels: int, receive: Callable[[], Awaitable[bool | None]]) -> float:
    publisher = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--publish", url, str(messages), str(channels)
    )
    seen, began = 0, _cpu()
    while seen < messages:
        got = await receive()
        if got is None:
            raise RuntimeError(f"only {seen} of {messages} messages arrived")
        seen += got
    spent = _cpu() - began
    await publisher.wait()
    return spent / messages


async def watch_way(url: str, messages: int, channels: int) -> float:
    client = redis.asyncio.Redis.from_url(url)
    connection = connection_factory(client.connection_pool)()
    await connection.connect()
    await connection.send_command(b"SUBSCRIBE", *[_channel(i) for i in range(channels)])
    for _ in range(channels):
        await connection.read_response(disable_decoding=True, timeout=5)

    async def receive() -> bool | None:
        # No timeout, as the watch reads (a timer per read would be most of the cost); the whole run has one.
        message: Any = await connection.read_response(disable_decoding=True)
        return message[0] == b"message"

    try:
        return await asyncio.wait_for(_measure(url, messages, channels, receive), 600)
    finally:
        await connection.disconnect()
        await client.aclose()


async def pubsub_way(url: str, messages: int, channels: int) -> float:
    client = redis.asyncio.Redis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.subscribe(*[_channel(i) for i in range(channels)])
    for _ in range(channels):
        await pubsub.get_message(timeout=5)

    async def receive() -> bool | None:
        message = await pubsub.get_message(timeout=5)
        return None if message is None else message["type"] == "message"

    try:
        return await _measure(url, messages, channels, receive)
    finally:
        await pubsub.aclose()
        await client.aclose()


async def main() -> None:
    args = _bench.parser(__doc__)
    args.add_argument("--messages", type=int, default=100_000)
    args.add_argument("--channels", type=int, default=1000)
    args.add_argument("--rounds", type=int, default=3)
    options = args.parse_args()
    server = _bench.start_redis()
    try:
        figures: dict[str, list[float]] = {"watch": [], "pubsub": []}
        for _ in range(options.rounds):
            for name, way in (("watch", watch_way), ("pubsub", pubsub_way)):
                figures[name].append(await way(server.url, options.messages, options.channels) * 1e6)
        for name, values in figures.items():
            shown = ", ".join(f"{value:.1f}" for value in values)
            print(f"{name:8s} CPU per message, us: median {_bench.median(values):.1f} ({shown})")
        ratio = _bench.median(figures["pubsub"]) / _bench.median(figures["watch"])
        print(f"pubsub / watch: {ratio:.2f}x")
    finally:
        server.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--publish"]:
        asyncio.run(publish(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    else:
        asyncio.run(main())
