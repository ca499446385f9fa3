"""Live paging benchmark: mouth-to-speaker latency, skew across terminals, bytes per second.

A whole county (`dalaba_ops.demo.setup_county`: private Mosquitto, the controller, the
simulated fleet of real agents whose speakers record WAV files) with `--villages`
terminals. A WebSocket client stands in for the browser: it opens a live paging session
to the whole county and, once the chime has ended, sends 16 kHz PCM at the microphone's
pace: silence with `--bursts` short 1 kHz tone bursts. The instant each burst's first
chunk is handed to the socket is its "mouth" time (a real browser adds its capture
buffer, ~20-60 ms, on top). Afterwards every terminal's recording of the live stream is
searched for the bursts' onsets; a recording's sample n sounded at its `start_ms` +
n / 16 (true wall clock, see firmware_sim/hardware.py).

Reported: latency (speaker onset - mouth) median and max over all terminals and bursts;
per burst, the skew (latest - earliest terminal onset); the chime's start skew; the
stream's bytes per second per terminal (frames as published, and with MQTT framing).

Run: .venv/bin/python bench/bench_live_paging.py [--villages 164] [--fleet-processes 2]
Writes bench/results/live-paging-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import warnings

import aiohttp

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    from machine import machine_facts

    from controller.app import ControllerServer
    from controller.paging_live import FRAME_MS
    from dalaba import protocol as p
    from dalaba_ops.demo import setup_county
    from firmware_sim.fleet import Fleet, find_device_configs, spawn_fleet_processes

ROOT = Path(__file__).resolve().parent.parent
RATE = 16_000
CHUNK_MS = 20  # what the browser sends per message (a 1024-frame block at 48 kHz ≈ 21 ms)
BURST_MS = 120
GAP_MS = 1500
THRESHOLD = 2000  # |sample| above this is the burst (silence decodes to exactly 0)


def chunk(ms: int, hz: float | None, phase0: int = 0) -> bytes:
    n = RATE * ms // 1000
    if hz is None:
        return bytes(2 * n)
    return b"".join(
        struct.pack("<h", int(0.5 * 32767 * math.sin(2 * math.pi * hz * (phase0 + i) / RATE)))
        for i in range(n)
    )


def onsets(path: Path, start_ms: int, expected: int) -> list[float]:
    """Wall-clock instants (ms) where a burst begins after at least 500 ms of quiet."""
    with wave.open(str(path), "rb") as w:
        raw = w.readframes(w.getnframes())
    samples = struct.unpack(f"<{len(raw) // 2}h", raw)
    found: list[float] = []
    quiet_since = 0
    for i, s in enumerate(samples):
        if abs(s) > THRESHOLD:
            if i - quiet_since >= RATE // 2:
                found.append(start_ms + i * 1000 / RATE)
            quiet_since = i + 1
        if len(found) > expected:
            break
    return found


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    prepared = setup_county(work / "county", villages=args.villages, speech_backends=("espeak-ng",))
    data_dir = prepared.data_dir
    device_dirs = {c.parent.name: c.parent for c in find_device_configs(data_dir)}
    await prepared.broker.start_async()
    controller = ControllerServer(prepared.settings)
    await controller.start()
    http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {prepared.admin_token}"})
    fleet: Fleet | None = None
    children: list[subprocess.Popen[bytes]] = []
    try:
        if args.fleet_processes:
            children = spawn_fleet_processes(data_dir, args.fleet_processes, log_dir=work)
        else:
            fleet = Fleet.from_data_dir(data_dir)
            await fleet.start(connect_timeout_s=120)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            async with http.get(prepared.api_url + "/api/devices") as resp:
                body = await resp.json()
            if body["online"] == body["total"] == len(device_dirs):
                break
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError(f"{body['online']} of {len(device_dirs)} online")
        async with http.post(
            prepared.api_url + "/api/live-paging", json={"targets": {"all": True}}
        ) as resp:
            assert resp.status == 201, await resp.text()
            view = await resp.json()
        bid = view["id"]
        ws = await http.ws_connect(f"{prepared.api_url}/api/live-paging/{bid}/audio")
        await asyncio.sleep(max(0.0, (view["speak_from_ms"] - p.now_ms()) / 1000) + 0.3)
        mouths: list[int] = []
        t0 = time.monotonic()
        sent_ms = 0
        for b in range(args.bursts):
            plan = [(GAP_MS, None), (BURST_MS, 1000.0)]
            for ms, hz in plan:
                for k in range(ms // CHUNK_MS):
                    if hz is not None and k == 0:
                        mouths.append(p.now_ms())
                    await ws.send_bytes(chunk(CHUNK_MS, hz, k * RATE * CHUNK_MS // 1000))
                    sent_ms += CHUNK_MS
                    # The microphone's pace: ahead of the wall clock never, behind catch up.
                    await asyncio.sleep(max(0.0, t0 + sent_ms / 1000 - time.monotonic()))
            del b
        await ws.send_bytes(chunk(GAP_MS, None))
        await asyncio.sleep(GAP_MS / 1000)
        spoken_s = time.monotonic() - t0
        async with http.post(f"{prepared.api_url}/api/live-paging/{bid}/stop") as resp:
            stopped = await resp.json()
        await ws.close()
        # Frames have a fixed size: header, FRAME_MS of mu-law, signature; then 3 end frames.
        frames = stopped["frames"]
        header, sig = 4 + 4 + 8 + 1, p.LIVE_SIG_BYTES
        bytes_published = (frames - 3) * (header + RATE * FRAME_MS // 1000 + sig) + 3 * (
            header + sig
        )
        # Let every terminal finish and write its recording.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            async with http.get(f"{prepared.api_url}/api/broadcasts/{bid}") as resp:
                b_view = await resp.json()
            if all(d["state"] in ("done", "failed") for d in b_view["deliveries"]):
                break
            await asyncio.sleep(0.5)
        latencies: list[float] = []
        per_burst: list[list[float]] = [[] for _ in mouths]
        chime_starts: list[int] = []
        missing: dict[str, int] = {}
        states = {d["device_id"]: d["state"] for d in b_view["deliveries"]}
        for device_id, ddir in device_dirs.items():
            log_path = ddir / "plays.jsonl"
            lines = log_path.read_text().splitlines() if log_path.exists() else []
            entries = [json.loads(line) for line in lines if bid in line]
            chime_starts += [e["start_ms"] for e in entries if e["media_sha256"] != "live"]
            lives = [e for e in entries if e["media_sha256"] == "live"]
            if not lives:
                missing[device_id] = len(mouths)
                continue
            found = onsets(ddir / lives[0]["wav"], lives[0]["start_ms"], len(mouths))
            # Each burst is the onset within GAP_MS after its mouth instant; none there:
            # that burst was not heard (its frames came too late and became silence).
            for i, mouth in enumerate(mouths):
                heard = [t for t in found if mouth <= t < mouth + GAP_MS]
                if not heard:
                    missing[device_id] = missing.get(device_id, 0) + 1
                    continue
                latencies.append(heard[0] - mouth)
                per_burst[i].append(heard[0])
        skews = [max(x) - min(x) for x in per_burst if x]
        per_terminal_bps = bytes_published / spoken_s
        topic_len = len(p.Topics.live(bid))
        mqtt_overhead = 2 + 2 + topic_len + 1  # fixed header, topic length, topic, props len
        return {
            "terminals": len(device_dirs),
            "fleet_processes": args.fleet_processes,
            "bursts": len(mouths),
            "frame_ms": FRAME_MS,
            "playout_delay_ms": p.LiveStream(session_key="A" * 44).playout_delay_ms,
            "latency_ms": {
                "n": len(latencies),
                "median": round(statistics.median(latencies), 1) if latencies else None,
                "p95": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 1)
                if latencies
                else None,
                "max": round(max(latencies), 1) if latencies else None,
                "min": round(min(latencies), 1) if latencies else None,
            },
            "burst_skew_ms": {
                "median": round(statistics.median(skews), 1) if skews else None,
                "max": round(max(skews), 1) if skews else None,
            },
            "chime_start_skew_ms": max(chime_starts) - min(chime_starts) if chime_starts else None,
            "bytes_per_s_per_terminal": round(per_terminal_bps),
            "bytes_per_s_per_terminal_with_mqtt": round(
                per_terminal_bps + mqtt_overhead * frames / spoken_s
            ),
            "frames": frames,
            "spoken_s": round(spoken_s, 2),
            "states": {s: list(states.values()).count(s) for s in set(states.values())},
            "bursts_heard": len(latencies),
            "bursts_expected": len(mouths) * len(device_dirs),
            "terminals_missing_bursts": len(missing),
            "bursts_missing": missing,
            "stopped": stopped,
        }
    finally:
        if fleet is not None:
            await fleet.stop()
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
        await http.close()
        await controller.stop()
        prepared.broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--villages", type=int, default=164)
    parser.add_argument("--bursts", type=int, default=8)
    parser.add_argument("--fleet-processes", type=int, default=0)
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dalaba-live-bench-"))
    load_before = os.getloadavg()
    try:
        result = asyncio.run(run(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"] = machine_facts()
    result["loadavg_before"] = [round(x, 2) for x in load_before]
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["command"] = " ".join(["bench/bench_live_paging.py", *sys.argv[1:]])
    day = datetime.date.today().isoformat()
    suffix = f"-{args.villages}villages" + (
        f"-fleet{args.fleet_processes}p" if args.fleet_processes else ""
    )
    out = Path(args.out_dir) / f"live-paging-{day}{suffix}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
