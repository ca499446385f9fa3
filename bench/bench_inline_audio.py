"""What inline audio costs the broker's fan-out (issue 15: new audio to every terminal fast).

A short emergency's audio may travel inside the signed play command (`MediaRef.inline`,
`Settings.inline_media_max_bytes`), so a terminal holding the command holds the audio
and the controller needs no fetch lead. The price is paid by the broker: every
subscriber gets the whole envelope. This measures it with the project's own fan-out
baseline (bench/fanout.py: the product's Mosquitto configuration, N subscriber
connections through `dalaba.mqtt.MqttConnection` in child processes, QoS 1), once with a
by-reference play command (~1 KB) and once per inline size, and reports:

- the sealed envelope size for each audio size (real `protocol.seal`, Ed25519);
- per fan-out: the last subscriber's receipt after the publish (median, max over the
  messages), and bytes pushed (envelope × subscribers);
- per terminal: the CPU cost of taking inline audio in (base64 decode, SHA-256, cache
  write), measured on this machine with the agent's own `MediaCache`.

    .venv/bin/python bench/bench_inline_audio.py --subscribers 1000 10000 \
        --out bench/results/inline-audio-2026-11-30
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import secrets
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import fanout
from machine import machine_facts

from controller.settings import Settings
from dalaba import protocol as p
from dalaba.signing import Ed25519Signer
from edge_agent.cache import MediaCache

KIB = 1024
# By reference (0), and inline audio of these sizes: 64 KiB is the default limit
# (about 26 s of the renderer's 2.5 kB/s speech), 96 KiB the protocol's ceiling.
AUDIO_SIZES = (0, 16 * KIB, 32 * KIB, 64 * KIB, 96 * KIB)


def sealed_size(audio_bytes: int) -> int:
    """Bytes on the wire of a county-wide emergency play command with this much inline
    audio (0: by reference), signed as the controller signs it."""
    data = secrets.token_bytes(audio_bytes)
    media = p.MediaRef(
        sha256=hashlib.sha256(data).hexdigest(),
        url=secrets.token_hex(32),
        size=audio_bytes or 90_000,
        duration_ms=20_000,
        inline=base64.b64encode(data).decode() if audio_bytes else None,
    )
    body = p.PlayBody(
        broadcast_id=secrets.token_hex(16),
        priority=p.Priority.EMERGENCY,
        level=1,
        category="flood",
        title="防汛紧急通知：请沿河村民立即转移",
        media=media,
        start_at=p.now_ms() + 600,
        volume=100,
    )
    command = p.Command.new(body, p.Target(all=True), p.now_ms() + 3_600_000)
    return len(p.seal(command, Ed25519Signer.generate()))


# Real emergencies as an officer sends them (espeak-ng, the offline voice): how many fit.
EMERGENCIES = (
    ("短：山洪预警", "山洪预警：请沿河村民立即向高处转移。", "flood", 2, 1),
    ("短，播两遍", "山洪预警：请沿河村民立即向高处转移。", "flood", 2, 2),
    (
        "中：水库泄洪，播两遍",
        "紧急通知：上游水库将于一小时后泄洪，河道水位将快速上涨。请沿河各村村民立即"
        "停止河边作业，带好随身物品向高处转移，老人和儿童由村干部组织转移。",
        "flood",
        1,
        2,
    ),
    (
        "中：地震，播三遍",
        "地震预警：本县发生有感地震，请室内人员就近躲避，震后有序撤离到空旷地带，"
        "远离建筑物和电线杆。",
        "earthquake",
        1,
        3,
    ),
)


async def rendered_sizes(work: Path) -> list[dict[str, Any]]:
    """Bytes of real rendered emergencies, and whether each travels inline by default."""
    with warnings.catch_warnings():
        # pydub probes for the removed stdlib audioop module (as the test suite filters).
        warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
        from controller.speech import AnnouncementRenderer, AnnouncementRequest

    renderer = AnnouncementRenderer(cache_dir=work / "speech", backend_order=("espeak-ng",))
    limit = Settings(demo=True).inline_media_max_bytes
    rows = []
    for name, text, category, level, repeat in EMERGENCIES:
        request = AnnouncementRequest(
            text=text, category=category, priority="emergency", level=level, repeat=repeat
        )
        result = await renderer.render(request)
        rows.append(
            {
                "name": name,
                "chars": len(text),
                "repeat": repeat,
                "duration_ms": result.duration_ms,
                "bytes": len(result.audio),
                "inline_by_default": len(result.audio) <= limit,
            }
        )
    return rows


def terminal_intake_cost(audio_bytes: int, rounds: int, work: Path) -> dict[str, float]:
    """What one terminal spends taking inline audio in, as the agent does it
    (`Agent._store_inline` for audio it does not hold yet): base64 decode, then
    `MediaCache.put`, which checks the SHA-256 and writes the file. Microseconds,
    median and max over `rounds` terminals."""
    cache = MediaCache(work / f"cache-{audio_bytes}", max_bytes=64 * 1024 * 1024)
    times: list[float] = []
    for _ in range(rounds):
        data = secrets.token_bytes(audio_bytes)
        sha = hashlib.sha256(data).hexdigest()
        inline = base64.b64encode(data).decode()
        t0 = time.perf_counter()
        cache.put(sha, base64.b64decode(inline, validate=True))  # hashes, then writes
        times.append((time.perf_counter() - t0) * 1e6)
        cache.path_for(sha).unlink()
    return {"median_us": statistics.median(times), "max_us": max(times)}


async def fan_out(
    work: Path, subscribers: int, payload: int, messages: int, processes: int
) -> dict[str, Any]:
    # bench/fanout.py sizes its payload as a by-reference play command; here each run
    # gets the envelope size being measured.
    fanout.command_size = lambda: payload
    # A message must be through before the next is published, or they queue behind
    # each other and the figure is the queue, not the fan-out.
    interval = max(0.25, payload * subscribers / 150e6)
    return await fanout.run_fanout(
        work,
        subscribers,
        messages,
        subscriber_processes=processes,
        interval_s=interval,
        log=lambda m: print(m, flush=True),
    )


def table(data: dict[str, Any]) -> str:
    lines = [
        "| audio inline | envelope | subscribers | last receipt median | max "
        "| pushed per message |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for run in data["fanout"]:
        audio = f"{run['audio_bytes'] // KIB} KiB" if run["audio_bytes"] else "none (by reference)"
        if "error" in run:
            lines.append(
                f"| {audio} | {run['envelope_bytes']} B | {run['subscribers']} | "
                f"{run['error']} | | |"
            )
            continue
        pushed = run["envelope_bytes"] * run["subscribers"] / 1e6
        lines.append(
            f"| {audio} | {run['envelope_bytes']:,} B | {run['subscribers']:,} | "
            f"{run['last_ms']['median']:.0f} ms | {run['last_ms']['max']:.0f} ms | "
            f"{pushed:,.1f} MB |"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1000])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(AUDIO_SIZES),
        help="inline audio bytes per run (0: by reference)",
    )
    parser.add_argument("--messages", type=int, default=8)
    parser.add_argument("--processes", type=int, default=2, help="subscriber processes")
    parser.add_argument("--out", help="write <out>.json (and print the table)")
    args = parser.parse_args()

    data: dict[str, Any] = {
        "machine": machine_facts(),
        "command": "python bench/bench_inline_audio.py " + " ".join(sys.argv[1:]),
        "envelopes": {str(n): sealed_size(n) for n in args.sizes},
        "limits": {
            "MAX_COMMAND_BYTES": p.MAX_COMMAND_BYTES,
            "MAX_INLINE_MEDIA_BYTES": p.MAX_INLINE_MEDIA_BYTES,
            "broker_max_packet_size": 262_144,
        },
        "fanout": [],
    }
    with tempfile.TemporaryDirectory(prefix="dalaba-inline-") as tmp:
        work = Path(tmp)
        data["rendered"] = await rendered_sizes(work)
        for row in data["rendered"]:
            print(json.dumps(row, ensure_ascii=False), flush=True)
        data["terminal_intake"] = {
            str(n): terminal_intake_cost(n, 200, work) for n in args.sizes if n
        }
        for subscribers in args.subscribers:
            for n in args.sizes:
                envelope = data["envelopes"][str(n)]
                messages = args.messages if subscribers <= 2000 else max(3, args.messages // 2)
                run: dict[str, Any] = {
                    "audio_bytes": n,
                    "envelope_bytes": envelope,
                    "subscribers": subscribers,
                }
                try:
                    result = await fan_out(
                        work / f"fan-{subscribers}-{n}",
                        subscribers,
                        envelope,
                        messages,
                        args.processes,
                    )
                    result.pop("raw_last_ms", None)
                    run.update(result)
                except Exception as exc:  # a run that fails is reported, not hidden
                    run["error"] = f"{type(exc).__name__}: {exc}"
                data["fanout"].append(run)
                print(json.dumps(run), flush=True)
    print(table(data))
    if args.out:
        out = Path(args.out + ".json")
        await asyncio.to_thread(out.write_text, json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
