"""The Redis store: an event log shared by every process that uses the same Redis (or Redis Cluster).

Layout of one stream (``p`` is the key prefix, ``s`` the stream id; the braces make both keys one hash slot, so
the Lua scripts work unchanged on Redis Cluster):

- ``{p:s}:m``, a hash: ``e`` epoch, ``s`` status, ``t`` producer token, ``l`` lease end (ms, Redis clock), ``n``
  last seq, ``f`` first retained seq, ``lt`` token of the last append (to recognise a retried append), ``x`` the
  nonce of the call that ended the stream (to recognise a retried end).
- ``{p:s}:e``, a Redis Stream with one entry per append: id ``<seq of its last event>-0``, fields ``n`` (number
  of events) and ``d`` (the events packed as ``<event type>\\xfe<data>`` joined by ``\\xff``, two bytes UTF-8 text
  never contains). An append of 1,000 events is one XADD; a read is one XRANGE over a few entries, returned as
  one string. Trimmed with ``XTRIM MINID`` to the entry holding the first retained event (``f`` is exact).
  Needs Redis 6.2 or later (or Valkey).

Every change is one Lua script (``stores/lua/*.lua``, run with EVALSHA, loaded again after NOSCRIPT), so claims,
appends (fenced by token and by the ``after`` sequence number), trims, endings and expiry are atomic on the server,
with no read-then-write race. Leases are counted on the Redis server's clock, so process clocks do not matter.

Appends from many producers in one process are sent together: while one round trip is in flight, the appends that
arrive queue and go in the next one as a single pipeline (group commit). The live tail reads with ``XREAD BLOCK``,
one blocked connection per followed stream per process (the Streamer follows each stream once).

The ``redis`` package is an optional dependency (``pip install resumable-sse[redis]``); this module imports
without it and says so when a store is made.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from .._event import Entry, Status, new_epoch
from .._log import Claim, NewEvent, StreamState
from ..exceptions import StoreUnavailable, StreamFenced, StreamNotFound

if TYPE_CHECKING:
    from typing import TypeAlias

    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    RedisClient: TypeAlias = Redis | RedisCluster

__all__ = ["RedisStore"]

_INSTALL_HINT: Final = "RedisStore needs the redis package: pip install resumable-sse[redis]"
_SCRIPTS: Final = ("claim", "append", "renew", "end", "read")


def _redis_module() -> Any:
    try:
        import redis.asyncio
        import redis.exceptions
    except ImportError as exc:  # pragma: no cover - exercised in an environment without redis
        raise ImportError(_INSTALL_HINT) from exc
    return redis


def _socket_timeout(client: Any, is_cluster: bool) -> float | None:
    """The client's socket timeout in seconds (None: reads may wait for ever), as far as redis-py tells it."""
    try:
        kwargs = client.get_connection_kwargs() if is_cluster else client.connection_pool.connection_kwargs
    except AttributeError:
        return None
    value = kwargs.get("socket_timeout")
    return float(value) if value else None


def _load_script(name: str) -> str:
    folder = importlib.resources.files("resumable_sse.stores").joinpath("lua")
    return folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class _Script:
    """One Lua script: its text and SHA1; run with EVALSHA, loaded (SCRIPT LOAD) after a NOSCRIPT reply."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        import hashlib

        self.text = text
        self.sha = hashlib.sha1(text.encode("utf-8")).hexdigest()


class _Pending:
    """An append waiting for the next group commit."""

    __slots__ = ("args", "future", "keys")

    def __init__(self, keys: tuple[str, str], args: list[Any], future: asyncio.Future[Any]) -> None:
        self.keys = keys
        self.args = args
        self.future = future


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
        self._scripts = {name: _Script(_load_script(name)) for name in _SCRIPTS}
        self._unavailable: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.ClusterDownError,
            redis.exceptions.TryAgainError,
            redis.exceptions.ReadOnlyError,
            OSError,
        )
        self._no_script: type[BaseException] = redis.exceptions.NoScriptError
        from redis.asyncio.cluster import RedisCluster

        # redis-py's cluster client set up lazily by many concurrent first commands can fail some of them (a race in
        # its initialisation), so the store sets it up once, under a lock, before its first command.
        self._is_cluster = isinstance(client, RedisCluster)
        self._socket_timeout = _socket_timeout(client, self._is_cluster)
        self._uninitialized_cluster = self._is_cluster
        self._init_lock = asyncio.Lock()
        self._queue: list[_Pending] = []
        self._committer: asyncio.Task[None] | None = None
        self._closed: asyncio.Event | None = None
        self._is_closed = False
        self.round_trips = 0
        """Append round trips made so far (a group commit of many appends counts once); for tests and tuning."""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """A store on a new client for ``url`` (``redis://``, ``rediss://``, ``unix://``); the store owns it.

        ``options`` are the store's (``key_prefix``, ``max_events``, ``ttl``) plus ``cluster=True`` for a Redis
        Cluster; any other option goes to redis-py's ``BlockingConnectionPool.from_url`` (or ``RedisCluster.from_url``),
        e.g. ``max_connections`` (default 1000), ``socket_timeout`` (default 10 s), ``socket_connect_timeout``
        (default 5 s) or ``decode_responses``.
        """
        redis = _redis_module()
        store_options = {key: options.pop(key) for key in ("key_prefix", "max_events", "ttl") if key in options}
        # Each followed stream holds a connection in XREAD BLOCK, and bursts of requests each need one: the pool is
        # larger than redis-py's default (100, beyond which commands fail at once), and on a single node a command
        # that finds it exhausted waits up to 10 s for a free connection instead of failing.
        options.setdefault("max_connections", 1000)
        # A Redis that stops answering (a dropped network, a host that vanished) must fail calls, not hang them:
        # requests then get 503 and producers retry. wait() keeps its XREAD BLOCK below the socket timeout.
        options.setdefault("socket_connect_timeout", 5.0)
        options.setdefault("socket_timeout", 10.0)
        if options.pop("cluster", False):
            from redis.asyncio.cluster import RedisCluster

            client: RedisClient = RedisCluster.from_url(url, **options)
        else:
            options.setdefault("timeout", 10.0)
            pool = redis.asyncio.BlockingConnectionPool.from_url(url, **options)
            client = redis.asyncio.Redis.from_pool(pool)  # the client owns the pool: closing it closes the pool
        return cls(client, close_client=True, **store_options)

    def __repr__(self) -> str:
        return f"RedisStore({self.client!r}, key_prefix={self.key_prefix!r}, max_events={self.max_events})"

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _keys(self, stream_id: str) -> tuple[str, str]:
        tag = f"{{{self.key_prefix}:{stream_id}}}"
        return f"{tag}:m", f"{tag}:e"

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

    async def _eval(self, name: str, keys: tuple[str, str], args: Sequence[Any], **options: Any) -> Any:
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
                    return await client.execute_command("EVALSHA", script.sha, 2, *keys, *args, **options)
                except self._no_script:
                    await client.script_load(script.text)
                    return await client.execute_command("EVALSHA", script.sha, 2, *keys, *args, **options)
            except self._unavailable as exc:
                if attempt == 2:
                    raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _commit(self) -> None:
        """Send queued appends, one round trip per group, until the queue is empty (group commit)."""
        script = self._scripts["append"]
        client: Any = self.client
        while self._queue:
            group, self._queue = self._queue, []
            self.round_trips += 1
            if len(group) == 1:
                item = group[0]
                try:
                    result: Any = await self._eval("append", item.keys, item.args)
                except BaseException as exc:
                    if not item.future.done():
                        item.future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                if not item.future.done():
                    item.future.set_result(result)
                continue
            try:
                if self._uninitialized_cluster:
                    await self._initialize()
                results = await self._pipeline(client, script, group)
            except BaseException as exc:
                wrapped = self._wrap(exc)
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(wrapped)
                if not isinstance(exc, Exception):
                    raise
                continue
            for item, outcome in zip(group, results, strict=True):
                if item.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    item.future.set_exception(self._wrap(outcome))
                else:
                    item.future.set_result(outcome)

    async def _pipeline(self, client: Any, script: _Script, group: list[_Pending]) -> list[Any]:
        """Run the appends of ``group`` in one pipeline; those that met NOSCRIPT run again after SCRIPT LOAD."""
        pipe = client.pipeline(transaction=False)
        for item in group:
            pipe.execute_command("EVALSHA", script.sha, 2, *item.keys, *item.args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [index for index, outcome in enumerate(results) if isinstance(outcome, self._no_script)]
        if missing:
            await client.script_load(script.text)
            for index in missing:
                item = group[index]
                try:
                    results[index] = await client.evalsha(script.sha, 2, *item.keys, *item.args)
                except Exception as exc:
                    results[index] = exc
        return results

    # -- EventLog ---------------------------------------------------------------------------------------------

    async def claim(self, stream_id: str, token: str, lease: float) -> Claim:
        """See :meth:`EventLog.claim <resumable_sse.EventLog.claim>`."""
        reply = await self._eval("claim", self._keys(stream_id), [token, new_epoch(), _ms(lease), self._ttl_ms])
        acquired, epoch, status, first, last = reply
        return Claim(bool(int(acquired)), StreamState(stream_id, _text(epoch), _status(status), int(first), int(last)))

    async def append(
        self, stream_id: str, token: str, events: Sequence[NewEvent], *, after: int, final: Status | None = None
    ) -> int:
        """See :meth:`EventLog.append <resumable_sse.EventLog.append>`.

        One round trip (shared with other streams' appends made meanwhile) whatever the number of events.
        """
        if final is not None and not events:
            raise ValueError("a final append needs the terminal entry")
        args: list[Any] = [token, after, final or "", self.max_events, self._ttl_ms, len(events), _pack(events)]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Pending(self._keys(stream_id), args, future))
        if self._committer is None or self._committer.done():
            self._committer = loop.create_task(self._commit())
        reply = int(await future)
        if reply == -1:
            raise StreamNotFound(stream_id)
        if reply == -2:
            raise StreamFenced(stream_id)
        return reply

    async def renew(self, stream_id: str, token: str, lease: float) -> bool:
        """See :meth:`EventLog.renew <resumable_sse.EventLog.renew>`."""
        reply = await self._eval("renew", self._keys(stream_id), [token, _ms(lease), self._ttl_ms])
        return bool(int(reply))

    async def end(self, stream_id: str, status: Status, data: str, *, only_if_expired: bool = False) -> bool:
        """See :meth:`EventLog.end <resumable_sse.EventLog.end>`; the lease is judged by the Redis server's clock."""
        nonce = secrets.token_hex(8)
        args = [status, data, "1" if only_if_expired else "0", nonce, self._ttl_ms, self.max_events]
        return bool(int(await self._eval("end", self._keys(stream_id), args)))

    async def state(self, stream_id: str) -> StreamState | None:
        """See :meth:`EventLog.state <resumable_sse.EventLog.state>`."""
        if self._uninitialized_cluster:
            await self._initialize()
        client: Any = self.client
        key = self._keys(stream_id)[0]
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
        return StreamState(stream_id, _text(epoch), _status(status), int(first), int(last))

    async def _read(self, stream_id: str, after: int, limit: int) -> tuple[list[Entry], bool]:
        """Entries after ``after`` and whether the stream is still running."""
        # NEVER_DECODE: the packed entries are not UTF-8 as a whole (their separators are bytes 0xFE and 0xFF), so
        # a client with decode_responses=True must hand them over undecoded.
        reply = await self._eval("read", self._keys(stream_id), [after, limit], NEVER_DECODE=True)
        if reply is None:
            raise StreamNotFound(stream_id)
        running = reply[1] == b"running"
        if len(reply) < 5:
            return [], running
        epoch = reply[0].decode()
        start = int(reply[2])
        skip = start - int(reply[3])
        # surrogateescape turns the separator bytes into lone surrogates, which valid UTF-8 text never decodes to.
        packed = reply[4].decode("utf-8", "surrogateescape").split("\udcff")[skip : skip + limit]
        entries = []
        for index, item in enumerate(packed):
            event, _, data = item.partition("\udcfe")
            entries.append(Entry(epoch, start + index, event or None, data))
        return entries, running

    async def read(self, stream_id: str, after: int, limit: int) -> list[Entry]:
        """See :meth:`EventLog.read <resumable_sse.EventLog.read>`: one round trip (a Lua script over XRANGE)."""
        entries, _ = await self._read(stream_id, after, limit)
        return entries

    async def wait(self, stream_id: str, after: int, limit: int, timeout: float) -> list[Entry]:
        """See :meth:`EventLog.wait <resumable_sse.EventLog.wait>`.

        Reads first; only when nothing follows ``after`` does it block in ``XREAD BLOCK`` on the entries stream
        (from id ``<after>-0``, so an append between the read and the block is not missed), then reads again.
        """
        entries, running = await self._read(stream_id, after, limit)
        if entries or not running or self._is_closed:
            return entries
        closed = self._closed_event()
        client: Any = self.client
        key = self._keys(stream_id)[1]
        options: dict[str, Any] = {"NEVER_DECODE": True}  # the packed entry is not UTF-8 text
        if self._is_cluster:
            # Name the node: otherwise redis-py asks the cluster for XREAD's keys first (COMMAND GETKEYS).
            options["target_nodes"] = client.get_node_from_key(key)
        if self._socket_timeout is not None:  # a read that outlasts the socket timeout fails as a broken one
            timeout = min(timeout, self._socket_timeout / 2)
        block = asyncio.ensure_future(
            client.execute_command(
                "XREAD", "COUNT", 1, "BLOCK", max(1, _ms(timeout)), "STREAMS", key, f"{after}-0", **options
            )
        )
        closing = asyncio.ensure_future(closed.wait())
        try:
            await asyncio.wait({block, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not block.done():
                # Closing, or we are cancelled: abandon the blocked read (redis-py drops that connection).
                block.cancel()
                block.add_done_callback(_retrieve)
        if not block.done() or block.cancelled():
            return []
        exc = block.exception()
        if exc is not None:
            raise self._wrap(exc) from exc
        if not block.result():
            return []
        entries, _ = await self._read(stream_id, after, limit)
        return entries

    def _closed_event(self) -> asyncio.Event:
        if self._closed is None:
            self._closed = asyncio.Event()
            if self._is_closed:
                self._closed.set()
        return self._closed

    async def close(self) -> None:
        """Wake every waiter and, when the store owns its client (``from_url``), close the client."""
        self._is_closed = True
        self._closed_event().set()
        if self._committer is not None and not self._committer.done():
            await asyncio.wait({self._committer})
        if self._close_client:
            client: Any = self.client
            await client.aclose()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark an abandoned task's outcome as seen (no 'exception was never retrieved' warning)."""
    if not task.cancelled():
        task.exception()


def _pack(events: Sequence[NewEvent]) -> bytes:
    """Events as one argument: ``<type>\\xfe<data>`` each, joined by ``\\xff`` (bytes UTF-8 text never has)."""
    if not events:
        return b""
    text = "\udcff".join([f"{event or ''}\udcfe{data}" for event, data in events])
    packed = text.encode("utf-8", "surrogateescape")
    if packed.count(b"\xff") != len(events) - 1 or packed.count(b"\xfe") != len(events):
        # Some text held lone surrogates (not valid Unicode text): let a strict encode say which.
        for event, data in events:
            (event or "").encode("utf-8")
            data.encode("utf-8")
        raise ValueError("event text must be valid Unicode (no lone surrogates)")
    return packed


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


_STATUSES: Final[dict[str, Status]] = {
    "running": "running",
    "done": "done",
    "error": "error",
    "cancelled": "cancelled",
    "lost": "lost",
}


def _status(value: bytes | str) -> Status:
    return _STATUSES[_text(value)]
