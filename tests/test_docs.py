"""Every code block of README.md and docs/*.md runs, so that no example in the documentation can rot.

How each block is run depends on its language (the fence's info string):

- ``python``: in a fresh interpreter (tests/_snippet_runner.py), bounded to 60 s, from the repository root.
  ``web.run_app(...)`` serves on a free port of 127.0.0.1 whatever the snippet names, and is shut down at once.
- ``sh`` / ``bash``: with ``bash -euo pipefail``, bounded to 60 s, from the repository root, with this interpreter's
  ``bin`` directory first on ``PATH`` (so ``python3`` and ``resumable-sse`` are the ones under test).
- ``js``: parsed with ``node --check`` (the snippets call functions of the page they would live in).
- ``html``: only the block marked ``browser`` (the quick start's page), whose scripts are parsed with
  ``node --check`` here; tests/test_browser_snippet.py runs the page as printed in Chromium.
- ``json``: parsed. ``nginx``: a configuration fragment for the ``http`` block, checked with ``nginx -t``
  (tests/test_deploy_nginx.py also runs the deployment page's one in front of real servers).
- no language, or ``text``: output and listings, not run; a ``wire PATH`` directive compares one with the server.

Addresses are rewritten so that no snippet touches anything outside the test: ``http://localhost:8000`` (where the
README's quick start listens) becomes the address of the block marked ``server``, started once on a free port for
this module, and ``localhost:6379`` / ``127.0.0.1:6379`` / ``port=6379`` become a private ``redis-server`` on a free
port. A block that is deliberately not run says why in the comment just above its fence:

    <!-- snippet: skip: installs the package from the package index -->

(the full convention is in tests/snippets.py). A block in a language this module does not know fails, so that a new
kind of block is either run or skipped with a reason, never ignored.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from resumable_sse import Event, MemoryStore, Streamer, resumable_handler, setup

from .nginx import main_config, require_nginx
from .redis_servers import RedisServer, require_server_binary
from .snippets import ROOT, Snippet, check_directive, collect

SNIPPETS = collect()
PYTHON = {"python", "py"}
SHELL = {"sh", "bash", "shell"}
JAVASCRIPT = {"js", "javascript"}
HTML = {"html"}
SHOWN = {"", "text"}
LANGUAGES = PYTHON | SHELL | JAVASCRIPT | HTML | SHOWN | {"json", "nginx"}

RUNNER = Path(__file__).with_name("_snippet_runner.py")
DOCS_URL = "http://localhost:8000"
EXAMPLE_EPOCH = "5f0c2a9be14d7730"
TIMEOUT = 60
_REDIS_ADDRESS = re.compile(r"(?:localhost|127\.0\.0\.1):6379\b|\bport=6379\b")


def _missing(what: str) -> None:
    """Skip a test for want of a tool, or fail under CI (where .ci/run installs it)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is not installed (.ci/run installs it)")
    pytest.skip(f"{what} is not installed")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def docs_redis() -> Iterator[RedisServer]:
    """A private Redis for the snippets that name the default local one."""
    with RedisServer(require_server_binary()) as server:
        yield server


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The block marked ``server`` (the README's quick start), serving on a free port: its base URL."""
    servers = [snippet for snippet in SNIPPETS if snippet.is_server]
    assert len(servers) == 1, f"exactly one block must be marked 'server', found {[s.id for s in servers]}"
    path = tmp_path_factory.mktemp("docs-server") / "server.py"
    path.write_text(servers[0].code)
    process = subprocess.Popen(
        [sys.executable, str(RUNNER), "--serve", str(path)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    try:
        url, output = None, []
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while url is None and selector.select(timeout=30):
                line = process.stdout.readline()
                if not line:
                    break
                output.append(line)
                if line.startswith("snippet-server: "):
                    url = line.removeprefix("snippet-server: ").strip()
        assert url is not None, f"{servers[0].id} did not start a server:\n{''.join(output)}"
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def prepare(snippet: Snippet, request: pytest.FixtureRequest) -> str:
    """The snippet's code with its addresses pointed at this test's own servers."""
    code = snippet.code
    if DOCS_URL in code:
        code = code.replace(DOCS_URL, request.getfixturevalue("docs_server"))
    if _REDIS_ADDRESS.search(code):
        port = request.getfixturevalue("docs_redis").port
        code = _REDIS_ADDRESS.sub(lambda m: f"port={port}" if m[0].startswith("port") else f"127.0.0.1:{port}", code)
    return code


def run(command: list[str], snippet: Snippet) -> None:
    try:
        done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        output = [
            part.decode(errors="replace") if isinstance(part, bytes) else part for part in (exc.stdout, exc.stderr)
        ]
        pytest.fail(f"{snippet.id} did not finish within {TIMEOUT} s\n{''.join(filter(None, output))}")
    if done.returncode != 0:
        pytest.fail(
            f"{snippet.id} failed (exit {done.returncode})\n--- code\n{snippet.code}--- stdout\n{done.stdout}"
            f"--- stderr\n{done.stderr}"
        )


def test_every_block_has_a_known_language_and_directive() -> None:
    assert len(SNIPPETS) > 20  # README.md and docs/*.md were found and parsed
    for snippet in SNIPPETS:
        check_directive(snippet)
        if snippet.skip_reason is None:
            assert snippet.language in LANGUAGES, (
                f"{snippet.id}: no test runs {snippet.language!r} blocks: run it (tests/test_docs.py) or mark it "
                "<!-- snippet: skip: REASON -->"
            )
        if snippet.is_server:
            assert snippet.language in PYTHON, f"{snippet.id}: only a Python block can be the server"
        if snippet.wire_path is not None:
            assert snippet.language in SHOWN, f"{snippet.id}: only a text block can be a wire example"
        if snippet.language in HTML and snippet.skip_reason is None:
            assert snippet.is_browser, f"{snippet.id}: only the block marked 'browser' may be a page"
    assert [s.path for s in SNIPPETS if s.is_browser] == ["README.md"], "the README's page must be marked 'browser'"


def test_the_directive_comment_is_read(tmp_path: Path) -> None:
    text = "x\n<!-- snippet: skip: not here -->\n```sh\nexit 1\n```\n\n- a list\n\n  ```python\n  x = 1\n  ```\n"
    from .snippets import parse

    first, second = parse(Path("doc.md"), text)
    assert (first.line, first.language, first.code, first.skip_reason) == (3, "sh", "exit 1\n", "not here")
    assert (second.line, second.language, second.code, second.directive) == (9, "python", "x = 1\n", None)
    with pytest.raises(ValueError, match="never closed"):
        parse(Path("doc.md"), "```python\nx = 1\n")
    with pytest.raises(ValueError, match="unknown snippet directive"):
        check_directive(parse(Path("doc.md"), "<!-- snippet: skipp: typo -->\n```sh\n```\n")[0])


# Blocks marked skip (each with its reason, checked above) are not collected: a test that always skips proves nothing.
RUNNABLE = [s for s in SNIPPETS if s.language in LANGUAGES - SHOWN and s.skip_reason is None]


@pytest.mark.parametrize("snippet", RUNNABLE, ids=[s.id for s in RUNNABLE])
def test_snippet(snippet: Snippet, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if snippet.is_server:
        with urllib.request.urlopen(request.getfixturevalue("docs_server") + "/stream/snippet-check", timeout=10) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/event-stream"
            assert b"event: done" in r.read()
        return
    code = prepare(snippet, request)
    if snippet.language in PYTHON:
        path = tmp_path / "snippet.py"
        path.write_text(code)
        run([sys.executable, str(RUNNER), str(path)], snippet)
    elif snippet.language in SHELL:
        run(["bash", "-euo", "pipefail", "-c", code], snippet)
    elif snippet.language in JAVASCRIPT | HTML:
        node = shutil.which("node")
        if node is None:
            _missing("node")
        if snippet.language in HTML:
            code = "\n".join(re.findall(r"<script>(.*?)</script>", code, re.DOTALL))
            assert code.strip(), f"{snippet.id}: a page with no script"
        path = tmp_path / "snippet.js"
        path.write_text(code)
        run([str(node), "--check", str(path)], snippet)
    elif snippet.language == "json":
        json.loads(code)
    elif snippet.language == "nginx":
        check_nginx(code, tmp_path, snippet)
    else:  # pragma: no cover - LANGUAGES and the branches above go together
        raise AssertionError(snippet.language)


def check_nginx(code: str, tmp_path: Path, snippet: Snippet) -> None:
    binary = require_nginx()
    config = tmp_path / "nginx.conf"
    config.write_text(main_config(code, tmp_path))
    run([binary, "-t", "-q", "-p", str(tmp_path), "-c", str(config)], snippet)


WIRE = [s for s in SNIPPETS if s.wire_path is not None]


@pytest.mark.parametrize("snippet", WIRE, ids=[s.id for s in WIRE])
def test_wire_example_is_what_the_server_sends(snippet: Snippet, docs_server: str) -> None:
    with urllib.request.urlopen(docs_server + (snippet.wire_path or ""), timeout=10) as response:
        body = response.read().decode()
    epoch = re.search(r"^id: ([a-z0-9]+)-1$", body, re.MULTILINE)
    assert epoch is not None, body
    assert snippet.code == body.replace(epoch[1], EXAMPLE_EPOCH)


# -- docs/protocol.md's example, byte for byte ----------------------------------------------------------------------


async def _example(_request: web.Request) -> object:
    """The producer of docs/protocol.md's example."""
    yield "Hello"
    yield "line one\nline two"
    yield Event({"tokens": 3}, event="usage")


def _protocol_example_blocks() -> list[Snippet]:
    text = (ROOT / "docs/protocol.md").read_text()
    heading = text.split("\n").index("## Example, byte for byte") + 1
    return [s for s in SNIPPETS if s.path == "docs/protocol.md" and s.line > heading]


async def test_protocol_example_is_what_the_server_sends(aiohttp_client: object) -> None:
    full, literal, reset = _protocol_example_blocks()[:3]
    app = web.Application()
    setup(app, Streamer(MemoryStore()))
    app.router.add_get("/stream/{stream_id}", resumable_handler(_example))  # type: ignore[arg-type]
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)  # type: ignore[operator]
    body = (await (await client.get("/stream/answer-42")).read()).decode()
    epoch = body.split("id: ", 1)[1].split("-", 1)[0]
    assert full.code == body.replace(epoch, EXAMPLE_EPOCH)
    assert eval(literal.code.replace("\n", " ")) == body.replace(epoch, EXAMPLE_EPOCH).encode()
    replay = await (await client.get("/stream/answer-42", headers={"Last-Event-ID": "0123456789abcdef-2"})).read()
    assert replay.decode().replace(epoch, EXAMPLE_EPOCH).startswith(reset.code)
    resumed = await (await client.get("/stream/answer-42", headers={"Last-Event-ID": f"{epoch}-2"})).read()
    assert resumed.decode() == "retry: 2000\n" + body.split("\n\n", 2)[2]  # events 3 and 4
