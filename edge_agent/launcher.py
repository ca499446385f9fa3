"""`dalaba agent-launcher`: runs the agent from the release `current` points at, and
rolls a switch back by itself when the new release does not prove itself in time.

The systemd unit runs this, never the agent directly: the launcher belongs to the base
install, is not replaced by updates, and is small enough to trust. Its loop:

- start `python -m dalaba_ops.cli agent` with `releases/current` first on the path
  (the base install's packages when there is no `current`);
- when the agent exits after writing `releases/switch.json` (edge_agent/updater.py), the
  new release is started on trial: it must write `releases/ok.json` (it connected and
  passed its self-test) within the offer's `self_test_s`; if it exits or the deadline
  passes first, `current` goes back to what it was, `releases/result.json` tells the old
  version to report `rolled_back`, and the old version is started again;
- any other exit is a crash: restarted after a short pause (systemd restarts the
  launcher itself if it dies).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from edge_agent.updater import LAUNCHER_ENV, Layout, read_json, write_json

log = logging.getLogger(__name__)

CRASH_PAUSE_S = 2.0
POLL_S = 0.2
STOP_GRACE_S = 15.0



def _die_with_parent() -> None:
    """In the agent, before it starts: SIGTERM when the launcher dies, however it dies.
    A launcher killed outright (-9, OOM) must not leave an orphaned agent holding the
    speaker and the broker identity while a new launcher starts another one."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Launcher:
    def __init__(self, config_path: Path, state_dir: Path, python: str = sys.executable) -> None:
        self.config_path = config_path
        self.layout = Layout(state_dir)
        self.python = python
        self._stopping = False
        self._child: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env[LAUNCHER_ENV] = "1"
        slot = self.layout.current_slot()
        if slot is not None:
            env["PYTHONPATH"] = str(slot)
        else:
            env.pop("PYTHONPATH", None)
        argv = [self.python, "-m", "dalaba_ops.cli", "agent", "--config", str(self.config_path)]
        log.info("starting agent from %s", slot or "the base install")
        # cwd: the state dir, so `-m` cannot pick up packages from wherever we were run.
        return subprocess.Popen(
            argv, env=env, cwd=self.layout.state_dir, preexec_fn=_die_with_parent
        )

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signum)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.layout.releases.mkdir(parents=True, exist_ok=True)
        while not self._stopping:
            switch = read_json(self.layout.switch_file)
            self._child = self._spawn()
            on_trial = switch is not None and read_json(self.layout.ok_file) is None
            if on_trial and switch is not None and not self._trial(switch):
                continue
            rc = self._child.wait()
            if self._stopping:
                return 0
            if read_json(self.layout.switch_file) is not None and (
                read_json(self.layout.ok_file) is None
            ):
                log.info("agent exited to switch to %s", self.layout.current_slot())
                continue
            log.warning("agent exited with %s: restarting in %.0f s", rc, CRASH_PAUSE_S)
            time.sleep(CRASH_PAUSE_S)
        return 0

    def _trial(self, switch: dict[str, object]) -> bool:
        """Watch a new release on trial. True: it passed (keep waiting on it)."""
        assert self._child is not None
        limit = float(switch.get("self_test_s", 120))  # type: ignore[arg-type]
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and not self._stopping:
            ok = read_json(self.layout.ok_file)
            if ok is not None and ok.get("version") == switch.get("version"):
                self.layout.switch_file.unlink(missing_ok=True)
                log.info("agent %s passed its self-test", switch.get("version"))
                return True
            rc = self._child.poll()
            if rc is not None:
                self._roll_back(switch, f"new version exited with {rc} before its self-test")
                return False
            time.sleep(POLL_S)
        if self._stopping:
            return True  # stopped during the trial: judged at the next start
        self._stop_child()
        self._roll_back(switch, f"new version not online and tested within {limit:.0f} s")
        return False

    def _stop_child(self) -> None:
        assert self._child is not None
        if self._child.poll() is None:
            self._child.terminate()
            try:
                self._child.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.wait()

    def _roll_back(self, switch: dict[str, object], reason: str) -> None:
        previous = switch.get("previous")
        self.layout.point_current_at(previous if isinstance(previous, str) else None)
        write_json(
            self.layout.result_file,
            {
                "rollout_id": switch.get("rollout_id"),
                "release_id": switch.get("release_id"),
                "version": switch.get("version"),
                "reason": reason,
            },
        )
        self.layout.switch_file.unlink(missing_ok=True)
        log.error("rolled back from %s: %s", switch.get("version"), reason)
