"""Without the optional ``redis`` package: the library imports and works, and the Redis store says how to get it.

Each check runs in a fresh interpreter where ``import redis`` fails, as on a machine that installed plain
``resumable-sse`` without the ``redis`` extra.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# sys.modules[name] = None makes every later `import name` raise ImportError, exactly like a missing package.
_NO_REDIS = "import sys\nfor _name in ('redis', 'redis.asyncio', 'redis.exceptions'):\n    sys.modules[_name] = None\n"


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _NO_REDIS + textwrap.dedent(code), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_library_imports_and_streams_without_redis() -> None:
    result = _run(
        """
        import asyncio
        import resumable_sse
        from resumable_sse import MemoryStore, Streamer, from_url

        assert "redis" not in {name for name, module in sys.modules.items() if module is not None}

        async def main():
            async with Streamer(from_url("memory://")) as streamer:
                async def produce():
                    yield "a"
                    yield "b"
                producer = await streamer.start("s", produce)
                print(await producer.wait(), [entry.data for entry in [e async for e in await streamer.subscribe("s")]])

        asyncio.run(main())
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == """done ['a', 'b', '{"state":"done"}']"""


def test_the_redis_store_without_redis_says_how_to_install_it() -> None:
    result = _run(
        """
        import resumable_sse
        from resumable_sse import from_url
        for make in (lambda: resumable_sse.RedisStore.from_url("redis://127.0.0.1:1/0"),
                     lambda: from_url("redis://127.0.0.1:1/0")):
            try:
                make()
            except ImportError as exc:
                print(exc)
            else:
                raise SystemExit("no ImportError")
        """
    )
    assert result.returncode == 0, result.stderr
    hint = "RedisStore needs the redis package: pip install resumable-sse[redis]"
    assert result.stdout.splitlines() == [hint, hint]


def test_the_chat_example_with_redis_but_without_the_package_fails_clearly() -> None:
    result = _run(
        """
        import runpy
        runpy.run_module("examples.aiohttp_chat", run_name="__main__", alter_sys=True)
        """,
        "--redis",
        "redis://127.0.0.1:1/0",
    )
    assert result.returncode != 0
    assert "--redis needs the Redis store" in result.stderr
    assert "pip install 'resumable-sse[redis]'" in result.stderr
    assert "Traceback" not in result.stderr
