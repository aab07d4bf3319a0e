"""The example servers listen with a queue long enough for a deploy's reconnect storm.

When a process of a fleet stops, every one of its clients reconnects to the others at once; connections that find
a process's listen queue full are dropped and retried by the kernel a second or more later (``benchmarks/storm.py``
measures the storm). The examples set the backlog ``docs/deployment.md`` recommends; the kernel caps it at
``net.core.somaxconn``, and ``ss`` shows the queue's length for a listening socket (its Send-Q).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECOMMENDED = 4096


def _somaxconn() -> int:
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except OSError:
        pytest.skip("Linux only: /proc/sys/net/core/somaxconn")


def _listen_queue(port: int) -> int:
    """The length of the listen queue of the socket listening on ``port`` (Send-Q of ``ss -ltn``)."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("ss (iproute2) is not installed")
    out = subprocess.run([ss, "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    lengths = {int(line.split()[2]) for line in out.splitlines() if line.strip()}
    assert len(lengths) == 1, out
    return lengths.pop()


@pytest.mark.parametrize("example", ["aiohttp_chat", "fastapi_chat"])
def test_the_example_server_listens_with_the_recommended_backlog(example: str) -> None:
    if example == "fastapi_chat":
        pytest.importorskip("uvicorn")
    expected = min(RECOMMENDED, _somaxconn())
    process = subprocess.Popen(
        [sys.executable, "-m", f"examples.{example}", "--port", "0", "--speed", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert found, line
        assert _listen_queue(int(found.group(1))) == expected
    finally:
        process.terminate()
        process.communicate(timeout=20)
