"""The benchmark scripts still run: each at a tiny size, producing one valid JSON document with its figures.

No timing is asserted here (benchmarks are not tests; the figures are for ``python -m benchmarks``); only that every
script runs to its end, its rows are all there, and the chart and the README table can be drawn from the output.
Slow (about a minute and a half in all): CI runs it on one interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .redis_servers import require_server_binary

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def _suite() -> tuple[dict[str, tuple[list[str], list[str], float]], dict[str, str]]:
    spec = importlib.util.spec_from_file_location("benchmarks_main", BENCHMARKS / "__main__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.SUITE), dict(module.SCRIPTS)


SUITE, SCRIPTS = _suite()
# resumable-sse 0.1.0 is installed from the package index into a virtual environment of its own: not in a test
ALTERNATIVES = ["--only", "aiohttp-sse", "sse-starlette", "memory", "redis", "resumable-stream"]
NEEDS = {"alternatives": ("sse_starlette", "uvicorn", "resumable_stream")}


def _run(name: str, out: Path) -> dict[str, object]:
    _full, quick, _timeout = SUITE[name]
    extra = ALTERNATIVES if name == "alternatives" else []
    command = [sys.executable, str(BENCHMARKS / f"{SCRIPTS.get(name, name)}.py"), "--json", *quick, *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    (out / f"{name}.json").write_text(json.dumps(document))
    return dict(document)


def _require_node() -> None:
    """node and npm for the rs-node row: a failure in CI (which installs them), a skip elsewhere."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{' and '.join(missing)} missing: the fleet's rs-node row needs them in CI")
        pytest.skip(f"{' and '.join(missing)} not installed (the fleet's rs-node row)")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", [name for name in SUITE if name != "fleet_peers"])  # (its own test below)
def test_benchmark_runs_and_prints_json(name: str, tmp_path: Path) -> None:
    require_server_binary()
    for module in NEEDS.get(name, ()):
        pytest.importorskip(module)
    document = _run(name, tmp_path)
    # fleet.py keeps the document it had before the suite (the runner adds these two)
    if SCRIPTS.get(name, name) != "fleet":
        assert document["benchmark"] == name
        assert "machine" in document
    results = document.get("rows") or document.get("results")
    assert results, document


@pytest.mark.timeout(300)
def test_storm_resumes_every_reader_on_the_other_process(tmp_path: Path) -> None:
    """The storm's smoke run: every reader of the stopped process resumed on the other one and got every token once,
    and every producer of the stopped process finished its answer through the grace period."""
    require_server_binary()
    document = _run("storm", tmp_path)
    (row,) = document["results"]
    streams = row["streams"]
    assert row["resumed"] == streams and row["failed"] == 0
    assert row["duplicates"] == 0 and row["gaps"] == 0
    assert row["ends"] == {"done": streams}
    assert row["a_exit"] == 0
    assert row["steady"]["n"] > 0 and row["during"]["n"] + row["after"]["n"] > 0


@pytest.mark.timeout(300)
def test_fleet_peers_rows_deliver_every_token(tmp_path: Path) -> None:
    """The fleet beside the peers: resumable-stream 0.2 (Python) and 2.x (Node, npm ci'd from the lock file) serve
    the same paced streams as the library's rows, and the same readers receive every token of every row, each
    stream ending with its done event."""
    require_server_binary()
    pytest.importorskip("resumable_stream")
    _require_node()
    document = _run("fleet_peers", tmp_path)
    rows = {row["row"]: row for row in document["results"]}
    assert list(rows) == ["baseline", "memory", "redis", "rs-python", "rs-node"]
    for name, row in rows.items():
        assert row["delivered"] == row["expected"] > 0, name
        assert row["end_types"] == {"done": row["streams"]}, name
        assert row["failed"] == row["lost"] == 0, name
        assert row["cpu_us_per_token"] > 0 and row["cpu_vs_baseline"] is not None, name
    assert rows["rs-node"]["redis_cpu_pct"] is not None  # its server touched the private redis-server


@pytest.mark.timeout(300)
def test_runner_and_chart(tmp_path: Path) -> None:
    require_server_binary()
    pytest.importorskip("matplotlib")
    command = [sys.executable, "-m", "benchmarks", "--quick", "--only", "first_event", "resume_depth"]
    result = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    first = json.loads((tmp_path / "first_event.json").read_text())
    assert first["command"].startswith("python benchmarks/first_event.py --json")
    png = tmp_path / "chart.png"
    plot = [sys.executable, str(BENCHMARKS / "plot.py"), "--results", str(tmp_path), "--png", str(png), "--table"]
    table = subprocess.run(plot, capture_output=True, text=True, timeout=120, check=True, cwd=ROOT).stdout
    assert png.stat().st_size > 0
    assert "| first event, memory |" in table
    assert "| resume depth, redis |" in table
