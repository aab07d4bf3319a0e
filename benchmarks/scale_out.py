"""Scale-out: what one Redis spends per server process at the fleet workload, and so how many processes it feeds.

The fleet workload (``fleet.py``: S streams per server process, each a producer yielding a token every 1/20 s, one
reader each over HTTP) runs on P server processes at once, all on one Redis: server processes pinned with
``taskset`` to ``--server-cpu``, Redis (each node of a cluster) alone on ``--redis-cpu`` with the reader processes
(the readers' CPU is not Redis's; Redis's own CPU time is read from /proc). For P = 1 and P = 2 (``--processes``) it
prints Redis CPU % and commands/s, in total and per server process, and from the per-process CPU the number of
server processes one Redis feeds before it saturates its core (100 % / per-process %). A row on a 3-node Redis
Cluster follows (the nodes' CPU added up).

Figure: one Redis feeds >= 8 server processes (Redis CPU <= 12.5 % per process at this workload), the most
processes run being the measure (on 2 cores the processes share one core, so per-process figures at larger P
would be set by this machine, not by Redis).

    python benchmarks/scale_out.py [--streams 200] [--tokens 100] [--processes 1 2] [--no-cluster] [--json]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import _bench
import fleet
from aiohttp import ClientSession

TARGET_FEEDS = 8


async def run(args: Any, processes: int, redis: Any, cluster: bool) -> dict[str, Any]:
    servers_redis = redis.servers if cluster else [redis]
    ports = [server.port for server in servers_redis]
    await asyncio.to_thread(flush, ports)
    servers: list[fleet.Proc] = []
    readers: list[fleet.Proc] = []
    try:
        http_ports = []
        for index in range(processes):
            server = await fleet.Proc.start(
                f"server {index}", "--serve", "redis", "--streams", str(args.streams), "--tokens", str(args.tokens),
                "--rate", str(args.rate), "--stagger", "1", "--redis-url", redis.url,
                *(["--cluster"] if cluster else []),
            )  # fmt: skip
            servers.append(server)
            line = await server.line(30)
            if not line.startswith("PORT "):
                raise SystemExit(f"server {index}: unexpected {line!r}")
            http_ports.append(int(line.split()[1]))
            _bench.pin(server.process.pid, args.server_cpu)
        for index, port in enumerate(http_ports):
            reader = await fleet.Proc.start(
                f"readers {index}", "--client", str(port), "--prefix", f"p{index}-{time.monotonic_ns()}",
                "--streams", str(args.streams), "--connect-timeout", "60",
            )  # fmt: skip
            readers.append(reader)
            _bench.pin(reader.process.pid, args.redis_cpu)
        for reader in readers:
            connected = (await reader.line(120)).split()
            if connected[0] != "CONNECTED" or int(connected[1]) < args.streams:
                raise SystemExit(f"{reader.name}: not all connected: {connected}")
        await asyncio.to_thread(_bench.redis_commands, ports, True)
        redis_pids = [server.pid for server in servers_redis]
        cpu0 = sum(_bench.cpu_seconds(pid) for pid in redis_pids)
        servers_cpu0 = sum(_bench.cpu_seconds(server.process.pid) for server in servers)
        wall0 = time.monotonic()
        run_s = 1 + args.tokens / args.rate
        async with ClientSession() as session:
            for port, reader in zip(http_ports, readers, strict=True):
                async with session.post(f"http://127.0.0.1:{port}/control/go") as reply:
                    start_ns = (await reply.json())["start_ns"]
                await reader.send(f"GO {start_ns + int((run_s + fleet.GRACE) * 1e9)}")
        outs = [json.loads(await reader.line(run_s + fleet.GRACE + 60)) for reader in readers]
        wall = time.monotonic() - wall0
        cpu = sum(_bench.cpu_seconds(pid) for pid in redis_pids) - cpu0
        servers_cpu = sum(_bench.cpu_seconds(server.process.pid) for server in servers) - servers_cpu0
        commands = await asyncio.to_thread(_bench.redis_commands, ports)
    finally:
        for proc in readers + servers:
            await proc.end()
    delivered = sum(out["tokens"] for out in outs)
    redis_pct = 100 * cpu / wall
    per_process = redis_pct / processes
    return {
        "redis": "cluster (3 nodes)" if cluster else "single",
        "processes": processes,
        "streams_per_process": args.streams,
        "tokens_per_s": delivered / wall,
        "delivered": delivered,
        "expected": processes * args.streams * args.tokens,
        "p99_ms": max(out["p99_ms"] for out in outs),
        "redis_cpu_pct": redis_pct,
        "redis_cpu_pct_per_process": per_process,
        "commands_per_s": commands / wall,
        "commands_per_s_per_process": commands / wall / processes,
        "commands_per_token": commands / delivered if delivered else None,
        "server_cpu_pct_per_process": 100 * servers_cpu / wall / processes,
        "feeds": int(100 // per_process) if per_process > 0 else None,  # None: too little to measure
    }


def flush(ports: list[int]) -> None:
    import redis

    for port in ports:
        with redis.Redis(port=port) as client:
            client.flushall()


async def main(args: Any) -> None:
    _bench.raise_fd_limit()
    out = _bench.Output(args.json)
    out.print(
        f"scale-out: {args.streams} streams per server process x {args.rate:g} tokens/s, {args.tokens} tokens; "
        f"servers on CPU {args.server_cpu}, Redis on CPU {args.redis_cpu}"
    )
    out.print(
        f"{'redis':18} {'P':>2} {'tokens/s':>9} {'delivered':>15} {'p99 ms':>7} {'redis CPU':>10} {'per P':>7} "
        f"{'cmds/s':>8} {'per P':>8} {'cmds/tok':>9} {'srv CPU/P':>10} {'feeds':>6}"
    )
    results = []
    configs = [False] + ([] if args.no_cluster else [True])
    for cluster in configs:
        if cluster:
            redis = await asyncio.to_thread(_bench.start_cluster)
            for server in redis.servers:
                _bench.pin(server.pid, args.redis_cpu)
        else:
            redis = await asyncio.to_thread(_bench.start_redis, args.redis_cpu)
        try:
            for processes in args.processes if not cluster else args.processes[:1]:
                r = await run(args, processes, redis, cluster)
                results.append(r)
                out.print(
                    f"{r['redis']:18} {processes:>2} {r['tokens_per_s']:9,.0f} {r['delivered']:>7}/{r['expected']:<7} "
                    f"{r['p99_ms']:7.1f} {r['redis_cpu_pct']:9.1f}% {r['redis_cpu_pct_per_process']:6.1f}% "
                    f"{r['commands_per_s']:8,.0f} {r['commands_per_s_per_process']:8,.0f} "
                    f"{r['commands_per_token'] or 0:9.2f} {r['server_cpu_pct_per_process']:9.1f}% {r['feeds'] or 0:>6}"
                )
        finally:
            redis.close()
    single = [r for r in results if r["redis"] == "single"]
    document: dict[str, Any] = {"rate": args.rate, "tokens": args.tokens, "target_feeds": TARGET_FEEDS}
    if single:
        widest = max(single, key=lambda r: r["processes"])
        met = widest["feeds"] is not None and widest["feeds"] >= TARGET_FEEDS
        document["figure"] = {"feeds": widest["feeds"], "at_processes": widest["processes"], "met": met}
        out.print(
            f"one Redis feeds {widest['feeds']} server processes (target >= {TARGET_FEEDS}): {_bench.verdict(met)}"
        )
    document["results"] = results
    out.done("scale_out", document)


if __name__ == "__main__":
    parser = _bench.parser(__doc__)
    parser.add_argument("--streams", type=int, default=200, help="streams per server process")
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--redis-cpu", type=int, default=1)
    parser.add_argument("--no-cluster", action="store_true")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments)))
