"""Build the release artifacts and check them as a user gets them (tox -e release; .ci/run runs it).

1. Build the sdist, then the wheel from that sdist (``python -m build``), so that the sdist alone is enough to build.
2. ``twine check --strict`` both.
3. Check their contents: the wheel holds the package with its JS helper, Lua scripts, ``py.typed`` and the license,
   and nothing else; the sdist holds every file of the checkout (sources, tests, examples, docs, mkdocs.yml).
4. Install the wheel (never the checkout, never editable) with the ``redis`` extra into a fresh virtual environment and
   run ``wheel_smoke.py`` there, from a temporary directory with ``python -I`` so that ``src/`` cannot be imported.

Exits non-zero on any failure.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "resumable_sse"


def fail(message: str) -> None:
    raise SystemExit(f"release check: FAILED: {message}")


def run(*command: str | Path, cwd: Path | None = None) -> None:
    print("release check: $ " + " ".join(str(part) for part in command), flush=True)
    result = subprocess.run([str(part) for part in command], cwd=cwd, check=False)
    if result.returncode != 0:
        fail(f"exit status {result.returncode}: {' '.join(str(part) for part in command)}")


def declared_version() -> str:
    match = re.search(r'^__version__ = "([^"]+)"$', (PACKAGE / "__init__.py").read_text(encoding="utf-8"), re.M)
    if match is None:
        fail("no __version__ in src/resumable_sse/__init__.py")
    assert match is not None
    return match.group(1)


def check_wheel(wheel: Path, version: str) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    lua = {f"resumable_sse/stores/lua/{path.name}" for path in (PACKAGE / "stores" / "lua").glob("*.lua")}
    wanted = {
        "resumable_sse/__init__.py",
        "resumable_sse/py.typed",
        "resumable_sse/static/resumable-sse.js",
        f"resumable_sse-{version}.dist-info/licenses/LICENSE",
        *lua,
    }
    if len(lua) < 1 or not wanted <= names:
        fail(f"{wheel.name} lacks {sorted(wanted - names)}")
    sources = {f"resumable_sse/{path.relative_to(PACKAGE).as_posix()}" for path in PACKAGE.rglob("*.py")}
    if not sources <= names:
        fail(f"{wheel.name} lacks the modules {sorted(sources - names)}")
    strays = sorted(name for name in names if not name.startswith(("resumable_sse/", "resumable_sse-")))
    if strays:
        fail(f"{wheel.name} holds files outside the package: {strays[:10]}")
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"resumable_sse-{version}.dist-info/METADATA").decode()
    # 'License: MIT' is what every pip's `pip show` prints (a PEP 639 License-Expression alone shows as an empty
    # License before pip 25)
    for line in ("License: MIT", "Classifier: License :: OSI Approved :: MIT License", f"Version: {version}"):
        if line not in metadata.splitlines():
            fail(f"{wheel.name}'s METADATA has no line {line!r}")
    print(f"release check: {wheel.name}: {len(names)} files, {len(lua)} Lua scripts, JS helper, license, metadata")


def check_sdist(sdist: Path, version: str) -> None:
    top = f"resumable_sse-{version}/"
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(top) for name in archive.getnames()}
    # every file of the checkout (the tests, the examples they serve, the docs and mkdocs.yml among them), so that the
    # sdist alone can run the suite and build the documentation
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False)
    if tracked.returncode != 0:
        fail(f"git ls-files: {tracked.stderr.strip()} (the release check runs in a git checkout)")
    wanted = {"PKG-INFO", "CHANGELOG.md", "LICENSE", "mkdocs.yml", "tests/conftest.py", *tracked.stdout.splitlines()}
    if not wanted <= names:
        fail(f"{sdist.name} lacks {sorted(wanted - names)}")
    local = (".venv/", ".tox/", ".git/", "node_modules/")
    strays = sorted(name for name in names if name.startswith(local) or "/node_modules/" in name)
    if strays:
        fail(f"{sdist.name} holds local files: {strays[:10]}")
    print(f"release check: {sdist.name}: {len(names)} files, every file of the checkout")


def main() -> None:
    version = declared_version()
    with tempfile.TemporaryDirectory(prefix="resumable-sse-release-") as temporary:
        work = Path(temporary)
        dist = work / "dist"
        # without --sdist/--wheel, build makes the sdist and then the wheel from the unpacked sdist
        run(sys.executable, "-m", "build", "--outdir", dist, ROOT)
        sdists, wheels = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
        if [p.name for p in sdists] != [f"resumable_sse-{version}.tar.gz"]:
            fail(f"expected one sdist of version {version}, built {[p.name for p in sdists]}")
        if [p.name for p in wheels] != [f"resumable_sse-{version}-py3-none-any.whl"]:
            fail(f"expected one wheel of version {version}, built {[p.name for p in wheels]}")
        run(sys.executable, "-m", "twine", "check", "--strict", *sdists, *wheels)
        check_wheel(wheels[0], version)
        check_sdist(sdists[0], version)

        environment = work / "venv"
        venv.EnvBuilder(with_pip=True).create(environment)
        python = environment / "bin" / "python"
        run(python, "-m", "pip", "install", "-q", f"{wheels[0]}[redis]", cwd=work)
        smoke = work / "wheel_smoke.py"
        smoke.write_bytes((ROOT / ".ci" / "wheel_smoke.py").read_bytes())
        run(python, "-I", smoke, version, cwd=work)
    print(f"release check: resumable-sse {version}: sdist and wheel built, checked, installed and served")


if __name__ == "__main__":
    main()
