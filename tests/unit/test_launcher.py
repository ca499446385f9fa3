"""`dalaba agent-launcher`'s verdict on a switch, with real processes and a stand-in agent.

The launcher runs as its own process; the "agent" it starts is a small shell script in
place of `python -m dalaba_ops.cli agent` (the real agent under the launcher is
tests/integration/test_updates.py). The script does what the release on trial is told
to: pass its self-test (write releases/ok.json), or hang without ever passing it, the
case a release that exits at start (the integration test) does not cover.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_agent.updater import Layout

REPO = Path(__file__).resolve().parents[2]

# $PYTHONPATH is the slot the launcher chose (unset: the base install).
FAKE_AGENT = """#!/bin/sh
slot="${PYTHONPATH:-base}"
echo "$(basename "$slot")" >> "$STARTS"
if [ "$(basename "$slot")" = "2.0" ] && [ "$TRIAL" = "pass" ]; then
  echo '{"version": "2.0", "at": 1}' > "$RELEASES/ok.json"
fi
trap 'exit 0' TERM INT
while true; do sleep 0.1; done
"""


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """`board(trial)`: a launcher process on a state dir where 1.0 runs and a switch to
    2.0 is pending, its agent told to `pass` or `hang` the trial."""
    layout = Layout(tmp_path / "state")
    for version in ("1.0", "2.0"):
        layout.slot(version).mkdir(parents=True)
    layout.point_current_at("2.0")
    switch = {"rollout_id": "r", "release_id": "x", "version": "2.0", "previous": "1.0"}
    layout.switch_file.write_text(json.dumps({**switch, "self_test_s": 2}))
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_AGENT)
    fake.chmod(0o755)
    procs: list[subprocess.Popen[bytes]] = []

    def start(trial: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "STARTS": str(tmp_path / "starts"),
            "RELEASES": str(layout.releases),
            "TRIAL": trial,
        }
        code = (
            "from pathlib import Path; from edge_agent.launcher import Launcher; "
            f"raise SystemExit(Launcher(Path('device.json'), Path({str(layout.state_dir)!r}), "
            f"python={str(fake)!r}).run())"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def starts(tmp_path: Path) -> list[str]:
    path = tmp_path / "starts"
    return path.read_text().split() if path.exists() else []


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_release_silent_past_its_self_test_limit_is_rolled_back(
    tmp_path: Path, board: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    layout = Layout(tmp_path / "state")
    launcher = board("hang")
    wait_for(lambda: starts(tmp_path) == ["2.0", "1.0"], "the trial, then the old version")
    assert os.readlink(layout.current) == "1.0"
    result = json.loads(layout.result_file.read_text())
    assert result["version"] == "2.0"
    assert "not online and tested within 2 s" in result["reason"]
    assert not layout.switch_file.exists()
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(30) == 0  # stops its agent and itself, like systemd's stop


def test_a_release_that_passes_its_self_test_is_kept(
    tmp_path: Path, board: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    layout = Layout(tmp_path / "state")
    launcher = board("pass")
    wait_for(lambda: not layout.switch_file.exists(), "the trial passed")
    time.sleep(3)  # past the limit: nothing rolls back a release that passed
    assert starts(tmp_path) == ["2.0"]
    assert os.readlink(layout.current) == "2.0"
    assert not layout.result_file.exists()
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(30) == 0
