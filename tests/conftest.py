"""Shared fixtures: the ``store`` fixture runs the event-log contract suite against every store."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from resumable_sse import EventLog, MemoryStore

from .hypothesis_profiles import register as register_hypothesis_profiles

register_hypothesis_profiles()  # before the plugin loads a --hypothesis-profile named on the command line

StoreFactory = Callable[..., Awaitable[EventLog]]


async def _memory(**options: Any) -> EventLog:
    return MemoryStore(**options)


async def _redis(**options: Any) -> EventLog:
    from resumable_sse.stores.redis import RedisStore

    from .redis_servers import shared_server, unique_prefix

    return RedisStore.from_url(shared_server().url, key_prefix=unique_prefix(), **options)


async def _redis_cluster(**options: Any) -> EventLog:
    from resumable_sse.stores.redis import RedisStore

    from .redis_servers import shared_cluster, unique_prefix

    # decode_responses=True here, False on the single node: the contract holds either way.
    url = shared_cluster().url
    return RedisStore.from_url(url, cluster=True, decode_responses=True, key_prefix=unique_prefix(), **options)


# name -> factory(**store options) -> a fresh, empty store. The Redis store adds its entries here.
STORE_FACTORIES: dict[str, StoreFactory] = {"memory": _memory, "redis": _redis, "redis-cluster": _redis_cluster}
STORE_MARKS: dict[str, Any] = {"redis": pytest.mark.redis, "redis-cluster": pytest.mark.redis}


@pytest.fixture(params=[pytest.param(name, marks=STORE_MARKS.get(name, ())) for name in sorted(STORE_FACTORIES)])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """A factory for fresh stores of one kind; every store it made is closed after the test."""
    made: list[EventLog] = []

    async def make(**options: Any) -> EventLog:
        store = await STORE_FACTORIES[request.param](**options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> EventLog:
    """A fresh store with default limits, of each kind in turn."""
    return await make_store()


@pytest.fixture
async def tls_server(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> str:
    """``https://127.0.0.1:PORT`` of the resumable test app behind TLS, with a certificate no client trusts."""
    import trustme

    from ._live_server import resumable_app

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1", "localhost").configure_cert(context)
    server = await aiohttp_server(resumable_app(), ssl=context)
    return f"https://127.0.0.1:{server.port}"
