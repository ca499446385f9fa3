"""CAP benchmark: POST /api/cap -> every targeted terminal playing, for the 164-village
county, in automatic mode and in review mode minus the human.

The county is the spine benchmark's (bench/bench_spine.py `CountyBench`: private
Mosquitto, the controller with SQLite and espeak-ng, the simulated fleet of real agents in
this process). A warning source `qxj` posts a CAP 1.2 暴雨预警 (Severe: level II) whose
`<area>` geocode is the county's code 430131, so it targets every terminal.

- **automatic, cached voice**: the source in automatic mode; the same warning text each
  time (a new identifier), so its audio is rendered once (warm-up) and already on every
  terminal. Timed from sending the POST to the last terminal's true sound start
  (plays.jsonl of the simulated speaker); the answer time and the controller's view
  (every delivery playing, GET every 20 ms) beside it.
- **review minus the human**: the source in review mode; the POST answers 202 with the
  request held; an officer's approval is sent at once. Timed from the POST, and from the
  approval, to the last sound start (the human's time excluded).

Each warning is cancelled (by a CAP Cancel from the source) once every terminal plays,
so the next starts at once. Targets of the county documents: 1 minute automatic, 5
minutes with review (docs/upstream.md).

Run: .venv/bin/python bench/bench_cap.py [--villages 164] [--runs 5]
Writes bench/results/cap-<date>.md and .json. Everything runs under a temporary directory
that is removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    from bench_spine import ACTIVE, CountyBench, log, now_ms
    from machine import machine_facts

ROOT = Path(__file__).resolve().parent.parent
BEIJING = datetime.timezone(datetime.timedelta(hours=8))
SENDER = "qxj.430131@cma.gov.cn"
TEXT = "预计未来3小时内全县降雨量将达50毫米以上，请沿河、低洼地带村民注意防范。"

ALERT = """<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier}</identifier>
  <sender>{sender}</sender>
  <sent>{sent}</sent>
  <status>Actual</status>
  <msgType>{msg_type}</msgType>
  <scope>Public</scope>{references}
  <info>
    <language>zh-CN</language>
    <category>Met</category>
    <event>暴雨</event>
    <urgency>Immediate</urgency>
    <severity>Severe</severity>
    <certainty>Likely</certainty>
    <expires>{expires}</expires>
    <senderName>示范县气象台</senderName>
    <headline>示范县气象台发布暴雨橙色预警信号</headline>
    <description>{text}</description>
    <area>
      <areaDesc>示范县</areaDesc>
      <geocode><valueName>行政区划代码</valueName><value>430131</value></geocode>
    </area>
  </info>
</alert>
"""


def cap(identifier: str, msg_type: str = "Alert", references: str = "") -> bytes:
    now = datetime.datetime.now(BEIJING)
    return ALERT.format(
        identifier=identifier,
        sender=SENDER,
        sent=now.isoformat(timespec="seconds"),
        msg_type=msg_type,
        references=f"\n  <references>{references}</references>" if references else "",
        expires=(now + datetime.timedelta(hours=1)).isoformat(timespec="seconds"),
        text=TEXT,
    ).encode()


class CapBench(CountyBench):
    token = ""

    async def post_cap(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        assert self.http is not None and self.prepared is not None
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/cap+xml"}
        async with self.http.post(
            self.prepared.api_url + "/api/cap", data=raw, headers=headers
        ) as resp:
            return resp.status, await resp.json()

    async def all_playing(self, bid: str, t0: float) -> float | None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            view = await self.api("GET", f"/api/broadcasts/{bid}?deliveries=0")
            if sum(n for s, n in view["summary"].items() if s in ACTIVE) == view["device_count"]:
                return now_ms() - t0
            await asyncio.sleep(0.02)
        return None

    async def one(self, i: int, mode: str) -> dict[str, Any]:
        identifier = f"bench-{mode}-{i}"
        raw = cap(identifier)
        t_send = now_ms()
        status, answer = await self.post_cap(raw)
        t_answer = now_ms()
        run: dict[str, Any] = {"mode": mode, "status": status, "answer_ms": t_answer - t_send}
        t_approve = None
        if mode == "review":
            if status != 202:
                raise RuntimeError(f"review: {status} {answer}")
            t_approve = now_ms()
            created = await self.api("POST", f"/api/approvals/{answer['approval_id']}/approve", {})
            run["approve_answer_ms"] = now_ms() - t_approve
            bid = created["id"]
        else:
            if status != 201:
                raise RuntimeError(f"automatic: {status} {answer}")
            bid = answer["broadcast_id"]
        run["villages"] = answer["villages"]
        run["ctrl_all_playing_ms"] = await self.all_playing(bid, t_send)
        # Stop it the way the source would: a CAP Cancel referencing it.
        sent = raw.split(b"<sent>")[1].split(b"</sent>")[0].decode()
        cancel = cap(f"{identifier}-c", "Cancel", f"{SENDER},{identifier},{sent}")
        status, cancelled = await self.post_cap(cancel)
        if cancelled.get("outcome") != "cancelled":
            raise RuntimeError(f"cancel: {status} {cancelled}")
        starts = await self._wait_plays(bid, timeout_s=20)
        run["terminals"] = len(self.device_dirs)
        run["plays_found"] = len(starts)
        if starts:
            run["last_sound_ms"] = max(starts.values()) - t_send
            run["first_sound_ms"] = min(starts.values()) - t_send
            if t_approve is not None:
                run["last_sound_after_approval_ms"] = max(starts.values()) - t_approve
        if len(starts) < len(self.device_dirs):
            run["error"] = f"only {len(starts)} of {len(self.device_dirs)} played"
        return run


def stats(runs: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(values)), "max": round(max(values))}


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    bench = CapBench(work, args.villages, 0)
    result: dict[str, Any] = {"villages": args.villages}
    try:
        log(f"county: setting up {args.villages} villages ...")
        await bench.start()
        result["terminals"] = len(bench.device_dirs)
        source = await bench.api(
            "POST",
            "/api/upstream/sources",
            {"id": "qxj", "name": "示范县气象台", "mode": "automatic"},
        )
        bench.token = source["token"]
        await asyncio.sleep(2.0)
        log("warm-up: renders the warning's audio and puts it on every terminal")
        result["warmup"] = await bench.one(0, "automatic")
        for mode in ("automatic", "review"):
            await bench.api("PATCH", "/api/upstream/sources/qxj", {"mode": mode})
            result[mode] = []
            for i in range(1, args.runs + 1):
                await asyncio.sleep(1.0)
                r = await bench.one(i, mode)
                result[mode].append(r)
                log(f"{mode} {i}: last sound {r.get('last_sound_ms', 0):.0f} ms after the POST")
    except Exception as exc:  # reported, not hidden
        logging.getLogger(__name__).exception("CAP benchmark failed")
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        await bench.stop()
    return result


def report(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"# CAP in -> every terminal playing ({data['date']})",
        "",
        f"Command: `{data['command']}`",
        f"Machine: {m['cpu']}, {m['nproc']} cores, {m['ram']}, {m['os']}, Python {m['python']}, "
        f"{m['mosquitto']}. Load average at start: {data['load_at_start']} (the machine is "
        "shared with other work: figures are upper bounds of what the software needs).",
        "",
        f"County: {data['result'].get('villages')} villages, {data['result'].get('terminals')} "
        "terminals (simulated fleet of real agents, one process), SQLite, espeak-ng. Each "
        "warning targets the whole county by its code 430131 (level II, Severe).",
        "",
        "| mode | runs | answer (ms) | controller shows all playing (ms) | last terminal sounding "
        "after the POST (ms) | ... after the approval (ms) |",
        "|---|---|---|---|---|---|",
    ]
    res = data["result"]
    for mode in ("automatic", "review"):
        runs = res.get(mode) or []
        if not runs:
            continue

        def cell(key: str, runs: list[dict[str, Any]] = runs) -> str:
            s = stats(runs, key)
            return "-" if s["median"] is None else f"{s['median']} (max {s['max']})"

        lines.append(
            f"| {mode} | {len(runs)} | {cell('answer_ms')} | {cell('ctrl_all_playing_ms')} | "
            f"{cell('last_sound_ms')} | {cell('last_sound_after_approval_ms')} |"
        )
    errors = [
        r["error"] for mode in ("automatic", "review") for r in res.get(mode) or [] if "error" in r
    ]
    if res.get("error"):
        errors.append(res["error"])
    lines += [
        "",
        "Median (max). The review row's POST-to-sound time includes the approval request sent "
        "at once after the 202: the human's listening and deciding is excluded.",
        "Targets in county documents: 60 000 ms automatic, 300 000 ms with review.",
        "",
        "Errors: " + ("; ".join(errors) if errors else "none"),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--villages", type=int, default=164)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    work = Path(tempfile.mkdtemp(prefix="dalaba-bench-cap-"))
    load = os.getloadavg()
    try:
        result = asyncio.run(run(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    date = datetime.date.today().isoformat()
    data = {
        "date": date,
        "command": shlex.join([".venv/bin/python", "bench/bench_cap.py", *sys.argv[1:]]),
        "machine": machine_facts(),
        "load_at_start": " ".join(f"{x:.2f}" for x in load),
        "result": result,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"cap-{date}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    (out / f"cap-{date}.md").write_text(report(data))
    print(report(data))


if __name__ == "__main__":
    main()
