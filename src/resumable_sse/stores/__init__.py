"""Event log stores: :class:`MemoryStore` (embedded) and ``RedisStore`` (shared, with the ``redis`` extra).

:func:`from_url` builds a store from a URL: ``memory://`` for a memory store, ``redis://``, ``rediss://`` or
``unix://`` for a Redis store.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .._log import EventLog
from .memory import MemoryStore

__all__ = ["MemoryStore", "from_url"]


def from_url(url: str, **options: Any) -> EventLog:
    """A store for ``url``; ``options`` go to the store's constructor (e.g. ``max_events``, ``ttl``)."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryStore(**options)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisStore  # type: ignore[import-not-found,unused-ignore]

        store: EventLog = RedisStore.from_url(url, **options)
        return store
    raise ValueError(f"no store for URL scheme {scheme!r}: use memory://, redis://, rediss:// or unix://")
