"""Against the alternatives, in one run: the same producer and the same client behind each library.

Rows (each a server process of its own, ``_alt_server.py``; the Redis rows share one private redis-server):
  aiohttp-sse         plain aiohttp-sse: ``send`` per token (with an id), no log
  sse-starlette       plain sse-starlette ``EventSourceResponse`` on uvicorn, no log
  memory, redis       this library (``resumable_handler``) on its memory and Redis stores
  legacy-memory,      resumable-sse 0.1.0 from PyPI, this package's first release (another API, which 0.2 still
  legacy-redis        runs, deprecated, as resumable_sse.factory), served as its README shows (sse-starlette on
                      uvicorn); it runs from a virtual environment this script makes (``--legacy-venv``, default
                      ~/.cache/resumable-sse-bench/legacy-0.1.0)
  resumable-stream    resumable-stream 0.2.0 from PyPI (Redis pub/sub; resumes by characters of the body read)

Figures per row:
  events/s           one stream of ``--events`` tokens as fast as the producer goes, median of ``--repeat``
  first event        median (and p99) of ``--samples`` new streams: request sent to the first event
  resume mid-stream  a reader takes 30 of 100 tokens paced 10 ms apart, disconnects and resumes at once (with
                     Last-Event-ID, or resumable-stream's character count): exact = every token once, in order
  resume after end   the same, resuming only after the producer has finished

    python benchmarks/alternatives.py [--events 20000] [--samples 30] [--only ROW ...] [--json]
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any

import _bench

HERE = Path(__file__).resolve().parent
ROWS = ("aiohttp-sse", "sse-starlette", "memory", "redis", "legacy-memory", "legacy-redis", "resumable-stream")
LABELS = {
    "aiohttp-sse": "aiohttp-sse (plain)",
    "sse-starlette": "sse-starlette (plain)",
    "memory": "resumable-sse, memory",
    "redis": "resumable-sse, Redis",
    "legacy-memory": "resumable-sse 0.1.0, memory",
    "legacy-redis": "resumable-sse 0.1.0, Redis",
    "resumable-stream": "resumable-stream 0.2.0, Redis",
}
REDIS_ROWS = {"redis", "legacy-redis", "resumable-stream"}
LEGACY_REQUIREMENTS = ["resumable-sse==0.1.0", "sse-starlette>=2", "uvicorn>=0.30", "starlette>=0.37", "redis>=6.2"]
TERMINALS = ("done", "end", "error", "lost", "cancelled")
RESUME_TOKENS, RESUME_AT, RESUME_PACE = 100, 30, 10


def legacy_python(where: Path) -> str:
    """The interpreter of the 0.1.0 virtual environment, made (once) with pip from PyPI."""
    python = where / "bin" / "python"
    marker = where / "installed.txt"
    if not marker.exists() or marker.read_text() != "\n".join(LEGACY_REQUIREMENTS):
        venv.EnvBuilder(with_pip=True, clear=True).create(where)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *LEGACY_REQUIREMENTS], check=True)
        marker.write_text("\n".join(LEGACY_REQUIREMENTS))
    return str(python)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(row: str, python: str, redis_url: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": ""} if row.startswith("legacy") else dict(os.environ)
    process = subprocess.Popen(
        [python, str(HERE / "_alt_server.py"), row, str(port), redis_url],
        env=env,
        cwd="/",
        stdout=subprocess.DEVNULL,
        stderr=None if os.environ.get("BENCH_VERBOSE") else subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise SystemExit(f"{row}: the server did not start") from None
            time.sleep(0.05)


def read_events(port: int, path: str, headers: dict[str, str], stop_after: int | None = None) -> dict[str, Any]:
    """Parse one SSE response (de-chunked by http.client): its events, and the characters of the body read (what
    resumable-stream resumes by); stop after ``stop_after`` data events, at a terminal event, or at the end."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path, headers={"Accept": "text/event-stream", **headers})
    response = connection.getresponse()
    events: list[dict[str, str]] = []
    chars = 0
    if response.status == 200:
        current: dict[str, str] = {}
        while True:
            line = response.readline()
            if not line:
                break
            chars += len(line)
            text = line.decode().rstrip("\r\n")
            if not text:
                if "data" in current:
                    events.append(current)
                    if current.get("event") in TERMINALS:
                        break
                    if stop_after is not None and sum(1 for e in events if "event" not in e) >= stop_after:
                        break
                current = {}
                continue
            field, _, value = text.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                current["data"] = current["data"] + "\n" + value if "data" in current else value
            elif field in ("id", "event") and not (field == "event" and value == "message"):
                current[field] = value
    connection.close()
    return {"status": response.status, "events": events, "chars": chars}


def resume_exact(row: str, port: int, after_end: bool) -> dict[str, Any]:
    path = f"/s/resume-{'end' if after_end else 'mid'}-{time.monotonic_ns()}?n={RESUME_TOKENS}&pace={RESUME_PACE}"
    first = read_events(port, path, {}, stop_after=RESUME_AT)
    got = [e["data"] for e in first["events"] if "event" not in e]
    if after_end:
        time.sleep(RESUME_TOKENS * RESUME_PACE / 1000 + 0.5)
    if row == "resumable-stream":
        second = read_events(port, f"{path}&skip={first['chars']}", {})
    else:
        last_id = next((e["id"] for e in reversed(first["events"]) if "id" in e), "")
        second = read_events(port, path, {"Last-Event-ID": last_id} if last_id else {})
    rest = [e["data"] for e in second["events"] if "event" not in e]
    ended = bool(second["events"]) and second["events"][-1].get("event") in TERMINALS
    expected = [f"t{index}" for index in range(1, RESUME_TOKENS + 1)]
    whole = got + rest
    exact = whole == expected and ended
    if exact:
        detail = "exact"
    elif second["status"] != 200:
        detail = f"HTTP {second['status']} on resume"
    else:
        missing = len(set(expected) - set(whole))
        duplicates = len(whole) - len(set(whole))
        detail = f"{duplicates} duplicated, {missing} missing" + ("" if ended else ", no terminal event")
    return {"exact": exact, "detail": detail}


def measure(row: str, port: int, args: Any) -> dict[str, Any]:
    rates = []
    for run in range(args.repeat):
        result = _bench.read_stream(f"http://127.0.0.1:{port}/s/rate-{run}-{time.monotonic_ns()}?n={args.events}")
        if result["events"] < args.events:
            raise SystemExit(f"{row}: {result['events']} events of {args.events}")
        rates.append(args.events / result["seconds"])
    paths = [f"/s/first-{n}-{time.monotonic_ns()}?n=5" for n in range(args.samples)]
    firsts = sorted(_bench.first_events(port, paths, terminals=(b"event: done", b"event: end")))
    return {
        "events_per_s": _bench.median(rates),
        "first_event_ms": _bench.median(firsts),
        "first_event_p99_ms": _bench.percentile(firsts, 0.99),
        "resume_mid": resume_exact(row, port, after_end=False),
        "resume_after_end": resume_exact(row, port, after_end=True),
    }


def main(args: Any) -> None:
    out = _bench.Output(args.json)
    rows = [row for row in ROWS if not args.only or row in args.only]
    redis = _bench.start_redis() if REDIS_ROWS & set(rows) else None
    results: dict[str, dict[str, Any]] = {}
    out.print(f"alternatives: {args.events} tokens per throughput run, {args.samples} first-event samples per row")
    try:
        legacy = legacy_python(Path(args.legacy_venv).expanduser()) if any(r.startswith("legacy") for r in rows) else ""
        for row in rows:
            python = legacy if row.startswith("legacy") else sys.executable
            if redis is not None:
                redis_flush(redis.port)
            out.print(f"  {row} ...")
            process, port = start_server(row, python, redis.url if redis is not None else "")
            try:
                results[row] = measure(row, port, args)
            finally:
                process.terminate()
                process.wait(10)
    finally:
        if redis is not None:
            redis.close()
    out.print(f"{'row':31} {'events/s':>10} {'first ms':>9} {'p99 ms':>8}  {'resume mid-stream':24} resume after end")
    for row in rows:
        r = results[row]
        out.print(
            f"{LABELS[row]:31} {r['events_per_s']:10,.0f} {r['first_event_ms']:9.2f} {r['first_event_p99_ms']:8.2f}  "
            f"{r['resume_mid']['detail']:24} {r['resume_after_end']['detail']}"
        )
    document = {"events": args.events, "samples": args.samples, "labels": LABELS, "rows": results}
    out.done("alternatives", document)


def redis_flush(port: int) -> None:
    import redis

    with redis.Redis(port=port) as client:
        client.flushall()


if __name__ == "__main__":
    parser = _bench.parser(__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--only", nargs="+", choices=ROWS)
    parser.add_argument("--legacy-venv", default="~/.cache/resumable-sse-bench/legacy-0.1.0")
    main(parser.parse_args())
