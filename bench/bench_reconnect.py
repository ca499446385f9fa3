"""Reconnect benchmark: the broker's return -> every terminal and the controller back.

One run of this script, on one machine, per fleet size (default 33 and 1,000 terminals):

- a private Mosquitto with the product's configuration, password file and ACL
  (`dalaba_ops.broker`), one account per terminal and the controller's;
- the fleet: real `edge_agent`s on simulated hardware (`firmware_sim.fleet.Fleet`, each
  bound to its own 127.0.x.y as the simulator does), in this process and event loop;
- the controller's MQTT side: `controller.dispatch.Dispatcher` with the controller's
  account (persistent session, the same subscriptions as in production).

Each round: SIGKILL the broker, keep it down `--down-s` seconds, start it again on the
same port with the same persistence directory, and poll every client's `connected`
every `POLL_S` until all are back. Time zero is the first instant the broker's port
accepts a TCP connection again (probed every `PORT_POLL_S` from the restart).

Rounds alternate between today's behaviour (`dalaba.mqtt`: backoff 0.5 s doubling,
capped at `RECONNECT_MAX_S` = 5 s, and a probe of the broker's port about once a second
while waiting) and the **baseline**, the behaviour before issue 8: backoff capped at
30 s and no port probe (set here through the same module constants, in the same
process, against the same broker).

Run: .venv/bin/python bench/bench_reconnect.py [--sizes 33,1000] [--rounds 3] [--down-s 5]
Writes bench/results/reconnect-<date>.md and .json. Everything runs under a temporary
directory that is removed afterwards.
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
import socket
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

with warnings.catch_warnings():
    # pydub probes for the removed stdlib audioop module (same filter as the test suite).
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import paho.mqtt
    from machine import machine_facts
    from pydantic import SecretStr

    from controller.dispatch import Dispatcher
    from dalaba import mqtt as dalaba_mqtt
    from dalaba.mqtt import BrokerAddress
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
    from edge_agent.agent import EdgeAgent
    from edge_agent.config import DeviceConfig
    from firmware_sim.fleet import Fleet

ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.010
PORT_POLL_S = 0.005
ROUND_TIMEOUT_S = 120.0
CONTROLLER_PASSWORD = "bench-controller-secret"
VARIANTS = ("now", "baseline")
VARIANT_TITLES = {
    "now": "today: cap 5 s + port probe",
    "baseline": "baseline: cap 30 s, no probe",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def reconnect_behaviour(variant: str) -> Iterator[None]:
    """The baseline is the client before issue 8: the same jittered doubling backoff,
    capped at 30 s, sleeping it out without looking at the broker's port. Both are
    module constants read on every pass of the reconnect loop."""
    saved = dalaba_mqtt.RECONNECT_MAX_S, dalaba_mqtt.PORT_PROBE_INTERVAL_S
    if variant == "baseline":
        dalaba_mqtt.RECONNECT_MAX_S = 30.0
        # The probe sleeps min(backoff left, probe interval) and does not probe once the
        # backoff is over: an interval longer than any backoff never probes.
        dalaba_mqtt.PORT_PROBE_INTERVAL_S = 1e9
    try:
        yield
    finally:
        dalaba_mqtt.RECONNECT_MAX_S, dalaba_mqtt.PORT_PROBE_INTERVAL_S = saved


@dataclass
class Round:
    size: int
    variant: str
    index: int
    down_s: float  # SIGKILL -> restart launched
    launch_to_port_ms: float  # restart launched -> port accepts
    terminals_ms: list[float] = field(default_factory=list)  # port accepts -> connected
    controller_ms: float | None = None
    missing: int = 0  # not back within ROUND_TIMEOUT_S

    @property
    def all_ms(self) -> float | None:
        if self.missing or self.controller_ms is None:
            return None
        return max([*self.terminals_ms, self.controller_ms])


@dataclass
class County:
    """A broker, a fleet and the controller's dispatcher for one fleet size."""

    work: Path
    size: int
    broker: MosquittoProcess | None = None
    fleet: Fleet | None = None
    dispatcher: Dispatcher | None = None
    reports: int = 0
    startup_s: dict[str, float] = field(default_factory=dict)

    async def start(self) -> None:
        t0 = time.monotonic()
        port = free_port()
        files = write_broker_config(self.work / "broker", port)
        signer = Ed25519Signer.generate()
        public_pem = signer.public_pem().decode()
        accounts, configs = [], []
        for i in range(self.size):
            device_id, village_id = f"d-{i + 1:05d}", f"v-{i + 1:05d}"
            township_id = f"t-{i // 30 + 1:03d}"
            password = f"bench-pw-{i}"
            accounts.append(DeviceAccount(device_id, village_id, township_id, password))
            state_dir = self.work / "sim" / device_id / "state"
            configs.append(
                DeviceConfig(
                    device_id=device_id,
                    village_id=village_id,
                    township_id=township_id,
                    broker_url=f"mqtt://127.0.0.1:{port}",
                    mqtt_username=device_id,
                    mqtt_password=SecretStr(password),
                    media_base_url="http://127.0.0.1:9/media/",  # nothing is fetched
                    controller_public_keys=[public_pem],
                    state_dir=state_dir,
                    telemetry_interval_s=60.0,
                )
            )
        write_password_file(files.password_file, CONTROLLER_PASSWORD, accounts)
        write_acl(files.acl_file, accounts)
        self.broker = MosquittoProcess(files, port)
        await self.broker.start_async()
        address = BrokerAddress("127.0.0.1", port).with_credentials(
            CONTROLLER_USER, CONTROLLER_PASSWORD
        )
        self.dispatcher = Dispatcher(address, signer, self._on_report)
        await self.dispatcher.start()
        self.startup_s["setup_s"] = time.monotonic() - t0
        t1 = time.monotonic()
        self.fleet = Fleet(configs, record_wav=False)
        await self.fleet.start(connect_timeout_s=60 + self.size / 20)
        self.startup_s["fleet_connected_s"] = time.monotonic() - t1

    def _on_report(
        self, _device_id: str, _kind: str, _payload: bytes, ack: Callable[[], None] | None = None
    ) -> None:
        # Stored at once: acknowledged at once (the Dispatcher hands an ack over when
        # the controller acknowledges after commit).
        self.reports += 1
        if ack is not None:
            ack()

    def clients(self) -> dict[str, Callable[[], bool]]:
        assert self.fleet is not None and self.dispatcher is not None
        connected = {d: connected_of(agent) for d, agent in self.fleet.agents.items()}
        dispatcher = self.dispatcher
        connected[CONTROLLER_USER] = lambda: dispatcher.connected
        return connected

    async def run_round(self, variant: str, index: int, down_s: float) -> Round:
        assert self.broker is not None
        broker = self.broker
        clients = self.clients()
        await wait_for(lambda: all(c() for c in clients.values()), 60, "all connected")
        with reconnect_behaviour(variant):
            killed = time.monotonic()
            broker.kill()  # SIGKILL: no goodbye, as a crash or power cut
            await wait_for(lambda: not any(c() for c in clients.values()), 30, "all dropped")
            await asyncio.sleep(max(0.0, killed + down_s - time.monotonic()))
            launched = time.monotonic()
            port_open = asyncio.create_task(first_accept(broker.port))
            await broker.start_async()  # same config, port and persistence directory
            opened = await port_open
            back: dict[str, float] = {}
            deadline = time.monotonic() + ROUND_TIMEOUT_S
            while len(back) < len(clients) and time.monotonic() < deadline:
                now = time.monotonic()
                for name, is_connected in clients.items():
                    if name not in back and is_connected():
                        back[name] = now
                await asyncio.sleep(POLL_S)
        result = Round(
            size=self.size,
            variant=variant,
            index=index,
            down_s=launched - killed,
            launch_to_port_ms=(opened - launched) * 1000,
            missing=len(clients) - len(back),
        )
        for name, at in back.items():
            ms = (at - opened) * 1000
            if name == CONTROLLER_USER:
                result.controller_ms = ms
            else:
                result.terminals_ms.append(ms)
        return result

    async def stop(self) -> None:
        if self.fleet is not None:
            await self.fleet.stop()
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        if self.broker is not None:
            self.broker.stop()


def connected_of(agent: EdgeAgent) -> Callable[[], bool]:
    return lambda: agent.connected


async def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(POLL_S)


async def first_accept(port: int) -> float:
    """The first instant the restarted broker's port accepts a connection."""
    loop = asyncio.get_running_loop()
    while True:
        with socket.socket() as s:
            s.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", port)), 0.5)
                return time.monotonic()
            except (OSError, TimeoutError):
                pass
        await asyncio.sleep(PORT_POLL_S)


# ---------------------------------------------------------------------- statistics


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def med_max(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{statistics.median(values):.0f} / {max(values):.0f}"


def summary(rounds: list[Round]) -> dict[str, Any]:
    alls = [r.all_ms for r in rounds if r.all_ms is not None]
    terminals = [ms for r in rounds for ms in r.terminals_ms]
    return {
        "rounds": len(rounds),
        "rounds_incomplete": sum(1 for r in rounds if r.all_ms is None),
        "all_back_ms": alls,
        "controller_ms": [r.controller_ms for r in rounds if r.controller_ms is not None],
        "terminal_p50_per_round_ms": [statistics.median(r.terminals_ms) for r in rounds],
        "terminals_pooled_ms": {
            "p10": quantile(terminals, 0.10),
            "p50": quantile(terminals, 0.50),
            "p90": quantile(terminals, 0.90),
            "p99": quantile(terminals, 0.99),
            "max": max(terminals),
        }
        if terminals
        else {},
        "launch_to_port_ms": [r.launch_to_port_ms for r in rounds],
    }


# ---------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    facts, args = result["machine"], result["args"]
    out = [
        f"# Reconnect benchmark: broker back → every client reconnected, {result['date']}",
        "",
        f"- Machine: {facts['nproc']} CPUs (`nproc`), {facts['cpu']}, {facts['ram']} RAM; "
        f"{facts['os']}; load average {result['load_before']} before, "
        f"{result['load_after']} after (the machine is shared: other work may run beside it)",
        f"- Versions: {facts['mosquitto']}; Python {facts['python']}; paho-mqtt {result['paho']}",
        f"- Command: `{result['command']}` (took {result['took_s']:.0f} s)",
        "- Setup per size: a private Mosquitto with the product's config, password file and "
        "ACL (`dalaba_ops.broker`); N real `edge_agent`s on simulated hardware "
        "(`firmware_sim.fleet.Fleet`, each bound to its own 127.0.x.y), and the controller's "
        "`Dispatcher` (its account, persistent session, production subscriptions), all in "
        "the benchmark's one process and event loop.",
        f"- Each round: SIGKILL the broker, keep it down {args['down_s']} s, restart it on the "
        "same port with the same config and persistence directory, poll every client's "
        f"`connected` every {POLL_S * 1000:.0f} ms. **Time zero is the first accepted TCP "
        f"connection on the restarted broker's port** (probed every {PORT_POLL_S * 1000:.0f} "
        "ms from the restart). *All back* = the last of the terminals and the controller.",
        f"- {args['rounds']} rounds per behaviour and size, alternating: **today** "
        "(`dalaba.mqtt`: backoff 0.5 s doubling with jitter ×0.5–1.5, capped at 5 s; while "
        "waiting, a TCP probe of the broker's port about once a second, and a connect at "
        "once when it answers) and the **baseline** from the same run (the client before "
        "issue 8: the same backoff capped at 30 s, no probe; set through "
        "`dalaba.mqtt.RECONNECT_MAX_S = 30` and a probe interval longer than any backoff).",
        "",
        "All times in ms from the broker's port accepting again; **median / max** over the "
        "rounds unless stated.",
        "",
    ]
    for size_result in result["sizes"]:
        size = size_result["size"]
        now, base = size_result["now"], size_result["baseline"]
        out += [
            f"## {size} terminals + the controller",
            "",
            f"**All back: {med_max(now['all_back_ms'])} ms today against "
            f"{med_max(base['all_back_ms'])} ms for the baseline** (median / max of "
            f"{now['rounds']} rounds each).",
            "",
            f"Fleet start: {size_result['startup_s']['fleet_connected_s']:.1f} s to connect "
            f"all {size} terminals the first time.",
            "",
            f"| | {VARIANT_TITLES['now']} | {VARIANT_TITLES['baseline']} |",
            "| --- | --- | --- |",
            f"| **all back** (last terminal or controller) | **{med_max(now['all_back_ms'])}** "
            f"| **{med_max(base['all_back_ms'])}** |",
            f"| controller's dispatcher back | {med_max(now['controller_ms'])} "
            f"| {med_max(base['controller_ms'])} |",
            f"| median terminal back (per round) | {med_max(now['terminal_p50_per_round_ms'])} "
            f"| {med_max(base['terminal_p50_per_round_ms'])} |",
        ]
        for q in ("p10", "p50", "p90", "p99", "max"):
            a = now["terminals_pooled_ms"].get(q)
            b = base["terminals_pooled_ms"].get(q)
            out.append(
                f"| terminals, all rounds pooled: {q} | {a:.0f} | {b:.0f} |"
                if a is not None and b is not None
                else f"| terminals, all rounds pooled: {q} | – | – |"
            )
        out += [
            f"| rounds not complete within {ROUND_TIMEOUT_S:.0f} s | "
            f"{now['rounds_incomplete']} | {base['rounds_incomplete']} |",
            f"| restart launched → port accepts | {med_max(now['launch_to_port_ms'])} "
            f"| {med_max(base['launch_to_port_ms'])} |",
            "",
            "| round | behaviour | down (s) | all back | controller | terminals p50 | p90 | max |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in size_result["rounds"]:
            t = r["terminals_ms"]
            out.append(
                f"| {r['index']} | {r['variant']} | {r['down_s']:.1f} "
                f"| {fmt(r['all_ms'])} | {fmt(r['controller_ms'])} "
                f"| {fmt(statistics.median(t) if t else None)} "
                f"| {fmt(quantile(t, 0.9) if t else None)} | {fmt(max(t) if t else None)} |"
            )
        out.append("")
    return "\n".join(out)


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


# ---------------------------------------------------------------------- main


async def run_size(work: Path, size: int, rounds: int, down_s: float) -> dict[str, Any]:
    county = County(work / f"county-{size}", size)
    results: list[Round] = []
    try:
        log(f"{size} terminals: starting broker, controller and fleet")
        await county.start()
        log(f"{size} terminals: up in {county.startup_s}")
        for index in range(1, rounds + 1):
            for variant in VARIANTS:
                r = await county.run_round(variant, index, down_s)
                log(
                    f"{size} terminals, {variant} round {index}: all back {fmt(r.all_ms)} ms, "
                    f"controller {fmt(r.controller_ms)} ms, missing {r.missing}"
                )
                results.append(r)
    finally:
        await county.stop()
    return {
        "size": size,
        "startup_s": county.startup_s,
        "now": summary([r for r in results if r.variant == "now"]),
        "baseline": summary([r for r in results if r.variant == "baseline"]),
        "rounds": [
            {
                "index": r.index,
                "variant": r.variant,
                "down_s": r.down_s,
                "launch_to_port_ms": r.launch_to_port_ms,
                "all_ms": r.all_ms,
                "controller_ms": r.controller_ms,
                "missing": r.missing,
                "terminals_ms": sorted(round(ms) for ms in r.terminals_ms),
            }
            for r in results
        ],
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="dalaba-bench-reconnect-"))
    try:
        return {"sizes": [await run_size(work, n, args.rounds, args.down_s) for n in sizes]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="33,1000", help="fleet sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per behaviour and size")
    parser.add_argument("--down-s", type=float, default=5.0, help="broker down this long")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    load_before = load_average()
    result = asyncio.run(main_async(args))
    today = datetime.date.today().isoformat()
    result.update(
        date=today,
        command=" ".join(
            [".venv/bin/python", "bench/bench_reconnect.py", *map(shlex.quote, sys.argv[1:])]
        ),
        took_s=time.monotonic() - started,
        machine=machine_facts(),
        paho=paho.mqtt.__version__,
        load_before=load_before,
        load_after=load_average(),
        args={"sizes": args.sizes, "rounds": args.rounds, "down_s": args.down_s},
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"reconnect-{today}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
    log(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
