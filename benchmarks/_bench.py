"""What the benchmark scripts share: private Redis servers, process figures from /proc, the machine, JSON output,
and a blocking SSE reader that is never the bottleneck.

The scripts run as files (``python benchmarks/ceiling.py``), so this module is imported as ``_bench`` from the
script's own directory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
TESTS = str(ROOT / "tests")  # tests/redis_servers.py starts private servers on free ports (never 6379)
TICKS = os.sysconf("SC_CLK_TCK")
# Commands Redis counts that are the benchmark's own bookkeeping, not the library's work.
IGNORED_COMMANDS = {
    "cmdstat_info",
    "cmdstat_config|resetstat",
    "cmdstat_config",
    "cmdstat_client|setinfo",
    "cmdstat_hello",
    "cmdstat_flushall",
    "cmdstat_cluster|info",
    "cmdstat_cluster|slots",
    "cmdstat_cluster|shards",
    "cmdstat_command|docs",
    "cmdstat_ping",
}


async def serve(app: Any) -> tuple[Any, int]:
    """Serve the aiohttp ``app`` on a free port of 127.0.0.1: its runner (to clean up) and the port. (aiohttp is
    imported here: other virtual environments of the alternatives' rows import this module without it.)"""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def percentile(ordered: Sequence[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def machine() -> dict[str, Any]:
    """Where and when the figures were taken: CPU model and count, load average at the time, Python, UTC date."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "load": [round(value, 2) for value in os.getloadavg()],
        "python": sys.version.split()[0],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def parser(doc: str | None) -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--json", action="store_true", help="every figure as one JSON document on stdout")
    return result


class Output:
    """The table goes to stdout, or to stderr under ``--json`` (stdout then carries the one JSON document)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.table = sys.stderr if as_json else sys.stdout

    def print(self, text: str = "") -> None:
        print(text, file=self.table, flush=True)

    def done(self, benchmark: str, document: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps({"benchmark": benchmark, "machine": machine(), **document}, indent=2))


def verdict(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "MISSED")


# -- Redis --------------------------------------------------------------------------------------------------------


def redis_binary() -> str:
    sys.path.insert(0, TESTS)
    from redis_servers import find_server_binary

    binary = find_server_binary()
    if binary is None:
        raise SystemExit("this row needs a redis-server binary (or RESUMABLE_SSE_REDIS_SERVER); use --only to skip it")
    return binary


def start_redis(cpu: int | None = None) -> Any:
    """A private redis-server on a free port (tests/redis_servers.RedisServer); pinned to ``cpu`` when given."""
    sys.path.insert(0, TESTS)
    from redis_servers import RedisServer

    server = RedisServer(redis_binary()).start()
    if cpu is not None:
        pin(server.pid, cpu)
    return server


def start_cluster() -> Any:
    """A private 3-node Redis Cluster on free ports (tests/redis_servers.RedisCluster)."""
    sys.path.insert(0, TESTS)
    from redis_servers import RedisCluster

    return RedisCluster(redis_binary()).start()


def pin(pid: int, cpu: int) -> None:
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, capture_output=True)


def redis_commands(ports: Sequence[int], reset: bool = False) -> int:
    """Commands the servers ran (INFO commandstats, commands inside Lua scripts included), or reset the counts."""
    import redis

    total = 0
    for port in ports:
        with redis.Redis(port=port, socket_timeout=10) as client:
            if reset:
                client.config_resetstat()
                continue
            stats = client.info("commandstats")
            total += sum(stat["calls"] for name, stat in stats.items() if name not in IGNORED_COMMANDS)
    return total


# -- a blocking reader --------------------------------------------------------------------------------------------


def read_stream(url: str, headers: dict[str, str] | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Read one SSE response to its terminal event over a plain blocking socket (the reader is never the bottleneck).

    Events are counted by their ``data:`` lines (every benchmark token is one line); the terminal event is any of
    ``done``, ``error``, ``cancelled``, ``lost``. Returns the status, the events, the seconds from the request to
    the terminal event and to the first event, and the last ``id:`` seen. A response that is not 200 returns at once
    with its status.
    """
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n{extra}\r\n".encode()
    count = 0
    first_at = 0.0
    tail = b""
    last_id = b""
    started = time.perf_counter()
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            more = sock.recv(65536)
            if not more:
                raise ConnectionError("closed before the response head")
            head += more
        status_line, _, rest = head.partition(b"\r\n")
        status = int(status_line.split()[1])
        if status != 200:
            return {"status": status, "events": 0, "seconds": time.perf_counter() - started}
        chunk = rest.partition(b"\r\n\r\n")[2]
        while True:
            window = tail + chunk
            found = window.count(b"data:") - tail.count(b"data:")
            if found and not first_at:
                first_at = time.perf_counter()
            count += found
            at = window.rfind(b"\nid: ")
            if at >= 0 and window.find(b"\n", at + 1) > 0:
                last_id = window[at + 5 : window.find(b"\n", at + 1)]
            if any(terminal in window for terminal in (b"event: done", b"event: end", b"event: error", b"event: lost")):
                break
            tail = window[-16:]
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError(f"closed before the terminal event ({count} events)")
    ended = time.perf_counter()
    return {
        "status": 200,
        "events": count,
        "seconds": ended - started,
        "first_event_ms": (first_at - started) * 1000,
        "last_id": last_id.decode(),
    }


def reader_process(url: str, headers: dict[str, str] | None = None, timeout: float = 300.0) -> dict[str, Any]:
    """:func:`read_stream` in a process of its own (so the reader does not share the server's loop or GIL)."""
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import _bench; "
        "print(json.dumps(_bench.read_stream(sys.argv[2], json.loads(sys.argv[3]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent), url, json.dumps(headers or {})],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return dict(json.loads(out.stdout))


def first_events(
    port: int,
    paths: Sequence[str],
    headers: dict[str, str] | None = None,
    to_end: bool = True,
    terminals: Sequence[bytes] = (b"event: done",),
) -> list[float]:
    """For each path in turn: connect, then time from sending the request to the first ``data:`` line (ms); each
    response is read to its terminal event before the next request (or, without ``to_end``, closed at once)."""
    latencies = []
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    for path in paths:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{extra}\r\n"
            started = time.perf_counter()
            sock.sendall(request.encode())
            seen = b""
            first = 0.0
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError(f"{path}: closed before the terminal event")
                seen = seen[-16:] + chunk
                if not first and b"data:" in seen:
                    first = time.perf_counter()
                    if not to_end:
                        break
                if any(terminal in seen for terminal in terminals):
                    break
        latencies.append((first - started) * 1000)
    return latencies


def first_events_process(
    port: int, paths: Sequence[str], headers: dict[str, str] | None = None, to_end: bool = True, timeout: float = 300
) -> list[float]:
    """:func:`first_events` in a process of its own."""
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import _bench; "
        "print(json.dumps(_bench.first_events(*json.loads(sys.argv[2]))))"
    )
    arguments = json.dumps([port, list(paths), headers or {}, to_end])
    out = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent), arguments],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return [float(value) for value in json.loads(out.stdout)]
