"""The Redis store: an event log shared by every process that uses the same Redis (or Redis Cluster).

Layout of one stream (``p`` is the key prefix, ``s`` the stream id; the braces make both keys one hash slot, so
the Lua scripts work unchanged on Redis Cluster):

- ``{p:s}:m``, a hash: ``e`` epoch, ``s`` status, ``t`` producer token, ``l`` lease end (ms, Redis clock), ``n``
  last seq, ``f`` first retained seq, ``lt`` token of the last append (to recognise a retried append), ``x`` the
  nonce of the call that ended the stream (to recognise a retried end).
- ``{p:s}:c``, the stream's pub/sub channel: every change is published there (see ``_redis_watch.py``).
- ``{p:s}:e``, a Redis Stream with one entry per append: id ``<seq of its last event>-0``, fields ``n`` (number
  of events) and ``d`` (the events packed as ``<event type>\\xfe<data>`` joined by ``\\xff``, two bytes UTF-8 text
  never contains). An append of 1,000 events is one XADD; a read is one XRANGE over a few entries, returned as
  one string. Trimmed with ``XTRIM MINID`` to the entry holding the first retained event (``f`` is exact).
  Needs Redis 6.2 or later (or Valkey).

Every change is one Lua script (``stores/lua/*.lua``, run with EVALSHA, loaded again after NOSCRIPT), so claims,
appends (fenced by token and by the ``after`` sequence number), trims, endings and expiry are atomic on the server,
with no read-then-write race. Leases are counted on the Redis server's clock, so process clocks do not matter.

Appends from many producers in one process are sent together: while one round trip is in flight, the appends that
arrive queue and go in the next one as a single pipeline (group commit; a burst goes as a few groups in flight at
once, see ``_redis_commit.py``). The live tail is pushed, not polled: each
change is published with its entries, and one pub/sub connection per node carries every stream a process follows.
Leases of all of a process's producers are renewed in one command; quiet streams are audited in one pipeline.

The ``redis`` package is an optional dependency (``pip install resumable-sse[redis]``); this module imports
without it and says so when a store is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from .._compat_redis import connection_factory
from .._event import Status, new_epoch
from .._log import Claim, NewEvent, OnChange, Outcome, Page, StreamState
from .._logger import logger
from ..exceptions import StoreUnavailable, StreamFenced, StreamNotFound
from ._redis_bulk import BulkLimit
from ._redis_commit import GroupCommit
from ._redis_format import (
    Call,
    Pending,
    Script,
    applied_page,
    bounded,
    hash_tag,
    merged,
    ms,
    pending,
    renewal,
    status_of,
    text,
    unpack,
)
from ._redis_watch import RedisWatch

if TYPE_CHECKING:
    from typing import TypeAlias

    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    RedisClient: TypeAlias = Redis | RedisCluster

__all__ = ["RedisStore"]

_INSTALL_HINT: Final = "RedisStore needs the redis package: pip install resumable-sse[redis]"
_SCRIPTS: Final = ("claim", "append", "renew", "end", "read", "abandon")


def _redis_module() -> Any:
    try:
        import redis.asyncio
        import redis.exceptions
    except ImportError as exc:  # pragma: no cover - exercised in an environment without redis
        raise ImportError(_INSTALL_HINT) from exc
    return redis


class RedisStore:
    """An :class:`~resumable_sse.EventLog` in Redis, shared by every process using the same server or cluster.

    :param client: a ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``; its ``decode_responses``
        setting does not matter. An injected client stays the caller's: :meth:`close` does not close it (pass
        ``close_client=True`` to hand it over).
    :param key_prefix: prefix of every key; streams of different prefixes never meet. No braces.
    :param max_events: entries kept per stream; older ones are trimmed (a reader further behind gets a ``reset``).
    :param ttl: seconds a finished stream is kept for late readers and reconnects; a running stream whose producer
        stopped renewing its lease is dropped ``ttl`` seconds after the lease ran out, if nobody ended it.
    :param close_client: close ``client`` in :meth:`close`.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        key_prefix: str = "rsse",
        max_events: int = 10_000,
        ttl: float = 600.0,
        close_client: bool = False,
    ) -> None:
        redis = _redis_module()
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if not key_prefix or any(char in key_prefix for char in "{}"):
            raise ValueError("key_prefix must be non-empty and contain no braces")
        self.client: Final = client
        self.key_prefix: Final = key_prefix
        self.max_events: Final = max_events
        self.ttl: Final = ttl
        self._ttl_ms = max(1, round(ttl * 1000))
        self._close_client = close_client
        self._scripts = {name: Script(name) for name in _SCRIPTS}
        self._unavailable: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.ClusterDownError,
            redis.exceptions.TryAgainError,
            redis.exceptions.ReadOnlyError,
            OSError,
        )
        self._no_script: type[BaseException] = redis.exceptions.NoScriptError
        self._bulk = BulkLimit(self._unavailable, redis.exceptions.ResponseError)  # Redis's longest argument
        from redis.asyncio.cluster import RedisCluster

        # redis-py's cluster client set up lazily by many concurrent first commands can fail some of them (a race in
        # its initialisation), so the store sets it up once, under a lock, before its first command.
        self._is_cluster = isinstance(client, RedisCluster)
        self._uninitialized_cluster = self._is_cluster
        self._init_lock = asyncio.Lock()
        self._publish = "SPUBLISH" if self._is_cluster else "PUBLISH"
        self._commit = GroupCommit(self._send_group)
        self._watches: list[RedisWatch] = []

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """A store on a new client for ``url`` (``redis://``, ``rediss://``, ``unix://``); the store owns it.

        ``options`` are the store's (``key_prefix``, ``max_events``, ``ttl``) plus ``cluster=True`` for a Redis
        Cluster; any other option goes to redis-py's ``BlockingConnectionPool.from_url`` (or ``RedisCluster.from_url``),
        e.g. ``max_connections`` (default 64; on a cluster 1000 per node), ``socket_timeout`` (default 10 s),
        ``socket_connect_timeout`` (default 5 s) or ``decode_responses``.
        """
        redis = _redis_module()
        store_options = {key: options.pop(key) for key in ("key_prefix", "max_events", "ttl") if key in options}
        # Commands are brief (live tails share one pub/sub connection per node, appends one group commit), so a
        # single node gets a small blocking pool (a burst waits up to 10 s for a connection) and a process keeps few
        # connections whatever its number of streams. A cluster's pools do not wait (an exhausted pool fails at
        # once), so each node's pool is large enough for bursts.
        cluster = options.pop("cluster", False)
        options.setdefault("max_connections", 1000 if cluster else 64)
        # A Redis that stops answering (a dropped network, a host that vanished) must fail calls, not hang them:
        # requests then get 503 and producers retry. The watch connection pings instead of timing out.
        options.setdefault("socket_connect_timeout", 5.0)
        options.setdefault("socket_timeout", 10.0)
        if cluster:
            from redis.asyncio.cluster import RedisCluster

            client: RedisClient = RedisCluster.from_url(url, **options)
        else:
            options.setdefault("timeout", 10.0)
            pool = redis.asyncio.BlockingConnectionPool.from_url(url, **options)
            client = redis.asyncio.Redis.from_pool(pool)  # the client owns the pool: closing it closes the pool
        return cls(client, close_client=True, **store_options)

    @property
    def round_trips(self) -> int:
        """Append round trips made so far (a group commit of many appends counts once); for tests and tuning."""
        return self._commit.round_trips

    def __repr__(self) -> str:
        return f"RedisStore({self.client!r}, key_prefix={self.key_prefix!r}, max_events={self.max_events})"

    # -- plumbing ---------------------------------------------------------------------------------------------

    def keys(self, stream_id: str) -> tuple[str, str, str, str]:
        """The keys of ``stream_id``: its state hash, its entries stream, its channel of every change and its channel
        of ends written from outside the producer (cancel, lost)."""
        tag = hash_tag(self.key_prefix, stream_id)
        return f"{tag}:m", f"{tag}:e", f"{tag}:c", f"{tag}:x"

    def pubsub_connection(self, channel: str) -> tuple[Any, Callable[[], Any]]:
        """Internal (used by the store's change notifications): the node that carries ``channel`` (None on a single
        server) and a factory of new, unconnected pub/sub connections to it."""
        client: Any = self.client
        if self._is_cluster:
            node = client.get_node_from_key(channel)  # (public: RedisCluster's documented method)
            return node.name, connection_factory(node)
        return None, connection_factory(client.connection_pool)

    def watch(self, on_change: OnChange) -> RedisWatch:
        """See :meth:`EventLog.watch <resumable_sse.EventLog.watch>`: pub/sub, one connection per node."""
        watch = RedisWatch(self, on_change)
        self._watches.append(watch)
        return watch

    def forget_watch(self, watch: RedisWatch) -> None:
        """Internal: a closed watch removes itself from the store."""
        if watch in self._watches:
            self._watches.remove(watch)

    async def _initialize(self) -> None:
        async with self._init_lock:
            if self._uninitialized_cluster:
                client: Any = self.client
                try:
                    await client.initialize()
                except self._unavailable as exc:
                    raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc
                self._uninitialized_cluster = False

    def _wrap(self, exc: BaseException) -> BaseException:
        if isinstance(exc, self._unavailable):
            return StoreUnavailable(f"Redis is unreachable: {exc}")
        return exc

    async def _eval(self, name: str, keys: Sequence[str | bytes], args: Sequence[Any], **options: Any) -> Any:
        """Run script ``name``; connection failures become :class:`StoreUnavailable` (``from`` the original)."""
        if self._uninitialized_cluster:
            await self._initialize()
        script = self._scripts[name]
        client: Any = self.client
        # Every script is safe to run twice (claims, appends and ends recognise their own retry), so a command that
        # met a connection broken by a Redis restart is sent once more on a fresh one before Redis counts as down.
        for attempt in (1, 2):
            try:
                try:
                    return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args, **options)
                except self._no_script:
                    await client.script_load(script.text)
                    return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args, **options)
            except self._unavailable as exc:
                if attempt == 2:
                    raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send_group(self, group: list[Pending]) -> None:
        """One group commit (see ``_redis_commit.py``): one script call on a single server (one command, one reply,
        whatever the number of streams); on a cluster one call per hash slot, pipelined. No argument is longer than
        Redis takes (see ``_redis_bulk.py``): a longer append goes in parts, and one with an event that cannot fit is
        refused with :class:`~resumable_sse.EventTooLarge` (that append alone)."""
        bulk = self._bulk
        try:
            if self._uninitialized_cluster:
                await self._initialize()
            sendable = bulk.fit(group, await bulk.learn(self.client, self._is_cluster))
            by_slot: dict[int, list[Pending]] = {}
            client: Any = self.client
            for item in sendable:
                slot = client.keyslot(item.keys[0]) if self._is_cluster else 0
                by_slot.setdefault(slot, []).append(item)
            head = [self._publish, self.max_events, self._ttl_ms]
            batches = [part for items in by_slot.values() for part in bounded(items)]
            calls = [
                (
                    [key for item in items for _ in item.args for key in item.keys],
                    [*head, *(arg for item in items for arg in item.args)],
                )
                for items in batches
            ]
            results = await self._calls("append", calls) if calls else []
        except BaseException as exc:
            bulk.failed(self._wrap(exc), group)
            if not isinstance(exc, Exception):
                raise
        else:
            for items, outcome in zip(batches, results, strict=True):
                if isinstance(outcome, BaseException):
                    bulk.failed(outcome, items)
                    continue
                index = 0
                for item in items:
                    count = len(item.args)
                    replies = outcome[index : index + count]
                    index += count
                    if not item.future.done():
                        self._applied(item, replies[0] if count == 1 else merged(replies))
                    # Let go of what the append carried now, not when the whole group is over: the runs that heard
                    # make their next appends in this loop, and the collector counts what is alive (a group of 250
                    # started a collection each, fleet.py --streams 500 --only redis).
                    item.events, item.keys, item.args = (), (), ()

    async def _pipeline(self, client: Any, script: Script, calls: Sequence[Call]) -> list[Any]:
        """Run ``script`` once per ``(keys, args)`` in one pipeline; calls that met NOSCRIPT run again after
        SCRIPT LOAD. Errors come back in place of results."""
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [index for index, outcome in enumerate(results) if isinstance(outcome, self._no_script)]
        if missing:
            await client.script_load(script.text)
            for index in missing:
                keys, args = calls[index]
                try:
                    results[index] = await client.evalsha(script.sha, len(keys), *keys, *args)
                except Exception as exc:
                    results[index] = exc
        return results

    async def _calls(self, name: str, calls: Sequence[Call]) -> list[Any]:
        """:meth:`_pipeline` sent once more on a fresh connection after a broken one (every script is safe to
        repeat); connection failures become StoreUnavailable, in place too."""
        if len(calls) == 1:  # one command needs no pipeline (most group commits on a single server)
            keys, args = calls[0]
            try:
                return [await self._eval(name, keys, args)]
            except StoreUnavailable:
                raise
            except Exception as exc:
                return [exc]
        if self._uninitialized_cluster:
            await self._initialize()
        for attempt in (1, 2):
            try:
                results = await self._pipeline(self.client, self._scripts[name], calls)
            except self._unavailable as exc:
                if attempt == 2:
                    raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc
                continue
            return [self._wrap(outcome) if isinstance(outcome, BaseException) else outcome for outcome in results]
        raise AssertionError("unreachable")  # pragma: no cover

    async def _pipelined(self, name: str, calls: Sequence[Call]) -> list[Any]:
        """:meth:`_calls`, raising the first error that came back in place of a result."""
        results = await self._calls(name, calls)
        for outcome in results:
            if isinstance(outcome, BaseException):
                raise outcome
        return results

    # -- EventLog ---------------------------------------------------------------------------------------------

    async def claim(self, stream_id: str, token: str, lease: float) -> Claim:
        """See :meth:`EventLog.claim <resumable_sse.EventLog.claim>`."""
        args = [token, new_epoch(), ms(lease), self._ttl_ms, self._publish]
        acquired, epoch, status, first, last = await self._eval("claim", self.keys(stream_id)[:3], args)
        state = StreamState(stream_id, text(epoch), status_of(status), int(first), int(last))
        return Claim(bool(int(acquired)), state)

    async def append(
        self, stream_id: str, token: str, events: Sequence[NewEvent], *, after: int, final: Status | None = None
    ) -> int:
        """See :meth:`EventLog.append <resumable_sse.EventLog.append>`.

        One round trip (shared with other streams' appends made meanwhile) whatever the number of events.
        """
        return await self.submit_append(stream_id, token, events, after=after, final=final)

    def submit_append(
        self, stream_id: str, token: str, events: Sequence[NewEvent], *, after: int, final: Status | None = None
    ) -> asyncio.Future[int]:
        """See :meth:`SubmitsAppends.submit_append <resumable_sse.SubmitsAppends.submit_append>`: queued for the
        next group commit before it returns."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._commit.add(pending(self.key_prefix, stream_id, token, events, after, final, future))
        return future

    def append_then(
        self,
        stream_id: str,
        token: str,
        events: Sequence[NewEvent],
        *,
        after: int,
        final: Status | None = None,
        outcome: Outcome,
    ) -> None:
        """:meth:`submit_append`, its outcome given to ``outcome`` in the group commit's step, before the append is
        delivered to this process's readers (see ``AppendsThen`` in ``_log.py``: what a producer's run uses)."""
        self._commit.add(pending(self.key_prefix, stream_id, token, events, after, final, outcome))

    def _applied(self, item: Pending, reply: Any) -> None:
        """An append's reply came: its outcome is settled first, then the append is given to the local watches as its
        own notification in this process (see RedisWatch.follow), in the committer. A future's callbacks run a step
        later; a producer run's outcome (``append_then``) goes on at once, queueing what its producer has pending
        for the group that follows this one.

        Rule: nothing that can reach an application's code (delivery to local readers reports to the observer, and
        logs) runs before the outcome is settled, and a failure of delivery stays here: every append of the group is
        settled whatever a reader or hook does, so no producer, and no ``close()``, waits on it for ever (an
        outcome's own methods never raise: see ``Outcome``)."""
        code = int(reply[0])
        if code == -1:
            item.future.set_exception(StreamNotFound(item.stream_id))
            return
        if code == -2:
            item.future.set_exception(StreamFenced(item.stream_id))
            return
        seq = int(reply[1])
        item.future.set_result(seq)
        if self._watches and code == 0 and item.events:  # (code 1: a retry of an append applied before)
            page = applied_page(item, seq, text(reply[2]), int(reply[3]))
            for watch in self._watches:
                try:
                    watch.local(item.stream_id, page)
                except Exception:
                    logger.exception(
                        "delivering an append of %r to this process's readers failed",
                        item.stream_id,
                        extra={"stream_id": item.stream_id},
                    )
                    with contextlib.suppress(Exception):  # the stream's readers read it again from Redis
                        watch.on_change(item.stream_id, None)

    async def renew(self, leases: Sequence[tuple[str, str]], lease: float) -> list[int]:
        """See :meth:`EventLog.renew <resumable_sse.EventLog.renew>`: one script call for all of them (on a
        cluster, one per hash slot, pipelined)."""
        if not leases:
            return []
        head = [ms(lease), self._ttl_ms]
        if not self._is_cluster:
            kept = []
            for keys, tokens in renewal(self.key_prefix, leases):  # (one call, unless the tokens exceed 1 MiB)
                kept += [int(one) for one in await self._eval("renew", keys, [*head, tokens])]
            return kept
        replies = await self._pipelined(
            "renew", [(self.keys(stream_id)[:2], [*head, token]) for stream_id, token in leases]
        )
        return [int(reply[0]) for reply in replies]

    def _end_args(self, status: Status, data: str, only_if_expired: bool) -> list[Any]:
        nonce = secrets.token_hex(8)
        return [status, data, "1" if only_if_expired else "0", nonce, self._ttl_ms, self.max_events, self._publish]

    async def end(self, stream_id: str, status: Status, data: str) -> bool:
        """See :meth:`EventLog.end <resumable_sse.EventLog.end>`."""
        (reply,) = await self._eval("end", self.keys(stream_id), self._end_args(status, data, False))
        return bool(reply) and bool(int(reply[0]))

    async def abandon(self, stream_id: str, token: str, data: str) -> StreamState | None:
        """See :meth:`EventLog.abandon <resumable_sse.EventLog.abandon>`."""
        args = [token, new_epoch(), data, self._ttl_ms, self._publish]
        reply = await self._eval("abandon", self.keys(stream_id), args)
        if not reply:
            return None
        return StreamState(stream_id, text(reply[0]), status_of(reply[1]), int(reply[2]), int(reply[3]))

    async def audit(self, stream_ids: Sequence[str], lost: str) -> list[StreamState | None]:
        """See :meth:`EventLog.audit <resumable_sse.EventLog.audit>`: the lease is judged by the Redis clock."""
        if not stream_ids:
            return []
        args = self._end_args("lost", lost, True)
        if self._is_cluster:  # one call per stream (a call's keys share a hash slot), pipelined
            calls = [(self.keys(stream_id), args) for stream_id in stream_ids]
            replies = [reply for replies in await self._pipelined("end", calls) for reply in replies]
        else:  # one call for all of them: a reconnect storm audits the streams it starts following in a few commands
            keys = [key for stream_id in stream_ids for key in self.keys(stream_id)]
            replies = await self._eval("end", keys, args)
        return [
            StreamState(sid, text(reply[1]), status_of(reply[2]), int(reply[3]), int(reply[4])) if reply else None
            for sid, reply in zip(stream_ids, replies, strict=True)
        ]

    async def state(self, stream_id: str) -> StreamState | None:
        """See :meth:`EventLog.state <resumable_sse.EventLog.state>`."""
        if self._uninitialized_cluster:
            await self._initialize()
        client: Any = self.client
        key = self.keys(stream_id)[0]
        try:
            reply = await client.hmget(key, ["e", "s", "f", "n"])
        except self._unavailable:
            try:  # once more, on a fresh connection (see _eval)
                reply = await client.hmget(key, ["e", "s", "f", "n"])
            except self._unavailable as exc:
                raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc
        epoch, status, first, last = reply
        if epoch is None:
            return None
        return StreamState(stream_id, text(epoch), status_of(status), int(first), int(last))

    async def read(self, stream_id: str, after: int, limit: int, *, epoch: str | None = None) -> Page | None:
        """See :meth:`EventLog.read <resumable_sse.EventLog.read>`: one round trip (a Lua script over XRANGE)."""
        # NEVER_DECODE: the packed entries are not UTF-8 as a whole (their separators are bytes 0xFE and 0xFF), so
        # a client with decode_responses=True must hand them over undecoded.
        reply = await self._eval("read", self.keys(stream_id)[:2], [after, limit, epoch or ""], NEVER_DECODE=True)
        if reply is None:
            return None
        state = StreamState(stream_id, reply[0].decode(), status_of(reply[1]), int(reply[2]), int(reply[3]))
        if len(reply) < 7:
            return Page(state)
        start, packed_first = int(reply[4]), int(reply[5])
        return Page(state, unpack(state.epoch, packed_first, reply[6], start - packed_first, limit))

    async def close(self) -> None:
        """Stop every watch and, when the store owns its client (``from_url``), close the client."""
        for watch in list(self._watches):
            await watch.close()
        await self._commit.close()
        if self._close_client:
            client: Any = self.client
            await client.aclose()
