"""Build the example's page: ``python -m examples.ai_sdk_chat.build`` (needs node and npm).

The npm packages (the AI SDK, React, esbuild) are the ones ``tests/node/ai-sdk`` pins, with its lock file: they are
installed there with ``npm ci`` (only when the lock file changed since the last install), and esbuild bundles
``page/app.jsx`` with them into ``static/app.js``, which is never committed: anyone can rebuild it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PACKAGES = ROOT / "tests" / "node" / "ai-sdk"
BUNDLE = HERE / "static" / "app.js"
PAGE = HERE / "page" / "app.jsx"
HELPER = ROOT / "src" / "resumable_sse" / "static" / "resumable-sse.js"


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is needed to build the page (install Node.js 20 or later)")
    return found


def _run(command: list[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stdout}\n{done.stderr}")


def install() -> Path:
    """``npm ci`` in ``tests/node/ai-sdk`` unless its ``node_modules`` already holds what the lock file says."""
    lock = (PACKAGES / "package-lock.json").read_bytes()
    stamp = PACKAGES / "node_modules" / ".resumable-sse-lock"
    if not stamp.exists() or stamp.read_bytes() != lock:
        _run([_tool("npm"), "ci", "--no-audit", "--no-fund", "--loglevel=error"], f"npm ci in {PACKAGES}", cwd=PACKAGES)
        stamp.write_bytes(lock)
    return PACKAGES


def build() -> Path:
    """Bundle the page (when the bundle is older than its sources or the packages) and return its path."""
    packages = install()
    sources = [PAGE, HELPER, packages / "package-lock.json"]
    if BUNDLE.exists() and all(BUNDLE.stat().st_mtime >= source.stat().st_mtime for source in sources):
        return BUNDLE
    esbuild = packages / "node_modules" / ".bin" / "esbuild"
    _run(
        [
            str(esbuild),  # (a native binary, or node's shim of it: either runs as it is)
            str(PAGE),
            "--bundle",
            "--format=iife",
            "--target=es2020",
            '--define:process.env.NODE_ENV="production"',
            f"--outfile={BUNDLE}",
            "--log-level=warning",
        ],
        "esbuild",
        env={**os.environ, "NODE_PATH": str(packages / "node_modules")},  # the page imports the pinned packages
    )
    return BUNDLE


if __name__ == "__main__":
    try:
        print(f"built {build()}")
    except RuntimeError as exc:
        sys.exit(str(exc))
