"""Shared fixtures: the ``store`` fixture runs the event-log contract suite against every store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from resumable_sse import EventLog, MemoryStore

StoreFactory = Callable[..., Awaitable[EventLog]]


async def _memory(**options: Any) -> EventLog:
    return MemoryStore(**options)


# name -> factory(**store options) -> a fresh, empty store. The Redis store adds its entries here.
STORE_FACTORIES: dict[str, StoreFactory] = {"memory": _memory}


@pytest.fixture(params=sorted(STORE_FACTORIES))
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
