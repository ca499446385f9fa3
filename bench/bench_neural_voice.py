"""The offline neural voice beside espeak-ng: render time for 50 and 200 characters, in
one run, and the memory the neural voice holds.

For each text and each voice: synthesis alone (the backend, text already normalised) and
a whole announcement with an empty cache (normalise, synthesize, chime, loudness, Opus).
The two voices alternate run by run so both see the same load. Also: the neural voice's
first load (interpreters and front end) and the process' resident memory before it, after
it and at its peak (VmRSS / VmHWM from /proc).

Needs the extra dalaba[neural-voice] and the model files: `dalaba voice install-neural
--data-dir DIR --accept-non-commercial-licence` (DIR given here with --data-dir).

Run: .venv/bin/python bench/bench_neural_voice.py --data-dir DIR [--runs 5]
Writes bench/results/neural-voice-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import pathlib
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

with warnings.catch_warnings():
    # pydub probes for the removed stdlib audioop module (same filter as the test suite).
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    from controller.speech import AnnouncementRenderer, AnnouncementRequest
    from controller.speech.backends import EspeakBackend, SpeechBackend
    from controller.speech.neural import NeuralBackend, check_installed
    from controller.speech.normalize import normalize
    from controller.speech.service import DEFAULT_RATE

from bench_speech import NOTICE_200
from machine import machine_facts

NOTICE_50 = NOTICE_200[:50]


def memory_mb() -> dict[str, float]:
    """Resident memory now and at its peak, in MB."""
    found = {}
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def timed(coro: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await coro
    return time.perf_counter() - started, result


async def timed_cpu(coro: Any) -> tuple[float, float, Any]:
    """Wall and CPU seconds (this process, all threads: the neural voice runs in a worker
    thread; espeak-ng is a child process, so its CPU is not counted here)."""
    cpu = time.process_time()
    wall, result = await timed(coro)
    return wall, time.process_time() - cpu, result


async def bench(data_dir: pathlib.Path, runs: int, workdir: pathlib.Path) -> dict[str, Any]:
    espeak = EspeakBackend()
    neural = NeuralBackend(data_dir=data_dir)
    voices: dict[str, SpeechBackend] = {"espeak-ng": espeak, "neural": neural}
    out: dict[str, Any] = {"memory_before_load_mb": memory_mb()}
    load_s, _ = await timed(neural.synthesize("请注意。", lang="cmn", rate=0))
    out["neural_first_load_s"] = load_s
    out["memory_after_load_mb"] = memory_mb()
    texts = {"50": NOTICE_50, "200": NOTICE_200}
    rows: dict[str, dict[str, Any]] = {}
    for label, text in texts.items():
        spoken = normalize(text, lang="cmn")
        request = AnnouncementRequest(text=text, category="fire_prevention", priority="notice")
        synth: dict[str, list[float]] = {name: [] for name in voices}
        cpu: dict[str, list[float]] = {name: [] for name in voices}
        render: dict[str, list[float]] = {name: [] for name in voices}
        audio_s: dict[str, float] = {}
        for run in range(runs):
            for name, backend in voices.items():
                seconds, cpu_s, segment = await timed_cpu(
                    backend.synthesize(spoken, lang="cmn", rate=DEFAULT_RATE)
                )
                synth[name].append(seconds)
                cpu[name].append(cpu_s)
                audio_s[name] = len(segment) / 1000
                renderer = AnnouncementRenderer(
                    cache_dir=workdir / f"{label}-{name}-{run}",
                    backend_order=(name,),
                    backends=(backend,),
                    # Measure, not give up: the controller's 30 s cap is hit under heavy load.
                    synthesis_timeout_s=300,
                )
                seconds, result = await timed(renderer.render(request))
                assert result.voices[0].startswith(name), result.voices
                render[name].append(seconds)
        for name in voices:
            rows[f"{name} {label}"] = {
                "voice": name,
                "chars": len(text),
                "audio_s": audio_s[name],
                "synth_median_s": statistics.median(synth[name]),
                "synth_max_s": max(synth[name]),
                "synth_cpu_median_s": statistics.median(cpu[name]),
                "render_median_s": statistics.median(render[name]),
                "render_max_s": max(render[name]),
            }
    out["rows"] = rows
    out["memory_end_mb"] = memory_mb()
    return out


def cpu_cell(row: dict[str, Any]) -> str:
    if row["voice"] == "espeak-ng":
        return "(child process)"
    return f"{row['synth_cpu_median_s']:.3f}"


def report(results: dict[str, Any], command: str, runs: int, loads: tuple[str, str]) -> str:
    facts = machine_facts()
    lines = [
        f"# Neural voice beside espeak-ng, {datetime.date.today().isoformat()}",
        "",
        f"- Machine: {facts['nproc']} CPUs (`nproc`), {facts['cpu']}, {facts['ram']}; "
        f"Python {facts['python']}; LiteRT interpreter, 1 thread.",
        f"- Load: the machine was shared with other work during the run (load average "
        f"{loads[0]} at the start, {loads[1]} at the end, on 2 CPUs), so the times are "
        "upper bounds of what an idle server does.",
        f"- Command: `{command}`",
        f"- {runs} runs per text and voice, voices alternating. Texts: the first 50 and "
        "all 200 characters of bench_speech.py's fire-prevention notice; rate "
        f"{DEFAULT_RATE} %. Synthesis: the backend alone on normalised text; its CPU seconds "
        "are what the neural voice would take on an idle core. Render: a whole "
        "announcement with an empty cache (chime, loudness, Ogg/Opus).",
        "",
        "| voice | chars | audio s | synthesis s (median / max) | synthesis CPU s (median) "
        "| render s (median / max) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["rows"].values():
        lines.append(
            f"| {row['voice']} | {row['chars']} | {row['audio_s']:.1f} "
            f"| {row['synth_median_s']:.3f} / {row['synth_max_s']:.3f} "
            f"| {cpu_cell(row)} "
            f"| {row['render_median_s']:.3f} / {row['render_max_s']:.3f} |"
        )
    before, after, end = (
        results["memory_before_load_mb"],
        results["memory_after_load_mb"],
        results["memory_end_mb"],
    )
    lines += [
        "",
        f"- Neural voice first load (interpreters, front end, one short phrase): "
        f"{results['neural_first_load_s']:.2f} s.",
        f"- Resident memory of the process: {before['VmRSS']:.0f} MB before the neural "
        f"voice loads, {after['VmRSS']:.0f} MB after, {end['VmRSS']:.0f} MB at the end; "
        f"peak {end['VmHWM']:.0f} MB.",
        "",
    ]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=pathlib.Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results"
    )
    args = parser.parse_args()
    check_installed(args.data_dir)
    start_load = load_average()
    with tempfile.TemporaryDirectory(prefix="dalaba-bench-") as tmp:
        results = await bench(args.data_dir, args.runs, pathlib.Path(tmp))
    loads = (start_load, load_average())
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    text = report(results, command, args.runs, loads)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"neural-voice-{datetime.date.today().isoformat()}"
    stem.with_suffix(".md").write_text(text, encoding="utf-8")
    results.update(command=command, runs=args.runs, load_average=loads)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"written to {stem}.md and .json")


if __name__ == "__main__":
    asyncio.run(main())
