"""The AI SDK's npm packages the Node and browser tests use, installed by the tests themselves.

``tests/node/ai-sdk/package.json`` pins the AI SDK major (and React, esbuild) and ``package-lock.json`` the exact
tree; :func:`ai_sdk_packages` installs them once per session with ``npm ci`` when ``node_modules`` is missing or
older than the lock file (``examples.ai_sdk_chat.build.install``, which the example's page build uses too), so CI
needs nothing but node and npm on its path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from examples.ai_sdk_chat.build import HELPER, install

__all__ = ["HELPER", "ai_sdk_packages", "tool"]


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
    tool("npm")
    return install()
