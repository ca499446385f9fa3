"""The simulated fleet's own cost: idle CPU, memory and GC pauses of N terminals, and the
time from publishing one signed command to every terminal holding it verified.

No controller: a private Mosquitto with the product's configuration (password file,
ACL, client id = username), N provisioned terminals under WORK/sim (device files as
`dalaba sim` reads them), and the fleet run by `dalaba sim` in P processes with batched
records (firmware_sim.records), once per MQTT client (lean, paho). The command is a
real sealed cancel for a broadcast nobody has (signed with a test Ed25519 key the
terminals trust): each agent verifies it, checks the address and replay memory, and
records `verified` with the machine's wall clock; nothing is fetched or played.

    .venv/bin/python bench/bench_fleet.py --terminals 10000 --processes 2 \\
        --variants lean,paho --out bench/results/fleet-2026-11-30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import SecretStr

from bench.machine import machine_facts
from dalaba import protocol as p
from dalaba.mqtt import BrokerAddress
from dalaba.mqtt_lean import LeanMqttConnection
from dalaba.signing import Ed25519Signer
from dalaba_ops.broker import (
    CONTROLLER_USER,
    DeviceAccount,
    MosquittoProcess,
    free_port,
    write_acl,
    write_broker_config,
    write_password_file,
)
from edge_agent.config import DeviceConfig
from firmware_sim.fleet import loopback_address, settle_heap, spawn_fleet_processes
from firmware_sim.records import records_dir

CONTROLLER_PASSWORD = "bench-fleet-controller"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def provision(work: Path, terminals: int, port: int, public_pem: str) -> list[DeviceAccount]:
    accounts = []
    for i in range(terminals):
        device_id, village_id = f"d-{i + 1:05d}", f"v-{i // 2 + 1:05d}"
        township_id = f"t-{i // 60 + 1:03d}"
        password = f"bench-pw-{i}"
        accounts.append(DeviceAccount(device_id, village_id, township_id, password))
        DeviceConfig(
            device_id=device_id,
            village_id=village_id,
            township_id=township_id,
            broker_url=f"mqtt://127.0.0.1:{port}",
            mqtt_username=device_id,
            mqtt_password=SecretStr(password),
            media_base_url="http://127.0.0.1:9/media/",  # nothing is fetched
            controller_public_keys=[public_pem],
            state_dir=work / "sim" / device_id / "state",
            telemetry_interval_s=60.0,
        ).save(work / "sim" / device_id / "device.json")
    return accounts


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Observer:
    """The controller's account: counts terminals online from their retained status."""

    def __init__(self, port: int) -> None:
        self.online: set[str] = set()
        self.conn = LeanMqttConnection(
            client_id=CONTROLLER_USER,
            broker=BrokerAddress("127.0.0.1", port, CONTROLLER_USER, CONTROLLER_PASSWORD),
            on_message=self._on_status,
            subscriptions=[(p.Topics.ALL_DEVICE_STATUS, 1)],
            session_expiry_s=0,
        )

    def _on_status(self, _topic: str, payload: bytes) -> None:
        status = json.loads(payload)
        (self.online.add if status.get("online") else self.online.discard)(status["device_id"])


async def wait_until(check: Any, timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(poll_s)


def count_verified(data_dir: Path, command_id: str) -> tuple[int, list[int]]:
    """(terminals that verified it, their verified_at_ms), from the batched files."""
    seen: dict[str, int] = {}
    for path in records_dir(data_dir).glob("*-verified.jsonl"):
        for line in path.read_text().splitlines():
            if command_id in line:
                entry = json.loads(line)
                seen.setdefault(entry["device_id"], entry["verified_at_ms"])
    return len(seen), list(seen.values())


async def run_variant(
    work: Path,
    port: int,
    signer: Ed25519Signer,
    terminals: int,
    processes: int,
    mqtt: str,
    idle_s: float,
    freeze_heap: bool,
    fanouts: int,
) -> dict[str, Any]:
    name = f"{mqtt}-{processes}p{'' if freeze_heap else '-nofreeze'}"
    log(f"{name}: starting {terminals} terminals in {processes} processes")
    for old in records_dir(work).glob("*"):
        old.unlink()
    observer = Observer(port)
    await observer.conn.start()
    started = time.monotonic()
    log_dir = work / "logs" / name
    log_dir.mkdir(parents=True, exist_ok=True)
    children = spawn_fleet_processes(
        work, processes, record_wav=False, log_dir=log_dir, mqtt=mqtt, records="batched",
        freeze_heap=freeze_heap,
    )  # fmt: skip
    result: dict[str, Any] = {
        "variant": name, "mqtt": mqtt, "processes": processes, "loadavg": os.getloadavg()
    }  # fmt: skip
    try:
        await wait_until(
            lambda: (
                len(observer.online) >= terminals or any(c.poll() is not None for c in children)
            ),
            900,
            "every terminal online",
            poll_s=0.5,
        )
        if any(c.poll() is not None for c in children):
            raise RuntimeError(f"a simulator exited: see {log_dir}/sim-*.log")
        result["all_online_s"] = round(time.monotonic() - started, 1)
        log(f"{name}: all online after {result['all_online_s']} s; settling 10 s")
        await asyncio.sleep(10)  # start-up work done, gc frozen, first timers spread
        pids = [c.pid for c in children]
        cpu0, t0 = [cpu_s(pid) for pid in pids], time.monotonic()
        await asyncio.sleep(idle_s)
        elapsed = time.monotonic() - t0
        cores = [(cpu_s(pid) - c0) / elapsed for pid, c0 in zip(pids, cpu0, strict=True)]
        result["idle_window_s"] = round(elapsed, 1)
        result["idle_cores_total"] = round(sum(cores), 3)
        result["idle_cores_per_process"] = [round(c, 3) for c in cores]
        result["rss_mb_per_process"] = [round(rss_mb(pid), 1) for pid in pids]
        result["rss_mb_total"] = round(sum(result["rss_mb_per_process"]), 1)
        log(f"{name}: idle {result['idle_cores_total']} cores, RSS {result['rss_mb_total']} MB")
        runs = []
        for i in range(fanouts):
            command = p.Command.new(
                p.CancelBody(broadcast_id=secrets.token_hex(16), reason="bench"),
                p.Target(all=True),
                p.now_ms() + 600_000,
            )
            payload = p.seal(command, signer)
            sent_ms = time.time_ns() / 1e6
            observer.conn.publish(p.Topics.COMMAND_ALL, payload, qos=1)
            await wait_until(
                lambda c=command.id: count_verified(work, c)[0] >= terminals,
                120,
                "every terminal verified",
                poll_s=0.25,
            )
            _, at = count_verified(work, command.id)
            lat = sorted(a - sent_ms for a in at)
            runs.append(
                {
                    "first_ms": round(lat[0], 1),
                    "median_ms": round(statistics.median(lat), 1),
                    "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 1),
                    "last_ms": round(lat[-1], 1),
                }
            )
            log(f"{name}: fan-out {i + 1}: every terminal verified after {runs[-1]['last_ms']} ms")
            await asyncio.sleep(3)
        result["verified"] = runs
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=120)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        await observer.conn.stop()
    gcs = [json.loads(f.read_text()) for f in sorted(records_dir(work).glob("*-gc.json"))]
    result["gc"] = gcs
    return result


async def bare_subscribe(args: argparse.Namespace) -> None:
    """Child process of the bare fan-out: terminals' accounts and source addresses, the
    lean client, no agent. Writes `<out>.ready` once all are connected, then for each
    message the wall-clock ms each subscriber got it, to `<out>.<n>.json`."""
    work = Path(args.work)
    paths = sorted((work / "sim").glob("*/device.json"))[args.share_index :: args.share_total]
    got: dict[int, list[float]] = {}

    def receiver() -> Callable[[str, bytes], None]:
        def on_message(_topic: str, payload: bytes) -> None:
            got.setdefault(len(payload), []).append(time.time_ns() / 1e6)

        return on_message

    conns = []
    for i, path in enumerate(paths):
        index = args.share_index + i * args.share_total
        cfg = DeviceConfig.load(path)
        conns.append(
            LeanMqttConnection(
                client_id=cfg.device_id + "-bare",
                broker=cfg.broker_address(),
                on_message=receiver(),
                subscriptions=[(p.Topics.COMMAND_ALL, 1)],
                session_expiry_s=0,
                bind_address=loopback_address(index),
            )
        )
    await asyncio.gather(*(c.start(timeout_s=None) for c in conns))
    while not all(c.connected for c in conns):
        await asyncio.sleep(0.1)
    settle_heap()
    out = Path(args.out)
    out.with_suffix(".ready").write_text(str(len(conns)))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    out.with_suffix(".json").write_text(json.dumps({str(k): v for k, v in got.items()}))
    await asyncio.gather(*(c.stop() for c in conns), return_exceptions=True)


SCRIPT = Path(__file__).resolve()


def spawn_bare(work: Path, processes: int) -> list[subprocess.Popen[bytes]]:
    children = []
    for i in range(processes):
        cmd = [sys.executable, str(SCRIPT), "bare-subscribe", "--work", str(work),
               "--share-index", str(i), "--share-total", str(processes),
               "--out", str(work / f"bare-{i}.out")]  # fmt: skip
        with (work / f"bare-{i}.log").open("wb") as log_file:
            children.append(subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT))
    return children


async def run_bare(
    work: Path, port: int, terminals: int, processes: int, fanouts: int
) -> dict[str, Any]:
    """The floor: the same broker, accounts and payload size, subscribers with nothing
    behind them. Each fan-out uses a payload of its own size to tell them apart."""
    name = f"bare-{processes}p"
    log(f"{name}: starting {terminals} bare subscribers in {processes} processes")
    observer = Observer(port)
    await observer.conn.start()
    children = spawn_bare(work, processes)
    result: dict[str, Any] = {"variant": name, "processes": processes}
    runs: list[dict[str, Any]] = []
    try:
        ready = [work / f"bare-{i}.ready" for i in range(processes)]
        await wait_until(lambda: all(r.exists() for r in ready), 600, "bare subscribers ready")
        await asyncio.sleep(5)
        size = len(p.seal(p.Command.new(
            p.CancelBody(broadcast_id=secrets.token_hex(16), reason="bench"),
            p.Target(all=True), p.now_ms() + 600_000), Ed25519Signer.generate()))  # fmt: skip
        sent = []
        for i in range(fanouts):
            sent.append((size + i, time.time_ns() / 1e6))
            observer.conn.publish(p.Topics.COMMAND_ALL, b" " * (size + i), qos=1)
            await asyncio.sleep(5)
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait(timeout=120)
        await observer.conn.stop()
    times: dict[str, list[float]] = {}
    for i in range(processes):
        for k, v in json.loads((work / f"bare-{i}.json").read_text()).items():
            times.setdefault(k, []).extend(v)
    for size_i, sent_ms in sent:
        lat = sorted(t - sent_ms for t in times.get(str(size_i), []))
        if len(lat) < terminals:
            runs.append({"received": len(lat)})
            continue
        runs.append(
            {
                "first_ms": round(lat[0], 1),
                "median_ms": round(statistics.median(lat), 1),
                "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 1),
                "last_ms": round(lat[-1], 1),
            }
        )
        log(f"{name}: every subscriber received after {runs[-1]['last_ms']} ms")
    result["received"] = runs
    return result


def write_markdown(out: Path, data: dict[str, Any]) -> None:
    lines = [
        "# Simulated fleet: idle cost and verified fan-out",
        "",
        f"Command: `{data['command']}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in data["machine"].items()),
        "",
        f"{data['terminals']} terminals, one private Mosquitto, no controller; idle window "
        f"{data['idle_s']} s after all were online and 10 s of settling. `verified`: one "
        "sealed county-wide command published, ms until each terminal's agent had verified "
        "it (its own `verified` record, machine wall clock).",
        "",
        "| variant | online after s | idle cores | RSS MB (total) | gen2 GCs / max ms "
        "| verified: median / p99 / last ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["results"]:
        if r["variant"].startswith("bare"):
            rec = "; ".join(
                f"{v['median_ms']} / {v['p99_ms']} / {v['last_ms']}"
                if "last_ms" in v
                else f"only {v['received']} received"
                for v in r["received"]
            )
            lines.append(f"| {r['variant']} (no agent: received) | | | | | {rec} |")
            continue
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} | | | | |")
            continue
        gen2 = [g["gen2"] for g in r["gc"]]
        gc_text = " + ".join(f"{g['count']} / {g['max_ms']}" for g in gen2) or "n/a"
        ver = "; ".join(f"{v['median_ms']} / {v['p99_ms']} / {v['last_ms']}" for v in r["verified"])
        lines.append(
            f"| {r['variant']} | {r['all_online_s']} | {r['idle_cores_total']} "
            f"({', '.join(map(str, r['idle_cores_per_process']))}) | {r['rss_mb_total']} "
            f"| {gc_text} | {ver} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    port = free_port()
    signer = Ed25519Signer.generate()
    log(f"provisioning {args.terminals} terminals under {work}")
    accounts = provision(work, args.terminals, port, signer.public_pem().decode())
    files = write_broker_config(work / "broker", port)
    write_password_file(files.password_file, CONTROLLER_PASSWORD, accounts)
    write_acl(files.acl_file, accounts)
    broker = MosquittoProcess(files, port)
    await broker.start_async()
    results = []
    try:
        for variant in args.variants.split(","):
            mqtt, *options = variant.split("-")
            processes = next(
                (int(o[:-1]) for o in options if o.endswith("p") and o[:-1].isdigit()),
                args.processes,
            )
            if mqtt == "bare":
                results.append(await run_bare(work, port, args.terminals, processes, args.fanouts))
                continue
            try:
                results.append(
                    await run_variant(
                        work,
                        port,
                        signer,
                        args.terminals,
                        processes,
                        mqtt,
                        args.idle_s,
                        "nofreeze" not in variant,
                        args.fanouts,
                    )
                )
            except RuntimeError as exc:
                log(f"{variant}: {exc}")
                results.append({"variant": variant, "error": str(exc)})
    finally:
        broker.stop()
    return {
        "command": " ".join(["python", "bench/bench_fleet.py", *sys.argv[1:]]),
        "machine": machine_facts(),
        "terminals": args.terminals,
        "idle_s": args.idle_s,
        "results": results,
    }


def main() -> None:
    if sys.argv[1:2] == ["bare-subscribe"]:
        sub = argparse.ArgumentParser()
        sub.add_argument("--work", required=True)
        sub.add_argument("--share-index", type=int, required=True)
        sub.add_argument("--share-total", type=int, required=True)
        sub.add_argument("--out", required=True)
        asyncio.run(bare_subscribe(sub.parse_args(sys.argv[2:])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terminals", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--variants",
        default="lean,paho",
        help="comma-separated: lean|paho|bare[-<P>p][-nofreeze], e.g. bare-2p,lean-2p,paho-2p "
        "(bare: subscribers with the lean client and no agent, the floor)",
    )
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--fanouts", type=int, default=3)
    parser.add_argument("--work", default="/tmp/bench-fleet")
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    data = asyncio.run(main_async(args))
    print(json.dumps(data, indent=2))
    if args.out:
        out = Path(args.out)
        out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
        write_markdown(out, data)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
