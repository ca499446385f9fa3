"""The spine benchmark: API accepted -> every terminal playing, beside raw broker fan-out.

One run of this script, on one machine:

1. **Raw fan-out baseline.** A private Mosquitto with the product's configuration,
   one subscriber connection per terminal on the county-wide command topic (QoS 1),
   one publisher: publish -> last subscriber receives, over `--messages` messages,
   with the subscribers in this process and in `--fanout-processes` child processes
   (see bench/fanout.py).
2. **A whole county.** `dalaba_ops.demo.setup_county` (as the tests' `make_county`): private
   Mosquitto, the controller (SQLite, espeak-ng, ffmpeg) and the simulated fleet of real
   agents, in this process (or `--fleet-processes` `dalaba sim` processes). Then
   `--runs` county-wide emergency broadcasts of the same short text (**cached**: its
   audio rendered and already on every terminal) and `--runs` of a new text each
   (**fresh**: rendered by espeak-ng and fetched by every terminal).

Per broadcast, from the moment the POST is sent: the 201 answer; the last terminal's
true sound start (`plays.jsonl` of the simulated speaker); the controller showing every
delivery `playing` or `done` (GET every 20 ms); the spread of sound starts across
terminals. The delivery transitions (terminal time `at`, controller receive time `rx`)
say where the time goes. Each broadcast is cancelled once all are playing, so the next
one starts at once (equal emergencies would queue behind each other).

Target (the design brief): every terminal playing within 1 s of the push, cached audio.

Run: .venv/bin/python bench/bench_spine.py [--villages 164] [--runs 5] [--tls]
Writes bench/results/spine-<date>.md and .json (spine-<date>-<N>villages.* for other
sizes, ...-fleet<K>p.* with the terminals in K processes, ...-tls.* with `--tls`: the
county's broker, controller and terminals on MQTT over TLS, the raw fan-out still plain).
Everything runs under a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp

with warnings.catch_warnings():
    # pydub probes for the removed stdlib audioop module (same filter as the test suite).
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    from machine import machine_facts

    from controller.app import ControllerServer
    from dalaba_ops.demo import PreparedCounty, setup_county
    from firmware_sim.fleet import Fleet, find_device_configs, spawn_fleet_processes

from fanout import run_fanout

TARGET_MS = 1000.0
CACHED_TEXT = "请注意，河水上涨，沿河村民立即转移。"
FRESH_TEXT = "请注意，水库开闸泄洪，下游村民远离河道。这是第{}次通知。"
POLL_S = 0.020
RUN_TIMEOUT_S = 60.0
ACTIVE = {"playing", "done"}
FINAL = {"done", "failed", "rejected", "preempted", "expired", "cancelled"}
ROOT = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def now_ms() -> float:
    return time.time_ns() / 1e6  # wall clock, as plays.jsonl and the transitions use


def iso_ms(value: str | None) -> float | None:
    if value is None:
        return None
    return datetime.datetime.fromisoformat(value).timestamp() * 1000


def chinese_number(n: int) -> str:
    digits = "零一二三四五六七八九"
    if n < 10:
        return digits[n]
    tens, ones = divmod(n, 10)
    return (digits[tens] if tens > 1 else "") + "十" + (digits[ones] if ones else "")


def med_max(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "max": None}
    return {"median": statistics.median(values), "max": max(values)}


# ---------------------------------------------------------------------- the county


class CountyBench:
    def __init__(
        self,
        work: Path,
        villages: int,
        fleet_processes: int,
        poll_s: float = POLL_S,
        tls: bool = False,
    ) -> None:
        self.work = work
        self.tls = tls
        self.poll_s = poll_s
        self.villages = villages
        self.fleet_processes = fleet_processes
        self.prepared: PreparedCounty | None = None
        self.controller: ControllerServer | None = None
        self.fleet: Fleet | None = None
        self.children: list[subprocess.Popen[bytes]] = []
        self.http: aiohttp.ClientSession | None = None
        self.device_dirs: dict[str, Path] = {}
        self.startup: dict[str, float] = {}
        self.broker_log: dict[str, Any] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        t0 = time.monotonic()
        self.prepared = setup_county(
            self.work / "county",
            villages=self.villages,
            speech_backends=("espeak-ng",),
            tls=self.tls,
        )
        self.startup["setup_s"] = time.monotonic() - t0
        data_dir = self.prepared.data_dir
        self.device_dirs = {p.parent.name: p.parent for p in find_device_configs(data_dir)}
        await self.prepared.broker.start_async()
        self.controller = ControllerServer(self.prepared.settings)
        await self.controller.start()
        self.http = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.prepared.admin_token}"},
            timeout=aiohttp.ClientTimeout(total=60),
        )
        t1 = time.monotonic()
        if self.fleet_processes > 0:
            self._spawn_fleet(data_dir)
        else:
            # No WAV files: plays.jsonl is all the benchmark reads.
            self.fleet = Fleet.from_data_dir(data_dir, record_wav=False)
            await self.fleet.start(connect_timeout_s=60 + len(self.device_dirs) / 20)
        await self._wait_online(60 + len(self.device_dirs) / 20)
        self.startup["fleet_online_s"] = time.monotonic() - t1

    def _spawn_fleet(self, data_dir: Path) -> None:
        self.children += spawn_fleet_processes(
            data_dir, self.fleet_processes, record_wav=False, log_dir=self.work
        )

    async def _wait_online(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = await self.api("GET", "/api/devices")
            if body["total"] and body["online"] == body["total"] == len(self.device_dirs):
                return
            for child in self.children:
                if child.poll() is not None:
                    raise RuntimeError(f"a fleet process exited with {child.returncode}")
            await asyncio.sleep(0.2)
        raise RuntimeError(
            f"only {body.get('online')} of {body.get('total')} terminals online after {timeout_s}s"
        )

    async def stop(self) -> None:
        if self.fleet is not None:
            await self.fleet.stop()
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                await asyncio.to_thread(child.wait, 20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self.http is not None:
            await self.http.close()
        if self.controller is not None:
            await self.controller.stop()
        if self.prepared is not None:
            self.prepared.broker.stop()
            try:
                lines = self.prepared.broker.files.log_file.read_text().splitlines()
            except OSError:
                lines = []
            dropped = [ln for ln in lines if "dropped" in ln.lower()]
            self.broker_log = {
                "warnings": len(lines),
                "dropped_lines": len(dropped),
                "examples": sorted({ln.split(": ", 1)[-1] for ln in dropped})[:5],
            }

    # ------------------------------------------------------------------ API

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        assert self.http is not None and self.prepared is not None
        async with self.http.request(method, self.prepared.api_url + path, json=body) as resp:
            data = await resp.json()
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: {resp.status} {data}")
            return data

    # ------------------------------------------------------------------ one broadcast

    async def broadcast(self, text: str) -> dict[str, Any]:
        """Push to the whole county, wait until all play, cancel, measure."""
        assert self.http is not None and self.prepared is not None
        body = {
            "text": text,
            "category": "flood",
            "priority": "emergency",
            "level": 1,
            "targets": {"all": True},
            "repeat": 1,
        }
        t_send = now_ms()
        async with self.http.post(self.prepared.api_url + "/api/broadcasts", json=body) as resp:
            created = await resp.json()
            t_201 = now_ms()
            if resp.status != 201:
                raise RuntimeError(f"POST /api/broadcasts: {resp.status} {created}")
        bid = created["id"]
        run: dict[str, Any] = {
            "broadcast_id": bid,
            "text_chars": len(text),
            "terminals": created["device_count"],
            "dispatch": created["dispatch"],
            "sent_epoch_ms": t_send,
            "api_ms": t_201 - t_send,
            "start_at_lead_ms": created["start_at_ms"] - t_send,
        }

        # (c) the controller's view, as the console would poll it
        polls, get_ms, view, t_ctrl = 0, [], {}, None
        progress: list[tuple[int, int]] = []  # (ms from the POST, deliveries shown playing)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            g0 = now_ms()
            # The counts only, as a live view would poll them: the full delivery list
            # of a county with thousands of terminals is a much heavier read.
            view = await self.api("GET", f"/api/broadcasts/{bid}?deliveries=0")
            g1 = now_ms()
            polls += 1
            get_ms.append(g1 - g0)
            summary = view["summary"]
            active = sum(n for s, n in summary.items() if s in ACTIVE)
            if not progress or progress[-1][1] != active:
                progress.append((round(g1 - t_send), active))
            if active == view["device_count"]:
                t_ctrl = g1
                break
            if any(n for s, n in summary.items() if s in FINAL - ACTIVE):
                break
            await asyncio.sleep(self.poll_s)
        run["polls"] = polls
        run["ctrl_progress"] = progress
        run["get_ms"] = med_max(get_ms)
        run["ctrl_all_playing_ms"] = None if t_ctrl is None else t_ctrl - t_send
        run["summary_at_poll_end"] = {k: v for k, v in view.get("summary", {}).items() if v}
        if t_ctrl is None:
            run["error"] = f"not all playing: {run['summary_at_poll_end']}"

        # Stop the plays so the next broadcast starts at once; a cut play is logged too.
        await self.api("POST", f"/api/broadcasts/{bid}/cancel")
        starts = await self._wait_plays(bid, timeout_s=20)
        final_view = await self._wait_final(bid, timeout_s=20)
        self._measure(run, t_send, starts, created["start_at_ms"], final_view)
        return run

    async def _wait_plays(self, bid: str, timeout_s: float) -> dict[str, int]:
        starts: dict[str, int] = {}
        offsets: dict[str, int] = {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for device_id, d in self.device_dirs.items():
                if device_id in starts:
                    continue
                path = d / "plays.jsonl"
                try:
                    with path.open("rb") as f:
                        f.seek(offsets.get(device_id, 0))
                        data = f.read()
                except FileNotFoundError:
                    continue
                for line in data.splitlines():
                    entry = json.loads(line)
                    if entry["broadcast_id"] == bid:
                        starts[device_id] = int(entry["start_ms"])
                        break
            if len(starts) == len(self.device_dirs):
                break
            await asyncio.sleep(0.1)
        return starts

    async def _wait_final(self, bid: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        view: dict[str, Any] = {}
        while time.monotonic() < deadline:
            view = await self.api("GET", f"/api/broadcasts/{bid}?deliveries=0")
            if sum(n for s, n in view["summary"].items() if s in FINAL) == view["device_count"]:
                break
            await asyncio.sleep(0.1)
        return await self.api("GET", f"/api/broadcasts/{bid}")

    def _measure(
        self,
        run: dict[str, Any],
        t_send: float,
        starts: dict[str, int],
        start_at_ms: int,
        view: dict[str, Any],
    ) -> None:
        run["plays_found"] = len(starts)
        if len(starts) < len(self.device_dirs):
            run.setdefault(
                "error", f"only {len(starts)} of {len(self.device_dirs)} terminals played"
            )
        if starts:
            s = list(starts.values())
            run["first_sound_ms"] = min(s) - t_send
            run["last_sound_ms"] = max(s) - t_send
            run["spread_ms"] = max(s) - min(s)
            run["late_vs_start_at_ms"] = {"min": min(s) - start_at_ms, "max": max(s) - start_at_ms}

        # Where the time goes: per-delivery transitions (`at` terminal, `rx` controller).
        first: dict[str, list[tuple[float, float | None]]] = {}
        for d in view.get("deliveries", []):
            seen: set[str] = set()
            for t in d["transitions"]:
                if t["state"] in seen:
                    continue
                seen.add(t["state"])
                first.setdefault(t["state"], []).append((iso_ms(t["at"]), iso_ms(t.get("rx"))))  # type: ignore[arg-type]

        def at(state: str) -> list[float]:
            return [a - t_send for a, _ in first.get(state, [])]

        def rx(state: str) -> list[float]:
            return [r - t_send for _, r in first.get(state, []) if r is not None]

        stages: dict[str, Any] = {}
        for state in ("sent", "received", "fetched", "playing"):
            values = at(state)
            if values:
                stages[f"{state}_at"] = {
                    "min": min(values),
                    "median": statistics.median(values),
                    "max": max(values),
                }
        for state in ("received", "playing"):
            values = rx(state)
            if values:
                stages[f"{state}_rx"] = {
                    "min": min(values),
                    "median": statistics.median(values),
                    "max": max(values),
                }
        run["stages_ms_from_send"] = stages
        # A delivery that ends without a `received`/`fetched`/`playing` transition: the
        # terminal's report of it never reached the controller's database.
        deliveries = len(view.get("deliveries", []))
        run["reports_missing"] = {
            state: deliveries - len(first.get(state, []))
            for state in ("received", "fetched", "playing")
            if deliveries - len(first.get(state, []))
        }
        run["final_summary"] = {k: v for k, v in view.get("summary", {}).items() if v}
        if "playing_rx" in stages:
            run["ctrl_last_playing_rx_ms"] = stages["playing_rx"]["max"]


async def run_county(
    work: Path,
    villages: int,
    runs: int,
    fleet_processes: int,
    poll_s: float = POLL_S,
    tls: bool = False,
) -> dict[str, Any]:
    bench = CountyBench(work, villages, fleet_processes, poll_s, tls)
    result: dict[str, Any] = {
        "villages": villages,
        "fleet_processes": fleet_processes,
        "poll_ms": poll_s * 1000,
        "tls": tls,
    }
    try:
        log(f"county: setting up {villages} villages ...")
        await bench.start()
        result["terminals"] = len(bench.device_dirs)
        result["startup"] = {k: round(v, 2) for k, v in bench.startup.items()}
        log(f"county: {len(bench.device_dirs)} terminals online ({result['startup']})")
        await asyncio.sleep(2.0)  # let the join traffic (status, telemetry) settle

        log("warm-up: first broadcast of the cached text (renders and distributes it)")
        result["warmup"] = await bench.broadcast(CACHED_TEXT)
        await asyncio.sleep(1.0)
        result["cached"], result["fresh"] = [], []
        for i in range(runs):
            r = await bench.broadcast(CACHED_TEXT)
            result["cached"].append(r)
            log(_line("cached", i, r))
            await asyncio.sleep(1.0)
        for i in range(runs):
            r = await bench.broadcast(FRESH_TEXT.format(chinese_number(i + 1)))
            result["fresh"].append(r)
            log(_line("fresh", i, r))
            await asyncio.sleep(1.0)
    except Exception as exc:  # reported, not hidden: the report says what broke
        logging.getLogger(__name__).exception("county benchmark failed")
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        await bench.stop()
        result["broker_log"] = bench.broker_log
    return result


def _line(kind: str, i: int, r: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.0f}"

    return (
        f"{kind} #{i + 1}: 201 {f(r['api_ms'])} ms, last sound {f(r.get('last_sound_ms'))} ms, "
        f"controller all playing {f(r.get('ctrl_all_playing_ms'))} ms, "
        f"spread {f(r.get('spread_ms'))} ms" + (f"  ERROR {r['error']}" if "error" in r else "")
    )


# ---------------------------------------------------------------------- the report


def machine() -> dict[str, str]:
    import paho.mqtt

    return {
        **machine_facts(),
        "paho_mqtt": paho.mqtt.__version__,
        "aiohttp": aiohttp.__version__,
    }


def _vals(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in runs if r.get(key) is not None]


def _stage(runs: list[dict[str, Any]], stage: str, stat: str) -> list[float]:
    return [
        r["stages_ms_from_send"][stage][stat]
        for r in runs
        if stage in r.get("stages_ms_from_send", {})
    ]


def _mm(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{statistics.median(values):.0f} / {max(values):.0f}"


def render_report(data: dict[str, Any]) -> str:
    m = data["machine"]
    county = data["county"]
    fan = data["fanout"]
    cached, fresh = county.get("cached", []), county.get("fresh", [])
    terminals = county.get("terminals", data["terminals"])
    lines = [
        f"# Spine benchmark: API → every terminal playing, {data['date']}",
        "",
        f"- Machine: {m['nproc']} CPUs (`nproc`), {m['cpu']}, {m['ram']} RAM; {m['os']}",
        f"- Versions: {m['mosquitto']}; Python {m['python']}; paho-mqtt {m['paho_mqtt']}; "
        f"aiohttp {m['aiohttp']}",
        f"- Command: `{data['command']}` (took {data['elapsed_s']:.0f} s)",
        f"- County: {county['villages']} villages, {terminals} terminals "
        f"(real `edge_agent`s on simulated hardware, "
        + (
            f"{county['fleet_processes']} `dalaba sim` processes"
            if county["fleet_processes"]
            else "in the benchmark's own process and event loop, beside the controller"
        )
        + "); controller with SQLite and espeak-ng; private Mosquitto with the product's "
        "config, password file and ACL"
        + (
            "; **MQTT over TLS** (the broker's TLS-only listener, TLS 1.2+, an ECDSA P-256 "
            "certificate of the county's CA; controller and every terminal verify it). "
            "The raw fan-out below stays plain MQTT."
            if county.get("tls")
            else "; plain MQTT."
        ),
        "- Broadcast: county-wide (`targets.all`), priority emergency level I, `repeat: 1`, "
        f"{len(cached)} runs each. **Cached**: `{CACHED_TEXT}` again after a warm-up push "
        "(audio rendered and on every terminal; controller lead `sync_lead_ms` 600). "
        f"**Fresh**: `{FRESH_TEXT.format('N')}` with a new N each run (espeak-ng render, "
        "every terminal fetches it; lead 600 + `fetch_lead_ms` 900). Each run is "
        "cancelled once the controller shows all playing.",
        "- Clock: every time is measured from the moment the POST is sent. *Sound starts* "
        "is the true start in each simulated speaker's `plays.jsonl`; *controller shows* is "
        "the first GET /api/broadcasts/{id}?deliveries=0 "
        f"(polled every {county.get('poll_ms', 20):.0f} ms) "
        "with every delivery "
        "`playing` or `done`.",
        f"- Raw fan-out: the same broker config, {fan['inproc'].get('subscribers', '?')} "
        "subscribers of `dalaba/v1/cmd/all` (QoS 1, `dalaba.mqtt.MqttConnection`, "
        f"{fan['inproc'].get('payload_bytes', '?')}-byte payload = a signed play command), "
        f"one publisher, {fan['inproc'].get('messages', '?')} messages; time from publish to "
        "the last subscriber's receipt.",
        "",
        "All times in ms, **median / max** over the runs.",
        "",
    ]
    fi, fp = fan.get("inproc", {}), fan.get("procs", {})

    def fan_cell(r: dict[str, Any]) -> str:
        if "last_ms" not in r:
            return "– " + (f"({r['error']})" if "error" in r else "")
        return f"{r['last_ms']['median']:.0f} / {r['last_ms']['max']:.0f}"

    np_ = fp.get("subscriber_processes", data["fanout_processes"])
    header = (
        "| | raw fan-out, subscribers in-process | raw fan-out, subscribers in "
        + (f"{np_} processes" if np_ else "other processes (not run)")
        + " | cached broadcast | fresh broadcast |"
    )
    rows = [
        header,
        "| --- | --- | --- | --- | --- |",
        f"| API answer (201; fresh: includes the render) | – | – | "
        f"{_mm(_vals(cached, 'api_ms'))} | {_mm(_vals(fresh, 'api_ms'))} |",
        f"| message / command at the last terminal (fan-out: publish → last receipt; "
        f"broadcast: POST → last `received`) | {fan_cell(fi)} | {fan_cell(fp)} | "
        f"{_mm(_stage(cached, 'received_at', 'max'))} | "
        f"{_mm(_stage(fresh, 'received_at', 'max'))} |",
        f"| first terminal's sound starts | – | – | {_mm(_vals(cached, 'first_sound_ms'))} | "
        f"{_mm(_vals(fresh, 'first_sound_ms'))} |",
        f"| **last terminal's sound starts** | – | – | **{_mm(_vals(cached, 'last_sound_ms'))}** | "
        f"**{_mm(_vals(fresh, 'last_sound_ms'))}** |",
        f"| controller received the last `playing` (rx) | – | – | "
        f"{_mm(_vals(cached, 'ctrl_last_playing_rx_ms'))} | "
        f"{_mm(_vals(fresh, 'ctrl_last_playing_rx_ms'))} |",
        f"| **controller shows every terminal playing** (GET poll) | – | – | "
        f"**{_mm(_vals(cached, 'ctrl_all_playing_ms'))}** | "
        f"**{_mm(_vals(fresh, 'ctrl_all_playing_ms'))}** |",
        f"| sync: spread of sound starts (max − min) | – | – | {_mm(_vals(cached, 'spread_ms'))} | "
        f"{_mm(_vals(fresh, 'spread_ms'))} |",
    ]
    lines += rows

    sound = _vals(cached, "last_sound_ms")
    ctrl = _vals(cached, "ctrl_all_playing_ms")
    complete = bool(cached) and all("error" not in r for r in cached)

    def met(values: list[float]) -> str:
        if not values or not complete:
            return "not measured (runs failed)" if not complete else "not measured"
        if max(values) <= TARGET_MS:
            return f"**met** (max {max(values):.0f} ms)"
        if statistics.median(values) <= TARGET_MS:
            return f"**met by the median only** (max {max(values):.0f} ms)"
        return f"**not met** (median {statistics.median(values):.0f} ms)"

    lines += [
        "",
        f"Target, cached audio, every terminal within {TARGET_MS:.0f} ms of the API call: "
        f"sound {met(sound)}; the controller showing it {met(ctrl)}.",
        "",
        "## Where the time goes",
        "",
        "From the delivery transitions (`at`: terminal clock = true clock here; `rx`: "
        "controller receive time); median / max over the runs of each run's value, "
        "ms from the POST.",
        "",
        "| step | cached | fresh |",
        "| --- | --- | --- |",
    ]

    def stage_row(label: str, stage: str, stat: str) -> str:
        return (
            f"| {label} | {_mm(_stage(cached, stage, stat))} | {_mm(_stage(fresh, stage, stat))} |"
        )

    lines += [
        stage_row(
            "deliveries recorded as `sent` (request, targets, render/cache lookup)",
            "sent_at",
            "max",
        ),
        "| 201 answer (after the DB insert, signing and the broker's PUBACK) | "
        f"{_mm(_vals(cached, 'api_ms'))} | {_mm(_vals(fresh, 'api_ms'))} |",
        stage_row("first terminal `received` (verified the signed command)", "received_at", "min"),
        stage_row("last terminal `received`", "received_at", "max"),
        stage_row("last terminal `fetched` (cache hit or HTTP fetch, decode)", "fetched_at", "max"),
        "| `start_at` chosen by the controller | "
        f"{_mm(_vals(cached, 'start_at_lead_ms'))} | {_mm(_vals(fresh, 'start_at_lead_ms'))} |",
        stage_row("last terminal `playing` (its own clock)", "playing_at", "max"),
        stage_row("controller received the last `playing` (rx)", "playing_rx", "max"),
        "| controller shows all playing (GET poll) | "
        f"{_mm(_vals(cached, 'ctrl_all_playing_ms'))} | "
        f"{_mm(_vals(fresh, 'ctrl_all_playing_ms'))} |",
    ]
    late = [r["late_vs_start_at_ms"]["max"] for r in cached if "late_vs_start_at_ms" in r]
    late_f = [r["late_vs_start_at_ms"]["max"] for r in fresh if "late_vs_start_at_ms" in r]
    getms = [r["get_ms"]["median"] for r in cached + fresh if r.get("get_ms", {}).get("median")]
    lines += [
        f"| last sound start after `start_at` (lateness) | {_mm(late)} | {_mm(late_f)} |",
        "",
        f"GET /api/broadcasts/{{id}}?deliveries=0 (the counts) with {terminals} deliveries took "
        f"{_mm(getms)} ms (median / max of the per-run medians) while polling.",
    ]
    problems = [
        f"{kind} run {i + 1}: {r['error']}"
        for kind, runs in (
            ("warm-up", [county.get("warmup", {})]),
            ("cached", cached),
            ("fresh", fresh),
        )
        for i, r in enumerate(runs)
        if r and "error" in r
    ]
    if "error" in county:
        problems.insert(0, f"county: {county['error']}")
    for key, r in (("in-process", fi), ("processes", fp)):
        if "error" in r:
            problems.append(f"fan-out ({key}): {r['error']}")
        elif r.get("missing_receipts"):
            problems.append(f"fan-out ({key}): {r['missing_receipts']} receipts missing")
    for kind, runs in (("cached", cached), ("fresh", fresh)):
        lost = [r["reports_missing"] for r in runs if r.get("reports_missing")]
        if lost:
            total = sum(sum(x.values()) for x in lost)
            problems.append(
                f"{kind}: in {len(lost)} of {len(runs)} runs, {total} delivery reports never "
                "reached the controller's database (deliveries without that transition; per run: "
                + "; ".join(", ".join(f"{k} {v}" for k, v in x.items()) for x in lost)
                + "). The console shows those terminals stuck until a later report arrives."
            )
    blog = county.get("broker_log", {})
    if blog.get("dropped_lines"):
        problems.append(
            f"county broker log: {blog['dropped_lines']} 'dropped' lines, e.g. "
            + "; ".join(f"`{e}`" for e in blog["examples"])
        )
    if problems:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in problems]
    lines += [
        "",
        "## Per run",
        "",
        "| run | 201 | last received | last sound | ctrl all playing | spread | GET median "
        "| reports lost |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(v: Any) -> str:
        return "–" if v is None else f"{v:.0f}"

    for kind, runs in (
        ("warm-up", [county.get("warmup")] if county.get("warmup") else []),
        ("cached", cached),
        ("fresh", fresh),
    ):
        for i, r in enumerate(runs):
            recv = r.get("stages_ms_from_send", {}).get("received_at", {}).get("max")
            lines.append(
                f"| {kind} {i + 1} | {fmt(r.get('api_ms'))} | {fmt(recv)} | "
                f"{fmt(r.get('last_sound_ms'))} | {fmt(r.get('ctrl_all_playing_ms'))} | "
                f"{fmt(r.get('spread_ms'))} | {fmt(r.get('get_ms', {}).get('median'))} | "
                + (", ".join(f"{k} {v}" for k, v in r.get("reports_missing", {}).items()) or "0")
                + " |"
            )
    raw = ", ".join(f"{x:.0f}" for x in fi.get("raw_last_ms", []))
    if raw:
        lines += ["", f"Raw fan-out (in-process), last receipt per message, ms: {raw}."]
    raw = ", ".join(f"{x:.0f}" for x in fp.get("raw_last_ms", []))
    if raw:
        lines += ["", f"Raw fan-out ({np_} processes), last receipt per message, ms: {raw}."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- main


async def main_async(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from controller.county import County

    terminals = sum(v.terminals for v in County.for_size(args.villages).villages)
    data: dict[str, Any] = {"terminals": terminals, "fanout": {}}
    for key, procs in (("inproc", 0), ("procs", args.fanout_processes)):
        if key == "procs" and procs <= 0:
            continue
        log(
            f"raw fan-out: {terminals} subscribers, "
            + (f"{procs} processes" if procs else "in-process")
        )
        try:
            data["fanout"][key] = await run_fanout(
                work / f"fanout-{key}",
                terminals,
                args.messages,
                subscriber_processes=procs,
                log=log,
            )
        except Exception as exc:
            logging.getLogger(__name__).exception("fan-out failed")
            data["fanout"][key] = {"error": f"{type(exc).__name__}: {exc}"}
    data["county"] = await run_county(
        work, args.villages, args.runs, args.fleet_processes, args.poll_ms / 1000, args.tls
    )
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--villages", type=int, default=164)
    parser.add_argument("--runs", type=int, default=5, help="broadcasts per scenario")
    parser.add_argument("--messages", type=int, default=20, help="raw fan-out messages")
    parser.add_argument(
        "--fanout-processes",
        type=int,
        default=2,
        help="also run the raw fan-out with the subscribers in this many processes (0: skip)",
    )
    parser.add_argument(
        "--fleet-processes",
        type=int,
        default=0,
        help="run the terminals in this many `dalaba sim` processes (0: in this process)",
    )
    parser.add_argument(
        "--poll-ms",
        type=float,
        default=POLL_S * 1000,
        help="interval between GET /api/broadcasts/{id} polls",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="the county (broker, controller, terminals) on MQTT over TLS; fan-out stays plain",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    started = time.monotonic()
    date = datetime.date.today().isoformat()
    command = ".venv/bin/python bench/bench_spine.py " + shlex.join(sys.argv[1:])
    tmp = tempfile.mkdtemp(prefix="dalaba-spine-")
    try:
        data = asyncio.run(main_async(args, Path(tmp)))
    finally:
        if args.keep:
            log(f"data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    data.update(
        date=date,
        command=command.strip(),
        machine=machine(),
        elapsed_s=time.monotonic() - started,
        fanout_processes=args.fanout_processes,
        target_ms=TARGET_MS,
    )
    report = render_report(data)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"spine-{date}" + ("" if args.villages == 164 else f"-{args.villages}villages")
    if args.fleet_processes:
        stem += f"-fleet{args.fleet_processes}p"
    if args.tls:
        stem += "-tls"
    (out_dir / f"{stem}.md").write_text(report)
    (out_dir / f"{stem}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(report)
    log(f"wrote {out_dir / stem}.md and .json")


if __name__ == "__main__":
    main()
