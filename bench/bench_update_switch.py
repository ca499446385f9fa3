"""How long an agent update's switch and an automatic rollback take, on this machine.

Runs tests/integration/test_updates.py (three terminals under `dalaba agent-launcher`,
a good release in two waves, then a broken one that rolls back) and reads the
launchers' logs it leaves behind:

- switch: from the old agent saying "switching to agent X" (it exits) to the launcher
  seeing the new one pass its self-test (it started, connected, verified the signed
  offer): the time a terminal is not listening to commands during an update (a
  broadcast sent meanwhile waits in the broker);
- rollback: from "switching to agent Y" (the broken release) to the launcher's "rolled
  back from Y" (the broken agent exited at start), after which the old version starts.

    .venv/bin/python bench/bench_update_switch.py

Writes bench/results/update-switch-<date>.{json,md}. A timing, not a test: nothing here
asserts; the figures are what this (shared, loaded) machine did.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ edge_agent\.\w+: (.*)$")


def _at(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def measure(log: Path) -> tuple[list[float], list[float]]:
    switches: list[float] = []
    rollbacks: list[float] = []
    leaving: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        match = LINE.match(line)
        if match is None:
            continue
        at, text = _at(match.group(1)), match.group(2)
        if m := re.match(r"switching to agent (\S+):", text):
            leaving[m.group(1)] = at
        elif (m := re.match(r"agent (\S+) passed its self-test", text)) and m.group(1) in leaving:
            switches.append(at - leaving.pop(m.group(1)))
        elif (m := re.match(r"rolled back from (\S+):", text)) and m.group(1) in leaving:
            rollbacks.append(at - leaving.pop(m.group(1)))
    return switches, rollbacks


def main() -> int:
    load_before = os.getloadavg()
    base = Path(tempfile.mkdtemp(prefix="bench-update-"))
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
        "tests/integration/test_updates.py", f"--basetemp={base}",
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    took = time.monotonic() - started
    load_after = os.getloadavg()
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
        return 1
    switches: list[float] = []
    rollbacks: list[float] = []
    # pytest also links `updatescurrent` to the numbered folder: read each folder once.
    runs = [d for d in base.glob("updates*") if d.is_dir() and not d.is_symlink()]
    for log in sorted(log for run in runs for log in run.glob("logs/d-*.log")):
        s, r = measure(log)
        switches += s
        rollbacks += r
    today = dt.date.today().isoformat()
    data = {
        "date": today,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in load_after],
        },
        "command": "python bench/bench_update_switch.py  (runs: " + " ".join(command[1:]) + ")",
        "took_s": round(took, 1),
        "switch_s": [round(x, 2) for x in switches],
        "rollback_s": [round(x, 2) for x in rollbacks],
    }
    out = REPO / "bench" / "results"
    (out / f"update-switch-{today}.json").write_text(json.dumps(data, indent=2) + "\n")

    def row(name: str, values: list[float]) -> str:
        if not values:
            return f"| {name} | 0 | – | – | – |"
        return (
            f"| {name} | {len(values)} | {min(values):.1f} | {statistics.median(values):.1f} "
            f"| {max(values):.1f} |"
        )

    md = [
        f"# Agent update: switch and automatic rollback, {today}",
        "",
        f"- Machine: {data['machine']['cpus']} CPUs, {data['machine']['platform']}, Python "
        f"{data['machine']['python']}; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after (shared with other helpers' tests: upper bounds)",
        f"- Command: `.venv/bin/python bench/bench_update_switch.py` (took {took:.0f} s): "
        "runs tests/integration/test_updates.py and reads its launchers' logs",
        "",
        "| interval | n | min s | median s | max s |",
        "| --- | --- | --- | --- | --- |",
        row("switch: old agent exits → new agent passed its self-test", switches),
        row("rollback: old agent exits → broken release rolled back", rollbacks),
        "",
        "Most of a switch is a new Python process importing the agent on a loaded machine;",
        "a broadcast sent in that window waits in the broker (persistent session, QoS 1) and",
        "plays when the new agent connects (on the 2 s late grid if its instant has passed).",
        "The switch itself never starts while a play sounds, waits or is due within 60 s.",
        "",
    ]
    (out / f"update-switch-{today}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
