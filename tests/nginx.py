"""nginx for the tests: find the binary, and wrap a fragment of the ``http`` block in a whole configuration."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def find_nginx() -> str | None:
    """The nginx binary (Debian puts it in /usr/sbin, which a user's PATH may lack), or None."""
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


def require_nginx() -> str:
    """The nginx binary; skips the test when there is none (fails instead under CI, where .ci/run installs it)."""
    binary = find_nginx()
    if binary is None:
        reason = "nginx is not installed (apt-get install nginx)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " [CI=true: .ci/run installs it]", pytrace=False)
        pytest.skip(reason)
    return binary


def main_config(http_block: str, prefix: Path) -> str:
    """A whole configuration for ``nginx -p PREFIX -c FILE`` (in the foreground) around a fragment of the ``http``
    block: logs, pid and temporary files all under ``prefix``, so that it touches nothing of the machine's."""
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / name).mkdir(exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""  # the workers must reach files under a private temp dir
    return (
        f"daemon off;\n{user}worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"  access_log {prefix}/access.log;\n"
        f"  client_body_temp_path {prefix}/client_body;\n  proxy_temp_path {prefix}/proxy;\n"
        f"  fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n"
        f"{http_block}\n"
        "}\n"
    )
