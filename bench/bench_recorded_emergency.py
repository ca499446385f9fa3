"""Recorded emergencies: how long laying a recording out as an emergency takes.

Measures, on this machine, `AnnouncementRenderer.render_recording` (the emergency signal,
the drill framing spoken by espeak-ng, the recording repeated 3 times, loudness and
Opus encoding) for recordings of 10 and 60 seconds: cold (empty cache, framing spoken)
and cached. This is the time a duty officer waits between 试听 and hearing it, and what
a send of a recorded emergency adds before the command goes out. Writes
bench/results/recorded-emergency-<date>.md with the machine and the command.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pydub.generators import Sine

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import machine_facts

from controller.speech import AnnouncementRenderer, normalise_upload

RESULTS = Path(__file__).resolve().parent / "results"


async def stored_recording(seconds: int) -> bytes:
    tone = Sine(300).to_audio_segment(duration=seconds * 1000).set_frame_rate(16000)
    buf = io.BytesIO()
    tone.set_sample_width(2).export(buf, format="wav")
    return (await normalise_upload(buf.getvalue())).audio


async def one(seconds: int, runs: int) -> dict[str, float]:
    audio = await stored_recording(seconds)
    cold: list[float] = []
    cached: list[float] = []
    out_s = 0.0
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as cache:
            renderer = AnnouncementRenderer(cache_dir=Path(cache), backend_order=["espeak-ng"])
            kwargs = {"recording_sha256": "0" * 64, "priority": "emergency", "level": 2}
            t0 = time.perf_counter()
            result = await renderer.render_recording(audio, drill=True, repeat=3, **kwargs)
            cold.append(time.perf_counter() - t0)
            out_s = result.duration_ms / 1000
            t0 = time.perf_counter()
            await renderer.render_recording(audio, drill=True, repeat=3, **kwargs)
            cached.append((time.perf_counter() - t0) * 1000)
    return {
        "recording_s": seconds,
        "out_s": out_s,
        "cold_s": statistics.median(cold),
        "cold_max_s": max(cold),
        "cached_ms": statistics.median(cached),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = [await one(s, args.runs) for s in (10, 60)]
    facts = machine_facts()
    load = os.getloadavg()
    lines = [
        f"# Recorded emergency rendering, {dt.date.today().isoformat()}",
        "",
        f"- Machine: {facts['nproc']} CPUs, {facts['cpu']}, {facts['ram']}, "
        f"Python {facts['python']}",
        "- Load average at the end (1/5/15 min): "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other helpers' tests were running: "
        "the figures are upper bounds)",
        f"- Command: `.venv/bin/python bench/bench_recorded_emergency.py --runs {args.runs}`",
        "- Level II drill, repeat 3, framing by espeak-ng (cmn); cold = empty cache.",
        "",
        "| recording s | announcement s | cold render s (median / max) | cached ms (median) |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['recording_s']} | {r['out_s']:.1f} | {r['cold_s']:.2f} / "
            f"{r['cold_max_s']:.2f} | {r['cached_ms']:.2f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"recorded-emergency-{dt.date.today().isoformat()}.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
