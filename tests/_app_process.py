"""A server process of tests/redis_app.py, for the multi-process suites (test_redis_processes, test_faults)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

APP = str(Path(__file__).with_name("redis_app.py"))


class AppProcess:
    """One server process of tests/redis_app.py on the Redis at ``url``.

    ``log``: a file for its stderr, whose JSON lines of the ``resumable_sse`` logger :meth:`records` reads (else
    ``$RESUMABLE_SSE_APP_LOG``, or nowhere); ``options``: the app's JSON options (``{"log": "json"}`` for records).
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        lease: float = 5.0,
        *,
        log: Path | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.log_path = log
        self.log = open(log or os.environ.get("RESUMABLE_SSE_APP_LOG", os.devnull), "ab")  # noqa: SIM115 (closed in kill)
        args = [sys.executable, APP, url, prefix, str(lease)]
        if options is not None:
            args.append(json.dumps(options))
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, env=env)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if not line.startswith("READY "):
            self.kill()
            logged = log.read_text()[-2000:] if log is not None else ""
            raise RuntimeError(f"the app process did not start: {line!r} {logged}")
        self.base = f"http://127.0.0.1:{int(line.split()[1])}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def records(self) -> list[dict[str, Any]]:
        """What the ``resumable_sse`` logger wrote (other stderr lines, e.g. tracebacks, are skipped)."""
        assert self.log_path is not None, "records() needs the process started with log="
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("name", "").startswith("resumable_sse"):
                    out.append(record)
        return out

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        self.kill()
