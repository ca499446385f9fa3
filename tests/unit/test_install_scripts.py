"""scripts/ensure-system-deps.sh against fake Debian and Ubuntu systems.

The script is run by the real bash with a PATH holding only stand-ins (apt-get that
records what it was asked to install, apt-cache that knows some packages, a python3 with
or without ensurepip) and DALABA_SYSROOT pointing at a fake root (os-release, Chromium),
since a test cannot remove packages from this machine or make it Ubuntu.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ensure-system-deps.sh"
DEBIAN_12 = 'ID=debian\nVERSION_ID="12"\n'
UBUNTU_24 = 'ID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n'
DEMO_TOOLS = ("mosquitto", "mosquitto_passwd", "ffmpeg", "espeak-ng")
ALL_TOOLS = (*DEMO_TOOLS, "aplay", "escript")  # the tests also play through ALSA, read Erlang


@dataclass
class Run:
    code: int
    stderr: str
    installed: list[str]  # what apt-get install was asked for


def _exe(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def run_script(
    tmp_path: Path,
    what: str,
    *,
    os_release: str = DEBIAN_12,
    tools: tuple[str, ...] = ALL_TOOLS,
    chromium: bool = True,
    cjk_fonts: bool = True,
    ensurepip: bool = True,
    python_version: tuple[int, int] = (3, 11),
    apt: bool = True,
    unavailable: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Run:
    root = tmp_path / "root"
    bin_dir = tmp_path / "bin"
    for d in (root / "etc", root / "usr" / "bin", root / "usr" / "sbin", bin_dir):
        d.mkdir(parents=True, exist_ok=True)
    (root / "etc" / "os-release").write_text(os_release)
    if chromium:
        _exe(root / "usr" / "bin" / "chromium", "exit 0\n")
    for tool in ("sort", "grep"):
        real = shutil.which(tool)
        assert real is not None
        (bin_dir / tool).symlink_to(real)
    _exe(bin_dir / "id", "echo 0\n")  # root: no sudo involved
    for tool in tools:
        _exe(bin_dir / tool, "exit 0\n")
    if "escript" in tools:  # Debian's erlang-crypto, which the EMQX hash checks load
        (root / "usr" / "lib" / "erlang" / "lib" / "crypto-5.1.2").mkdir(parents=True)
    _exe(
        bin_dir / "fc-list",
        "echo 'NotoSansCJK-Regular.ttc: Noto Sans CJK SC'\n" if cjk_fonts else "",
    )
    too_old = "1" if python_version < (3, 11) else "0"
    _exe(
        bin_dir / "python3",
        f"""case "$*" in
  *ensurepip*) exit {0 if ensurepip else 1} ;;
  *'version_info <'*) exit {too_old} ;;
  *) echo {python_version[0]}.{python_version[1]} ;;
esac
""",
    )
    log = tmp_path / "apt.log"
    if apt:
        _exe(bin_dir / "apt-get", f'[ "$1" = install ] && echo "$@" >> {log}\nexit 0\n')
        missing = " ".join(unavailable)
        _exe(
            bin_dir / "apt-cache",
            f"""for p in {missing}; do [ "$2" = "$p" ] && exit 0; done
echo "$2:"; echo "  Installed: (none)"; echo "  Candidate: 1.0-1"
""",
        )
    child_env = {"PATH": str(bin_dir), "DALABA_SYSROOT": str(root), **(env or {})}
    bash = shutil.which("bash") or "/bin/bash"
    result = subprocess.run(
        [bash, str(SCRIPT), what], capture_output=True, text=True, env=child_env
    )
    installed = []
    if log.exists():
        for line in log.read_text().splitlines():
            installed += [w for w in line.split() if not w.startswith("-") and w != "install"]
    return Run(result.returncode, result.stderr, installed)


def test_a_complete_system_installs_nothing(tmp_path: Path) -> None:
    for what in ("demo", "test"):
        run = run_script(tmp_path / what, what)
        assert (run.code, run.installed) == (0, []), run.stderr


def test_the_demo_installs_its_packages_and_never_the_browser(tmp_path: Path) -> None:
    run = run_script(tmp_path, "demo", tools=(), chromium=False, cjk_fonts=False)
    assert run.code == 0, run.stderr
    assert sorted(run.installed) == ["espeak-ng", "ffmpeg", "mosquitto"]


def test_tests_add_chromium_and_fonts_on_debian(tmp_path: Path) -> None:
    run = run_script(tmp_path, "test", chromium=False, cjk_fonts=False)
    assert run.code == 0, run.stderr
    assert sorted(run.installed) == ["chromium", "fonts-noto-cjk"]


def test_tests_add_alsa_utils_for_aplay(tmp_path: Path) -> None:
    run = run_script(tmp_path, "test", tools=(*DEMO_TOOLS, "escript"))
    assert run.code == 0, run.stderr
    assert run.installed == ["alsa-utils"]
    assert run_script(tmp_path / "demo", "demo", tools=DEMO_TOOLS).installed == []


def test_tests_add_erlang_for_the_emqx_config_checks(tmp_path: Path) -> None:
    run = run_script(tmp_path, "test", tools=(*DEMO_TOOLS, "aplay"))
    assert run.code == 0, run.stderr
    assert run.installed == ["erlang-base", "erlang-crypto"]
    assert run_script(tmp_path / "demo", "demo", tools=DEMO_TOOLS).installed == []


def test_python_without_venv_gets_python3_venv(tmp_path: Path) -> None:
    run = run_script(tmp_path, "demo", ensurepip=False)
    assert run.code == 0, run.stderr
    assert run.installed == ["python3-venv"]


def test_a_python_older_than_3_11_is_named_with_the_way_out(tmp_path: Path) -> None:
    run = run_script(tmp_path, "demo", python_version=(3, 10))
    assert run.code == 1
    assert "Python 3.11 or newer is needed; python3 is 3.10" in run.stderr
    assert "make demo PYTHON=python3.11" in run.stderr


def test_ubuntu_snap_chromium_is_explained_not_attempted(tmp_path: Path) -> None:
    run = run_script(tmp_path, "test", os_release=UBUNTU_24, chromium=False, cjk_fonts=False)
    assert run.code == 1
    assert "chromium" not in run.installed
    assert run.installed == ["fonts-noto-cjk"]  # the rest is still installed
    assert "snap" in run.stderr and "make test DALABA_SKIP_BROWSER=1" in run.stderr
    (advice,) = [line for line in run.stderr.splitlines() if "snap" in line]
    assert advice.startswith("ensure-system-deps: Ubuntu 24.04 ships Chromium only as a snap")


def test_skipping_the_browser_leaves_chromium_and_fonts_out(tmp_path: Path) -> None:
    run = run_script(
        tmp_path,
        "test",
        os_release=UBUNTU_24,
        chromium=False,
        cjk_fonts=False,
        env={"DALABA_SKIP_BROWSER": "1"},
    )
    assert (run.code, run.installed) == (0, []), run.stderr


def test_without_apt_it_lists_what_to_install(tmp_path: Path) -> None:
    run = run_script(tmp_path, "demo", tools=("mosquitto", "mosquitto_passwd"), apt=False)
    assert run.code == 1
    assert "no apt-get here" in run.stderr
    assert "espeak-ng ffmpeg" in run.stderr


def test_a_package_the_release_lacks_is_named_and_the_rest_installed(tmp_path: Path) -> None:
    run = run_script(
        tmp_path, "demo", tools=("mosquitto", "mosquitto_passwd"), unavailable=("espeak-ng",)
    )
    assert run.code == 1
    assert run.installed == ["ffmpeg"]
    assert "apt has no package 'espeak-ng' on debian 12" in run.stderr


def test_a_wrong_argument_is_a_usage_error() -> None:
    bash = shutil.which("bash") or "/bin/bash"
    result = subprocess.run([bash, str(SCRIPT), "browser"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage:" in result.stderr
