"""Run every benchmark in bounded time and keep each one's JSON: ``python -m benchmarks``.

Each script runs as a child process with ``--json`` at the sizes below (``--quick``: tiny sizes, for a smoke test
that the suite still runs and still produces valid JSON), with a timeout of its own and an overall deadline
(``--budget`` seconds, default 1200: the suite takes about 20 minutes; a script that would start past the deadline
is skipped and said so). Results go to ``--out`` (default ``benchmarks/results``), one ``NAME.json`` each, and
``--plot`` draws the chart from them (``benchmarks/plot.py``, the ``bench`` extra).

    python -m benchmarks [--quick] [--only ceiling first_event ...] [--out DIR] [--budget 1200] [--plot]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name: (arguments at full size, arguments at --quick size, timeout in seconds at full size)
SUITE: dict[str, tuple[list[str], list[str], float]] = {
    "ceiling": (["--events", "100000", "--rounds", "5"], ["--events", "2000", "--rounds", "1"], 180),
    "first_event": (["--samples", "300"], ["--samples", "6", "--rounds", "1"], 120),
    "resume_depth": (["--events", "200000", "--samples", "30"], ["--events", "2000", "--samples", "2"], 150),
    "readers": (["--readers", "10000", "--events", "200"], ["--readers", "20", "--events", "20"], 180),
    "fleet": (
        # 200 tokens (10 s at 20 tokens/s, fleet.py's default): a shorter run puts one full collection of the
        # garbage collector on twice the share of the tokens, and the p99 then measures that one pause.
        ["--streams", "250", "500", "750", "1000", "1250", "1500", "--tokens", "200"],
        ["--streams", "10", "--tokens", "10"],
        720,
    ),
    "idle": (["--streams", "10000", "--window", "15"], ["--streams", "20", "--window", "1"], 300),
    "scale_out": (["--streams", "200", "--tokens", "100"], ["--streams", "10", "--tokens", "10"], 150),
    # One stream of 3,200 x 64 KiB events; the trailing row's 100 readers read a stream of 800 of them.
    "window": (
        ["--events", "3200", "--readers", "100", "--trailing-events", "800"],
        ["--events", "40", "--size", "16", "--readers", "3", "--trailing-events", "40"],
        300,
    ),
    "alternatives": (["--events", "20000"], ["--events", "200", "--samples", "3", "--repeat", "1"], 300),
    # The same workload on servers whose garbage collector is tuned (see fleet.py): what the defaults' full
    # collections cost, and what a deployment that tunes them gets.
    "fleet_gc": (
        ["--gc-threshold", "20000", "50", "50", "--streams", "750", "1000", "1250", "1500", "--tokens", "200"],
        ["--gc-threshold", "20000", "50", "50", "--streams", "10", "--tokens", "10"],
        540,
    ),
    # The same workload beside the peers (resumable-stream 0.2 on Python, 2.x on Node; issue 26's table): the rs-node
    # row needs node and npm (it runs npm ci in benchmarks/rs_node when its packages are missing).
    "fleet_peers": (["--peers", "--streams", "500", "1000"], ["--peers", "--streams", "10", "--tokens", "10"], 420),
    # A deploy's reconnect storm (issue 26's sizes; 5,000 takes too long for the suite's budget on two cores).
    "storm": (["--streams", "1000", "2000"], ["--streams", "20", "--tokens", "120", "--steady", "1"], 240),
}


# Suite entries that run a script of another name (with other arguments).
SCRIPTS: dict[str, str] = {"fleet_gc": "fleet", "fleet_peers": "fleet"}


def machine() -> dict[str, object]:
    sys.path.insert(0, str(HERE))
    import _bench

    return _bench.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that every script runs")
    parser.add_argument("--only", nargs="+", choices=list(SUITE))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--budget", type=float, default=1200.0, help="seconds; no script starts past it")
    parser.add_argument("--plot", action="store_true", help="draw the chart from the results (needs matplotlib)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    failed: list[str] = []
    for name in args.only or list(SUITE):
        full, quick, timeout = SUITE[name]
        left = deadline - time.monotonic()
        if left <= 0:
            print(f"{name}: skipped, the time budget is spent", file=sys.stderr)
            failed.append(name)
            continue
        script = HERE / f"{SCRIPTS.get(name, name)}.py"
        command = [sys.executable, str(script), "--json", *(quick if args.quick else full)]
        print(f"== {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            result = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=min(timeout, left))
        except subprocess.TimeoutExpired:
            print(f"{name}: timed out", file=sys.stderr)
            failed.append(name)
            continue
        if result.returncode != 0:
            print(f"{name}: exit code {result.returncode}", file=sys.stderr)
            failed.append(name)
            continue
        document = json.loads(result.stdout)
        document.setdefault("benchmark", name)
        document.setdefault("machine", machine())
        document["command"] = "python " + " ".join(["benchmarks/" + Path(command[1]).name, *command[2:]])
        document["seconds"] = time.monotonic() - started
        (out / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")
    if args.plot:
        subprocess.run([sys.executable, str(HERE / "plot.py"), "--results", str(out)], check=True)
    if failed:
        print(f"not measured: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
