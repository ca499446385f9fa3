"""The terminal agent's cost on the `linux` board driver: resident memory and CPU of a
`dalaba agent` process at idle and while playing, on this machine.

Setup: a private Mosquitto with the product's config and ACL, an in-process media
server and the controller's MQTT side signing commands (the rig of
tests/unit/test_agent_truth.py), and one `dalaba agent` process whose device file names
the `linux` board: ALSA PCM `dalaba_file` (a `file` PCM over `null`, from an asoundrc
written here), 48 kHz mono, no mixer control (so the agent scales samples itself), no
GPIO lines, an empty sysfs tree. aplay is the real one.

Phases, each `--seconds` long, measured from /proc every `SAMPLE_S`:
- idle: connected, telemetry every 60 s, nothing to play;
- playing, notice: a tone at the normal volume (70): the samples are scaled in Python;
- playing, emergency: a tone at volume 100: the samples go to aplay untouched (what a
  board with a mixer control does at any volume).
CPU is (utime + stime) over wall time, of the agent and of its aplay child apart; RSS
is VmRSS. The decode (one ffmpeg run per announcement, before the start) is counted
in neither: it ends before the phase starts.

Run: .venv/bin/python bench/bench_agent_linux.py [--seconds 30]
Writes bench/results/agent-linux-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import machine_facts  # noqa: E402
from dalaba import protocol as p  # noqa: E402
from edge_agent.boards.settings import LinuxBoard  # noqa: E402
from tests.unit.test_agent_truth import Rig  # noqa: E402
from tests.unit.test_board_linux import write_asoundrc  # noqa: E402

SAMPLE_S = 0.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def children(pid: int, name: str) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in kids:
            try:
                if Path(f"/proc/{kid}/comm").read_text().strip() == name:
                    found.append(int(kid))
            except OSError:
                pass
    return found


async def measure(pid: int, seconds: float) -> dict[str, Any]:
    """CPU share and RSS of the agent and of the aplay it runs, over `seconds`."""
    t0, c0 = time.monotonic(), cpu_s(pid)
    assert c0 is not None
    rss: list[float] = []
    aplay_cpu: dict[int, tuple[float, float]] = {}  # pid -> (first, last) cpu seconds
    aplay_rss: list[float] = []
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(SAMPLE_S)
        value = rss_mib(pid)
        if value is not None:
            rss.append(value)
        for kid in children(pid, "aplay"):
            used = cpu_s(kid)
            if used is not None:
                first = aplay_cpu.get(kid, (used, used))[0]
                aplay_cpu[kid] = (first, used)
            kid_rss = rss_mib(kid)
            if kid_rss is not None:
                aplay_rss.append(kid_rss)
    wall = time.monotonic() - t0
    c1 = cpu_s(pid)
    assert c1 is not None
    aplay_used = sum(last - first for first, last in aplay_cpu.values())
    return {
        "wall_s": round(wall, 2),
        "agent_cpu_pct": round(100 * (c1 - c0) / wall, 2),
        "agent_rss_mib_median": round(statistics.median(rss), 1),
        "agent_rss_mib_max": round(max(rss), 1),
        "aplay_cpu_pct": round(100 * aplay_used / wall, 2) if aplay_cpu else None,
        "aplay_rss_mib_max": round(max(aplay_rss), 1) if aplay_rss else None,
    }


def tone(path: Path, seconds: float) -> bytes:
    subprocess.run(
        [
            *("ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi"),
            *("-i", f"sine=frequency=440:duration={seconds}"),
            *("-ar", "48000", "-ac", "1", "-c:a", "libopus", "-b:a", "32k", str(path)),
        ],
        check=True,
    )
    return path.read_bytes()


async def run(seconds: float, tmp: Path) -> dict[str, Any]:
    played = tmp / "played.raw"
    write_asoundrc(tmp / "home", played, append=False)
    os.environ["HOME"] = str(tmp / "home")
    (tmp / "sysfs").mkdir()
    rig = Rig(tmp, devices=("d-1",))
    await rig.start()
    try:
        board = LinuxBoard(
            kind="linux", pcm="dalaba_file", sample_rate=48_000, sysfs_root=tmp / "sysfs"
        )
        config = rig.config("d-1", board=board)
        proc = rig.spawn_agent(config)
        await rig.wait(lambda: any(s.online for s in rig.statuses("d-1")), 60, "agent online")
        await asyncio.sleep(5)  # start-up settles (imports, first telemetry)
        results: dict[str, Any] = {"idle": await measure(proc.pid, seconds)}
        media = tone(tmp / "tone.ogg", seconds + 6)
        for n, (phase, priority) in enumerate(
            (("playing_notice", p.Priority.NOTICE), ("playing_emergency", p.Priority.EMERGENCY))
        ):
            bid = f"b-{n}"
            await rig.send("d-1", rig.play(bid, media, start_in_ms=3_000, priority=priority))
            await rig.wait_state("d-1", bid, p.DeliveryState.PLAYING, 60)
            await asyncio.sleep(1)
            results[phase] = await measure(proc.pid, seconds)
            await rig.wait_state("d-1", bid, p.DeliveryState.DONE, 60)
        results["written_bytes"] = played.stat().st_size
        proc.send_signal(2)
        proc.wait(30)
        return results
    finally:
        await rig.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-agent-linux-") as tmp:
        results = asyncio.run(run(args.seconds, Path(tmp)))
    load_after = os.getloadavg()
    facts = machine_facts()
    aplay = subprocess.run(["aplay", "--version"], capture_output=True, text=True).stdout.strip()
    command = shlex.join([".venv/bin/python", "bench/bench_agent_linux.py", *sys.argv[1:]])
    today = datetime.date.today().isoformat()
    out = REPO / "bench" / "results"
    record = {
        "date": today,
        "command": command,
        "machine": facts,
        "aplay": aplay,
        "load_before": load_before,
        "load_after": load_after,
        "took_s": round(time.monotonic() - started, 1),
        "results": results,
    }
    (out / f"agent-linux-{today}.json").write_text(json.dumps(record, indent=2) + "\n")
    rows = []
    for phase in ("idle", "playing_notice", "playing_emergency"):
        r = results[phase]
        aplay_cpu = "—" if r["aplay_cpu_pct"] is None else r["aplay_cpu_pct"]
        aplay_rss = "—" if r["aplay_rss_mib_max"] is None else r["aplay_rss_mib_max"]
        rows.append(
            f"| {phase.replace('_', ', ')} | {r['agent_cpu_pct']} "
            f"| {r['agent_rss_mib_median']} ({r['agent_rss_mib_max']}) "
            f"| {aplay_cpu} | {aplay_rss} |"
        )
    before = " ".join(f"{x:.2f}" for x in load_before)
    after = " ".join(f"{x:.2f}" for x in load_after)
    md = f"""# Agent cost on the `linux` board driver, {today}

- Machine: {facts["nproc"]} CPUs (`nproc`), {facts["cpu"]}, {facts["ram"]} RAM; \
{facts["os"]}; load average {before} before, {after} after (the machine is shared: \
other work ran beside it, so CPU figures are upper bounds)
- Versions: Python {facts["python"]}; {facts["mosquitto"]}; {aplay}
- Command: `{command}` (took {record["took_s"]:.0f} s)
- One `dalaba agent` process, board `linux`: PCM `dalaba_file` (ALSA `file` over \
`null`), 48 kHz mono S16_LE, no mixer control, no GPIO lines, an empty sysfs tree; a \
private Mosquitto and the controller's side in the benchmark process. Each phase \
{args.seconds:.0f} s, sampled every {SAMPLE_S} s from /proc.

| phase | agent CPU % (one core) | agent RSS MiB, median (max) | aplay CPU % | aplay RSS MiB |
| --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Reading it: "notice" plays at volume 70 with no mixer control, so the agent scales every
sample in Python; "emergency" plays at 100 and hands the samples to aplay untouched,
which is also what any volume costs on a board whose device file names a mixer control
(amixer sets the volume once). A board's DAC behind aplay costs what it costs there; a
`file` PCM writes {results["written_bytes"] / 1e6:.1f} MB to disk here, in aplay's share.
"""
    (out / f"agent-linux-{today}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
