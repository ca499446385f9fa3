"""The package as an operator installs it, not as a checkout runs it.

A wheel built from this tree carries every file of the packages and the console (web/,
shipped as controller/web by setup.py); installed into a fresh venv, `dalaba controller`
serves the console from it. The terminal's extra, `dalaba[agent]`, brings nothing of the
controller, and the agent's code imports none of the controller's packages.

Offline by design (CI has the registry, a county's build box may not): the wheel is built
without build isolation (setuptools is a dev dependency), and the fresh venv gets the
wheel with `--no-deps --no-index` while the third-party packages come from the test
environment's site-packages through a .pth file. A .pth entry is appended after the venv's
own site-packages, and .pth files inside it are not processed, so the project itself can
only be imported from the wheel; the tests check that it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from email.parser import HeaderParser
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from dalaba_ops.demo import setup_county
from tests.procs import write_env_file

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dalaba", "dalaba_ops", "controller", "edge_agent", "firmware_sim")
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", *PACKAGES, "web")
# What a terminal must never be made to install (issue 9): the controller's database,
# scheduler, speech and audio stack.
NOT_ON_A_TERMINAL = {"sqlmodel", "sqlalchemy", "alembic", "edge-tts", "apscheduler", "pydub"}
# Import names of every package only the controller (or its PostgreSQL driver) uses.
CONTROLLER_MODULES = (
    "sqlmodel",
    "sqlalchemy",
    "alembic",
    "edge_tts",
    "apscheduler",
    "pydub",
    "audioop",
    "argon2",
    "pydantic_settings",
    "prometheus_client",
    "psycopg",
    "controller",
)


def _ignore_build_litter(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".egg-info"))}


def _setuptools_builds_offline() -> bool:
    try:
        return int(version("setuptools").split(".")[0]) >= 77
    except (PackageNotFoundError, ValueError):
        return False


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def build_wheel(base: Path) -> Path:
    """The wheel of this tree, built in `base` from a copy so no build/ or stale file
    of the checkout can slip into it (also the agent releases of test_updates.py)."""
    src = base / "src"
    for name in BUILD_INPUTS:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=_ignore_build_litter)
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(source, src / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base / "out")]
    if _setuptools_builds_offline():
        command.append("--no-build-isolation")
    result = subprocess.run([*command, str(src)], capture_output=True, text=True, cwd=base)
    assert result.returncode == 0, result.stderr
    (built,) = (base / "out").glob("dalaba-*.whl")
    return built


def _metadata(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        headers = HeaderParser().parsestr(zf.read(name).decode())
    return [Requirement(r) for r in headers.get_all("Requires-Dist") or []]


def _installs(requirements: list[Requirement], extras: set[str], python: str) -> set[str]:
    """The distributions `pip install 'dalaba[extras]'` pulls in directly on `python`."""
    chosen: set[str] = set()
    for req in requirements:
        for extra in extras | {""}:
            env = {"extra": extra, "python_version": python, "python_full_version": python}
            if req.marker is None or req.marker.evaluate(env):
                chosen.add(canonicalize_name(req.name))
    return chosen


def test_the_wheel_holds_every_package_file_and_the_console(wheel: Path) -> None:
    expected = set()
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                expected.add(path.relative_to(REPO_ROOT).as_posix())
    for path in (REPO_ROOT / "web").rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            expected.add("controller/" + path.relative_to(REPO_ROOT).as_posix())
    with zipfile.ZipFile(wheel) as zf:
        names = {n for n in zf.namelist() if ".dist-info/" not in n}
    assert "controller/web/index.html" in names
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel (add a pattern to setup.py): {missing}"
    # Nothing but our packages: no tests, benchmarks or a top-level `web` package.
    assert {n.split("/")[0] for n in names} == set(PACKAGES)


def test_a_terminal_install_brings_nothing_of_the_controller(wheel: Path) -> None:
    requirements = _metadata(wheel)
    for python in ("3.11", "3.12", "3.13"):
        agent = _installs(requirements, {"agent"}, python)
        controller = _installs(requirements, {"controller"}, python)
        assert {"aiohttp", "paho-mqtt", "cryptography", "pydantic"} <= agent, python
        assert not agent & NOT_ON_A_TERMINAL, (python, sorted(agent & NOT_ON_A_TERMINAL))
        assert controller >= NOT_ON_A_TERMINAL, python
        # pydub imports the stdlib audioop, which Python 3.13 removed.
        assert ("audioop-lts" in controller) == (python == "3.13"), python
    # The base install is the wire kernel alone.
    assert _installs(requirements, set(), "3.11") == {"paho-mqtt", "cryptography", "pydantic"}


def test_the_agent_code_imports_none_of_the_controller_packages() -> None:
    """What `dalaba agent` and `dalaba sim` load, run with every controller-only package
    made unimportable, as on a terminal that installed `dalaba[agent]`."""
    script = f"""
import importlib, pkgutil, sys
for name in {CONTROLLER_MODULES!r}:
    sys.modules[name] = None  # import now raises ImportError
import dalaba, edge_agent, firmware_sim
for package in (dalaba, edge_agent, firmware_sim):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
from dalaba_ops import cli
for command in ("agent", "sim"):
    try:
        cli.main([command, "--help"])
    except SystemExit as exc:
        assert exc.code == 0, (command, exc.code)
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


# --------------------------------------------------------------------------- installed


def _clean_env() -> dict[str, str]:
    # Neither the checkout nor a DALABA_* setting of the test runner may leak in.
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DALABA_") and k not in {"PYTHONPATH", "PYTHONHOME"}
    }


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; returns its bin/ directory."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    result = subprocess.run(
        [*install, "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "zz_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    return venv / "bin"


def test_the_installed_package_finds_its_console(installed: Path) -> None:
    probe = (
        "import json, controller.app as a; "
        "print(json.dumps({'module': a.__file__, 'web': str(a.WEB_DIR)}))"
    )
    result = subprocess.run(
        [str(installed / "python"), "-c", probe],
        capture_output=True,
        text=True,
        cwd=installed,
        env=_clean_env(),
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    venv = installed.parent
    assert Path(found["module"]).is_relative_to(venv), found
    web = Path(found["web"])
    assert web.is_relative_to(venv) and web.name == "web" and web.parent.name == "controller"
    assert (web / "index.html").read_bytes() == (REPO_ROOT / "web" / "index.html").read_bytes()


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


@pytest.fixture
def controller_from_wheel(installed: Path, tmp_path: Path) -> Iterator[str]:
    """`dalaba controller` of the fresh venv against a private broker and a one-village
    county; yields its base URL."""
    prepared = setup_county(
        tmp_path / "county", villages=1, speech_backends=("espeak-ng",), console_users=False
    )
    env_file = write_env_file(prepared.settings, tmp_path / "controller.env")
    prepared.broker.start()
    log_path = tmp_path / "controller.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(installed / "dalaba"), "controller", "--config", str(env_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
            env=_clean_env(),
        )
    try:
        # Wait for the server to answer (or to die, which fails at once with its log).
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the controller exited: {log_path.read_text(errors='replace')}")
            try:
                if _get(prepared.api_url + "/api/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no answer in 60 s: {log_path.read_text(errors='replace')}")
            time.sleep(0.1)
        yield prepared.api_url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        prepared.broker.stop()


@pytest.mark.slow
@pytest.mark.broker
def test_a_wheel_installed_in_a_fresh_venv_serves_the_console(controller_from_wheel: str) -> None:
    status, body = _get(controller_from_wheel + "/")
    assert status == 200
    assert body == (REPO_ROOT / "web" / "index.html").read_bytes()
    for name in ("style.css", "js/app.js", "js/i18n.js"):
        status, body = _get(f"{controller_from_wheel}/static/{name}")
        assert status == 200, name
        assert body == (REPO_ROOT / "web" / name).read_bytes(), name
