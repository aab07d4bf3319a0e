"""The longest argument Redis takes (``proto-max-bulk-len``), and appends kept within it.

Redis drops the connection of a client that sends a longer argument. To the store that would look like an outage,
retried for ``store_retry_timeout`` and then ``lost``; an append that can never succeed must instead be refused at
once, so its stream ends ``error`` saying why. So the limit is asked of Redis (``CONFIG GET``) before the first
append, and again after an append met a broken connection (the limit, or the Redis, may have changed); every append
is split to fit it (:func:`~._redis_format.split`), and one whose event alone cannot fit is refused with
:class:`~resumable_sse.EventTooLarge`, naming the limit.

Where ``CONFIG`` is refused (disabled, renamed, or not allowed to the user), Redis's default (512 MiB) is assumed
until Redis answers an append with "invalid bulk length", or drops the connection while an argument longer than
1 MiB is on its way (that answer, when Redis closes before it is read): from then on every argument is kept within
1 MiB, the least any Redis takes, and the appends of that call fail, refused when an event of theirs cannot fit
1 MiB, else as unreachable (the producer retries them, split).
"""

from __future__ import annotations

from typing import Any

from .._logger import logger
from ..exceptions import EventTooLarge, StoreUnavailable
from ._redis_format import DEFAULT_BULK_LEN, LEAST_BULK_LEN, Pending, split

__all__ = ["BulkLimit"]


class BulkLimit:
    """What one store knows of its Redis's longest argument."""

    def __init__(self, unavailable: tuple[type[BaseException], ...], refused: type[BaseException]) -> None:
        self.unavailable = unavailable  # redis-py's connection failures
        self.refused = refused  # redis-py's error replies
        self.value: int | None = None  # None: ask before the next append
        self.assumed = False  # CONFIG GET was refused: the value is assumed

    async def learn(self, client: Any, cluster: bool) -> int:
        """The limit, asked of Redis if it is not known: ``proto-max-bulk-len`` (on a cluster the least of its
        primaries'). Raises :class:`StoreUnavailable` when Redis cannot be reached."""
        if self.value is not None:
            return self.value
        options: dict[str, Any] = {}
        if cluster:
            from redis.asyncio.cluster import RedisCluster

            options["target_nodes"] = RedisCluster.PRIMARIES
        try:
            reply = await client.config_get("proto-max-bulk-len", **options)
        except self.unavailable as exc:
            raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc
        except self.refused as exc:
            if not self.assumed:
                logger.info(
                    "CONFIG GET proto-max-bulk-len was refused (%s): Redis's default, %d bytes, is assumed",
                    exc,
                    DEFAULT_BULK_LEN,
                    extra={"stream_id": None},
                )
                self.assumed = True
            self.value = DEFAULT_BULK_LEN
            return self.value
        found = [int(number) for value in (reply.values() if cluster else [reply]) for number in value.values()]
        self.assumed = False
        self.value = min(found) if found else DEFAULT_BULK_LEN
        return self.value

    def fit(self, group: list[Pending], limit: int) -> list[Pending]:
        """The appends of ``group`` that can be sent, each split to fit ``limit``; the others are refused (their
        futures hold :class:`EventTooLarge`)."""
        sendable = []
        for item in group:
            try:
                item.args = split(item, limit)
            except EventTooLarge as exc:
                item.future.set_exception(exc)
            else:
                sendable.append(item)
        return sendable

    def failed(self, error: BaseException, items: list[Pending]) -> None:
        """A call of appends failed with ``error``: settle each append not yet settled. A broken connection makes
        the limit be asked again; Redis refusing an argument as too long (only where the limit is assumed: a known
        one is never exceeded) makes it 1 MiB from now on, see the module docstring."""
        too_long = isinstance(error, self.refused) and "invalid bulk length" in str(error)
        if isinstance(error, StoreUnavailable):
            # Redis may close the connection before its refusal is read (the client is still writing the argument):
            # where the limit is assumed, a break while an argument over the least limit was sent is that refusal.
            too_long = self.assumed and any(len(arg) > LEAST_BULK_LEN for item in items for arg in item.args)
            if not too_long:
                self.value = None
        if too_long:
            self.value = LEAST_BULK_LEN
        for item in items:
            if item.future.done():
                continue
            if not too_long:
                item.future.set_exception(error)
                continue
            try:
                split(item, LEAST_BULK_LEN)
            except EventTooLarge as exc:
                why = f"{exc} (assumed: CONFIG GET is not allowed, and Redis refused a longer one)"
                item.future.set_exception(EventTooLarge(why))
            else:
                item.future.set_exception(StoreUnavailable(f"Redis refused an argument as too long: {error}"))
