"""The AI SDK's npm packages the Node and browser tests use, installed by the tests themselves.

``tests/node/ai-sdk/package.json`` pins the AI SDK major (and React, esbuild) and ``package-lock.json`` the exact
tree; :func:`ai_sdk_packages` runs ``npm ci`` there once per session when ``node_modules`` is missing or older than
the lock file (a stamp records which lock it installed), so CI needs nothing but node and npm on its path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent / "node" / "ai-sdk"
HELPER = Path(__file__).resolve().parent.parent / "src" / "resumable_sse" / "static" / "resumable-sse.js"


def tool(name: str) -> str:
    """The path of ``node`` or ``npm``: a failure in CI, a skip elsewhere."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is needed for the AI SDK tests in CI")
        pytest.skip(f"{name} is not installed")
    return found


@pytest.fixture(scope="session")
def ai_sdk_packages() -> Path:
    """``tests/node/ai-sdk`` with its packages installed (``npm ci``, only when the lock file changed)."""
    lock = (PACKAGE / "package-lock.json").read_bytes()
    stamp = PACKAGE / "node_modules" / ".resumable-sse-lock"
    if not stamp.exists() or stamp.read_bytes() != lock:
        done = subprocess.run(
            [tool("npm"), "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=PACKAGE,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, f"npm ci failed in {PACKAGE}:\n{done.stdout}\n{done.stderr}"
        stamp.write_bytes(lock)
    return PACKAGE
