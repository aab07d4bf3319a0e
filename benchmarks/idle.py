"""Idle: many quiet SSE connections in one process, heartbeats on: RSS per connection and idle CPU.

Runs ``fleet.py --idle`` (see there for how: a server process, one reader process holding every connection, each
stream running but quiet after its first token; the server's RSS once all are connected minus its RSS fresh, per
connection; CPU over a quiet window in which every connection sends one heartbeat) twice, in the same run:
  own      one quiet stream per connection: plain aiohttp-sse (baseline), memory and Redis stores
  shared   every connection reads one quiet stream (memory store)

Figure: <= 20 KB RSS per connection on the memory store (own streams, and shared), plain aiohttp-sse beside it.

    python benchmarks/idle.py [--streams 10000] [--window 15] [--only baseline memory redis] [--json]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import _bench

FLEET = str(Path(__file__).resolve().parent / "fleet.py")
TARGET_KB = 20.0


def fleet_idle(streams: int, window: float, rows: list[str], shared: bool) -> list[dict[str, Any]]:
    command = [sys.executable, FLEET, "--idle", "--json", "--streams", str(streams), "--window", str(window)]
    command += ["--only", *rows, *(["--shared"] if shared else [])]
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, timeout=1800)
    return list(json.loads(out.stdout)["results"])


def main(args: Any) -> None:
    out = _bench.Output(args.json)
    rows = args.only or ["baseline", "memory", "redis"]
    out.print(f"idle: {args.streams} quiet connections in one process, heartbeats every 15 s, {args.window:g} s window")
    runs = [("own", fleet_idle(args.streams, args.window, rows, shared=False))]
    if "memory" in rows:
        runs.append(("shared", fleet_idle(args.streams, args.window, ["memory"], shared=True)))
    out.print(
        f"{'row':16} {'connected':>10} {'KB/conn':>8} {'idle CPU':>9} {'pings':>7} {'vs aiohttp-sse':>15} {'target':>7}"
    )
    document: dict[str, Any] = {"streams": args.streams, "window": args.window, "target_kb": TARGET_KB, "rows": {}}
    base = next((r for _, results in runs for r in results if r["row"] == "baseline"), None)
    for mode, results in runs:
        for r in results:
            name = r["row"] if mode == "own" or r["row"] == "baseline" else f"{r['row']} ({mode})"
            kb = r["rss_per_connection_kb"] * 1.024  # KiB to kB
            met = None if r["row"] == "baseline" else kb <= TARGET_KB
            ratio = kb / (base["rss_per_connection_kb"] * 1.024) if base else None
            document["rows"][name] = {**r, "kb_per_connection": kb, "vs_baseline": ratio, "met": met}
            out.print(
                f"{name:16} {r['connected']:>10} {kb:8.1f} {r['server_cpu_pct']:8.1f}% {r['pings']:>7} "
                f"{'-' if ratio is None else f'{ratio:.2f}x':>15} {_bench.verdict(met):>7}"
            )
    out.done("idle", document)


if __name__ == "__main__":
    parser = _bench.parser(__doc__)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--only", nargs="+", choices=("baseline", "memory", "redis"))
    main(parser.parse_args())
