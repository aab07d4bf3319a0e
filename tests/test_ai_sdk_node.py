"""The AI SDK's own clients (npm ``ai``, its ``DefaultChatTransport`` and ``readUIMessageStream``) and the
transport of ``resumable-sse.js``, run under Node against the aiohttp and FastAPI servers: the message each builds
is the model's answer exactly, after a cut and a resume, with one producer run per answer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from ._live_server import FaultProxy
from .ai_sdk_npm import HELPER, ai_sdk_packages, tool
from .ai_sdk_server import FRAMEWORKS, Model, chat_server

__all__ = ["ai_sdk_packages"]  # (the session fixture, imported to be found here)

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


async def run_clients(packages: Path, framework: str, scenario: str, model: Model) -> dict[str, Any]:
    """Run a scenario of ``clients.mjs`` against the chat server, through a proxy that cuts every connection when
    the script prints ``CUT``; the scenario's result."""
    async with chat_server(framework, model) as (base, _streamer), FaultProxy(int(base.rsplit(":", 1)[1])) as proxy:
        process = await asyncio.create_subprocess_exec(
            tool("node"),
            str(packages / "clients.mjs"),
            scenario,
            f"http://127.0.0.1:{proxy.port}",
            str(HELPER),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        out, err = process.stdout, process.stderr
        lines: list[bytes] = []
        cuts = 0

        async def read() -> bytes:
            nonlocal cuts
            while line := await out.readline():
                if line == b"CUT\n":
                    proxy.cut()
                    cuts += 1
                else:
                    lines.append(line)
            await process.wait()
            return await err.read()

        errors = await asyncio.wait_for(read(), 90)
    assert process.returncode == 0, errors.decode()
    result: dict[str, Any] = json.loads(b"".join(lines))
    result["cuts"], result["connections"] = cuts, proxy.connections
    return result


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_default_transport_resumes_a_cut_answer_by_replay_and_gets_204_after_the_end(
    ai_sdk_packages: Path, framework: str
) -> None:
    model = Model(delay=0.005)
    result = await run_clients(ai_sdk_packages, framework, "default", model)
    assert result["expected"].startswith(result["before"]) and result["before"]
    # One assistant message, its text the model's whole answer, from a replay of the running answer.
    assert result["resumed"] == {"ids": ["d1.1"], "role": "assistant", "text": result["expected"]}
    assert result["afterEndIsNull"] is True
    assert result["whole"] == {"ids": ["d2.1"], "role": "assistant", "text": result["expectedWhole"]}
    assert model.runs == {"d1": 1, "d2": 1}


async def test_two_clients_of_one_chat_share_one_run(ai_sdk_packages: Path, framework: str) -> None:
    model = Model(delay=0.005)
    result = await run_clients(ai_sdk_packages, framework, "two-clients", model)
    want = {"ids": ["t1.1"], "role": "assistant", "text": result["expected"]}
    assert result["a"] == want
    assert result["b"] == want
    assert model.runs == {"t1": 1}


async def test_the_helper_transport_resumes_exactly_and_sends_only_the_rest(
    ai_sdk_packages: Path, framework: str
) -> None:
    model = Model(delay=0.01)
    result = await run_clients(ai_sdk_packages, framework, "helper", model)
    assert result["resumeStreamIsReplay"] is True  # useChat rebuilds from the remembered chunks and the rest
    assert result["lastEventId"]
    whole = {"ids": ["h1.1"], "role": "assistant", "text": result["expected"]}
    assert result["resumed"] == whole
    assert result["replayed"] == whole
    assert result["afterEndIsNull"] is True
    # Cut at 90%: the resume receives the last tenth (and the tokens made meanwhile), the replay all of it.
    assert result["resumeBytes"] < result["replayBytes"] / 4, (result["resumeBytes"], result["replayBytes"])
    assert model.runs == {"h1": 1}
    print(f"\n{framework}: resume at 90% received {result['resumeBytes']} bytes, a replay {result['replayBytes']}")


async def test_the_helper_transport_heals_a_dropped_connection_by_itself(ai_sdk_packages: Path, framework: str) -> None:
    model = Model(delay=0.005)
    result = await run_clients(ai_sdk_packages, framework, "drop", model)
    # The AI SDK read one answer, without an error, its text the model's exactly (no token lost or repeated).
    assert result["message"] == {"ids": ["x1.1"], "role": "assistant", "text": result["expected"]}
    assert result["deltas"] >= 50
    assert result["cuts"] == 1 and result["connections"] >= 2  # cut mid-answer, and asked again
    assert model.runs == {"x1": 1}
