"""Proof of sound: how closely the agent's output watch measures the seconds a play was
not heard, and what watching costs.

accuracy: K simulated terminals (firmware_sim) play 4 s each through `SimSpeaker.play`
  with a `SilenceWatch` on the simulated current sense; the speaker line is cut at a
  random instant 0.5-2.5 s in. Error = the watch's `silent_ms` minus the simulator's
  own record of the silence (what really went out).
cost: N watches sampling a monitor that always carries sound, for S seconds, in one
  event loop: CPU seconds per watched second (a terminal watches one play at a time).

Usage: .venv/bin/python bench/bench_output_watch.py [--terminals 50] [--watches 1000]
       [--seconds 10] [--out bench/results/output-watch-DATE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine_facts
from edge_agent.hardware import PreparedAudio
from edge_agent.output_watch import SilenceWatch
from firmware_sim.audio import SAMPLE_RATE
from firmware_sim.hardware import SimHardware

PLAY_MS = 4_000


async def one_terminal(folder: Path, seed: int) -> tuple[int, int]:
    hw = SimHardware.create(folder / str(seed))
    hw.speaker.record_wav = False
    await hw.amplifier.power_on()
    audio = PreparedAudio("c" * 64, PLAY_MS, b"\1\0" * (SAMPLE_RATE * PLAY_MS // 1000))
    watch = SilenceWatch(hw.output_monitor)
    cut_after = random.Random(seed).uniform(0.5, 2.5)

    async def cut() -> None:
        await asyncio.sleep(cut_after)
        hw.speaker.line_cut = True

    cutter = asyncio.create_task(cut())
    try:
        await hw.speaker.play(
            audio, start_at_ms=hw.clock.now_ms(), broadcast_id="b", on_started=watch.begin
        )
    finally:
        watch.stop()
        await cutter
    verdict = watch.verdict(PLAY_MS)
    (record,) = hw.speaker.plays()
    return (verdict[0] if verdict else 0), int(record.get("silent_ms", 0))  # type: ignore[call-overload]


class AlwaysCarrying:
    def carrying(self) -> bool:
        return True

    def last_clip(self, max_ms: int) -> bytes | None:
        return None


async def cost(watches: int, seconds: float) -> dict[str, float]:
    monitor = AlwaysCarrying()
    ws = [SilenceWatch(monitor) for _ in range(watches)]
    cpu0, wall0 = time.process_time(), time.monotonic()
    for w in ws:
        w.begin()
    await asyncio.sleep(seconds)
    for w in ws:
        w.stop()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    return {
        "watches": watches,
        "seconds": round(wall, 2),
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_watched_s": round(1000 * cpu / (watches * wall), 4),
        "core_share_at_this_many": round(cpu / wall, 3),
    }


async def main() -> tuple[str, dict[str, object]]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--terminals", type=int, default=50)
    ap.add_argument("--watches", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", default=f"bench/results/output-watch-{time.strftime('%Y-%m-%d')}")
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        pairs = await asyncio.gather(*(one_terminal(Path(tmp), i) for i in range(args.terminals)))
    errors = [watched - truth for watched, truth in pairs]
    spent = await cost(args.watches, args.seconds)
    result: dict[str, object] = {
        "machine": machine_facts(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "command": " ".join(["bench/bench_output_watch.py", *sys.argv[1:]]),
        "accuracy": {
            "terminals": args.terminals,
            "play_ms": PLAY_MS,
            "truth_silent_ms_median": statistics.median(t for _, t in pairs),
            "error_ms_median": statistics.median(errors),
            "error_ms_min": min(errors),
            "error_ms_max": max(errors),
            "abs_error_ms_max": max(abs(e) for e in errors),
        },
        "cost": spent,
    }
    return args.out, result


if __name__ == "__main__":
    out, result = asyncio.run(main())
    Path(out + ".json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(json.dumps(result, indent=2, ensure_ascii=False))
