"""Store calls retried while the store is unreachable (a Redis restart, a failover), with a growing delay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from ._logger import logger
from .exceptions import StoreUnavailable

__all__ = ["retry_store"]


T = TypeVar("T")
_RETRY_FIRST_DELAY: Final = 0.05  # seconds before the first retry while the store is unreachable; doubles to:
_RETRY_MAX_DELAY: Final = 1.0


async def retry_store(doing: str, call: Callable[[], Awaitable[T]], timeout: float, stream_id: str | None = None) -> T:
    """``await call()``, called again with a growing delay while it raises ``StoreUnavailable`` (a Redis restart),
    for up to ``timeout`` seconds; then the last ``StoreUnavailable`` propagates. Readers meanwhile wait."""
    deadline = time.monotonic() + timeout
    delay = _RETRY_FIRST_DELAY
    while True:
        try:
            return await call()
        except StoreUnavailable:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning(
                "store unreachable while %s; retrying in %.2f s (its readers wait for the next events)",
                doing,
                delay,
                extra={"stream_id": stream_id},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_DELAY)
