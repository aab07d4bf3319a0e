"""The ``retry:`` field spread per response (``retry_jitter``): the clients of a server that stops all at once (a
deploy, a crash) reconnect after different waits instead of in one burst. (Without it the field is exact: the wire
bytes of ``test_http.py``.)

Over real HTTP on both adapters (aiohttp, Starlette under uvicorn), like ``test_http.py``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from resumable_sse import MemoryStore, Streamer, resumable_handler
from resumable_sse.starlette import resumable_endpoint

from ._adapters import ADAPTERS, Harness, Route

RETRY = re.compile(rb"^retry: (\d+)\n", re.MULTILINE)


@pytest.fixture(params=ADAPTERS)
async def http(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    harness = Harness(request.param)
    yield harness
    await harness.close()


async def one_token(_request: web.Request) -> AsyncIterator[str]:
    yield "hi"


async def retry_values(http: Harness, responses: int, **options: float) -> list[int]:
    """The ``retry:`` value of each of ``responses`` responses (one line each, opening the first event)."""
    endpoint = http.endpoint(one_token, **options)
    client = await http.serve([Route("/stream/{stream_id}", endpoint)], Streamer(MemoryStore()))
    values = []
    for index in range(responses):
        body = await (await client.get(f"/stream/s{index}")).read()
        found = RETRY.findall(body)
        assert len(found) == 1 and body.startswith(b"retry: "), body
        values.append(int(found[0]))
    return values


async def test_jitter_spreads_retry_over_its_fraction_per_response(http: Harness) -> None:
    values = await retry_values(http, 40, retry=2000, retry_jitter=0.5)
    assert all(1000 <= value <= 2000 for value in values), values
    # 40 uniform draws over 1,000 ms: equal ones, or all in one half, would be a one in 10^11 chance
    assert len(set(values)) > 20, values
    assert min(values) < 1500 < max(values), values


async def test_full_jitter_may_reach_zero_but_never_goes_negative(http: Harness) -> None:
    values = await retry_values(http, 20, retry=10, retry_jitter=1.0)
    assert all(0 <= value <= 10 for value in values), values


@pytest.mark.parametrize("jitter", [-0.1, 1.5])
def test_a_jitter_outside_0_to_1_is_refused_when_the_endpoint_is_made(jitter: float) -> None:
    with pytest.raises(ValueError, match="retry_jitter must be between 0 and 1"):
        resumable_handler(one_token, retry_jitter=jitter)
    with pytest.raises(ValueError, match="retry_jitter must be between 0 and 1"):
        resumable_endpoint(one_token, retry_jitter=jitter)  # type: ignore[arg-type]
