"""A fleet of simulated terminals, each a real `EdgeAgent` on `SimHardware`.

Layout of a simulated county on disk, one folder per terminal:

    DATA_DIR/sim/<device_id>/device.json     provisioned identity (mode 0600)
    DATA_DIR/sim/<device_id>/state/          the agent's flash: cache, replay memory,
                                             outbox, owed plays
    DATA_DIR/sim/<device_id>/plays-started.jsonl  each play's first sample, as it happens
    DATA_DIR/sim/<device_id>/plays.jsonl     each play's end: what the speaker really played
    DATA_DIR/sim/<device_id>/plays/*.wav     the samples it output

or, with batched records, one file of each kind per simulator process under
DATA_DIR/sim/_records/ (firmware_sim.records, which reads both layouts).

Each terminal's MQTT session is paho (dalaba.mqtt, as on a real board) unless the lean
client is asked for (`mqtt="lean"`, `dalaba sim --mqtt lean`), which the scale benchmarks
use: the agent logic is the same either way. The lean client once lost a terminal's
stored reports after the fault tests' power cut: it reconnected before the controller
to a broker that had lost the controller's session (docs/architecture.md, "Reports are
acknowledged after they are stored"); since the controller asks for them again, both
clients pass that test.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import aiohttp

from dalaba.mqtt import MqttConnection
from dalaba.mqtt_lean import LeanMqttConnection
from edge_agent.agent import EdgeAgent
from edge_agent.config import DeviceConfig
from firmware_sim.hardware import SimHardware
from firmware_sim.records import VERIFIED, BatchedRecords, RecordSink, verified_entry

log = logging.getLogger(__name__)


def device_dir(data_dir: Path, device_id: str) -> Path:
    return data_dir / "sim" / device_id


def find_device_configs(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "sim").glob("*/device.json"))


def loopback_address(index: int) -> str:
    """Spread connections over 127.0.0.x: thousands of loopback connections from one
    source address run out of local ports."""
    return f"127.0.{(index // 250) % 250}.{index % 250 + 2}"


MQTT_CLIENTS = ("lean", "paho")
RECORD_LAYOUTS = ("auto", "device", "batched")
# With `records="auto"`, a process holding more terminals than this batches its records.
BATCH_RECORDS_ABOVE = 1000


class Fleet:
    def __init__(
        self,
        configs: Iterable[DeviceConfig],
        *,
        record_wav: bool = True,
        mqtt: str = "paho",
        records: str = "auto",
        process_name: str = "p0",
    ) -> None:
        if mqtt not in MQTT_CLIENTS:
            raise ValueError(f"mqtt: {mqtt!r} (one of {', '.join(MQTT_CLIENTS)})")
        if records not in RECORD_LAYOUTS:
            raise ValueError(f"records: {records!r} (one of {', '.join(RECORD_LAYOUTS)})")
        self.configs = {c.device_id: c for c in configs}
        self.record_wav = record_wav
        self.mqtt = mqtt
        if records == "auto":
            records = "batched" if len(self.configs) > BATCH_RECORDS_ABOVE else "device"
        self.records_layout = records
        self.process_name = process_name
        self.records: BatchedRecords | None = None
        self._sinks: dict[str, RecordSink] = {}
        self.agents: dict[str, EdgeAgent] = {}
        self.hardware: dict[str, SimHardware] = {}
        self._http: aiohttp.ClientSession | None = None

    @classmethod
    def from_data_dir(
        cls,
        data_dir: Path,
        limit: int | None = None,
        *,
        share: tuple[int, int] | None = None,
        record_wav: bool = True,
        mqtt: str = "paho",
        records: str = "auto",
    ) -> Fleet:
        """The terminals under DATA_DIR/sim; `share` (i, n) takes every n-th from the
        i-th, so n processes split a county between them."""
        paths = find_device_configs(data_dir)
        if share is not None:
            index, total = share
            paths = paths[index::total]
        if limit:
            paths = paths[:limit]
        fleet = cls(
            [DeviceConfig.load(path) for path in paths],
            record_wav=record_wav,
            mqtt=mqtt,
            records=records,
            process_name=f"p{share[0]}" if share is not None else "p0",
        )
        fleet.data_dir = data_dir
        if share is not None:
            # Source addresses by the terminal's place in the whole county, so the
            # processes of one county do not all start again at 127.0.0.2.
            fleet.address_start, fleet.address_stride = share
        return fleet

    data_dir: Path | None = None  # where batched records go (set by from_data_dir)
    address_start, address_stride = 0, 1

    async def start(self, connect_timeout_s: float = 30.0) -> None:
        # One connection pool for the fleet's media fetches; each agent still fetches
        # and verifies its own copy as a real terminal would.
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        if self.records_layout == "batched":
            data_dir = self.data_dir
            if data_dir is None:  # configs given directly: DATA_DIR/sim/<id>/state
                data_dir = next(iter(self.configs.values())).state_dir.parent.parent.parent
            self.records = BatchedRecords(data_dir, self.process_name)
            self.records.start()
        for index, (device_id, config) in enumerate(self.configs.items()):
            address = loopback_address(self.address_start + index * self.address_stride)
            hw = SimHardware.create(config.state_dir.parent, seed=index, bind_address=address)
            hw.speaker.record_wav = self.record_wav
            if self.records is not None:
                self._sinks[device_id] = self.records.sink(device_id)
                hw.speaker.records = self._sinks[device_id]
            self.hardware[device_id] = hw
        await asyncio.gather(*(self._start_agent(d) for d in self.configs))
        await self.wait_connected(connect_timeout_s)

    async def _start_agent(self, device_id: str) -> None:
        sink = self._sinks.get(device_id)
        agent = EdgeAgent(
            self.configs[device_id],
            self.hardware[device_id],
            http=self._http,
            connection_class=LeanMqttConnection if self.mqtt == "lean" else None,
            on_verified=(lambda c: sink(VERIFIED, verified_entry(c))) if sink else None,
        )
        self.agents[device_id] = agent
        await agent.start(connect_timeout_s=None)

    async def wait_connected(self, timeout_s: float) -> None:
        async def all_connected() -> None:
            while not all(a.connected for a in self.agents.values() if self._powered(a)):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(all_connected(), timeout_s)

    def _powered(self, agent: EdgeAgent) -> bool:
        return not self.hardware[agent.config.device_id].network.down

    async def stop(self) -> None:
        await asyncio.gather(*(a.stop() for a in self.agents.values()), return_exceptions=True)
        self.agents.clear()
        if self._http is not None:
            await self._http.close()
        if self.records is not None:
            await self.records.stop()

    # ------------------------------------------------------------------ faults

    def network_down(self, device_id: str) -> None:
        """The terminal's link is lost: its connection dies without a goodbye."""
        self.hardware[device_id].network.down = True
        mqtt: MqttConnection | None = self.agents[device_id].mqtt
        if mqtt is not None:
            mqtt.drop()

    def network_up(self, device_id: str) -> None:
        self.hardware[device_id].network.down = False

    async def power_off(self, device_id: str) -> None:
        """Power loss: the agent dies mid-flight; only its flash (state dir) survives."""
        agent = self.agents.pop(device_id)
        await agent.stop(graceful=False)
        await self.hardware[device_id].amplifier.power_off()

    async def power_on(self, device_id: str) -> None:
        await self._start_agent(device_id)

    def set_amplifier_failed(self, device_id: str, failed: bool = True) -> None:
        self.hardware[device_id].amplifier.failed = failed

    def set_speaker_line_cut(self, device_id: str, cut: bool = True) -> None:
        self.hardware[device_id].speaker.line_cut = cut

    def set_on_battery(self, device_id: str, on_battery: bool = True) -> None:
        self.hardware[device_id].power.on_battery = on_battery

    def set_clock_offset(self, device_id: str, offset_ms: int, drift_ppm: float = 0.0) -> None:
        clock = self.hardware[device_id].clock
        clock.drift_ppm = 0.0  # restarts the drift from now, from the new offset
        clock.offset_ms = offset_ms
        clock.drift_ppm = drift_ppm
        agent = self.agents.get(device_id)
        if agent is not None:
            agent.clock_changed()  # its local schedule sleeps until the next due time

    def set_slow_link(
        self, device_id: str, bytes_per_s: float | None, latency_s: float = 0
    ) -> None:
        net = self.hardware[device_id].network
        net.bytes_per_s = bytes_per_s
        net.latency_s = latency_s


async def run_fleet(fleet: Fleet, *, freeze_heap: bool = True) -> None:
    """Run a fleet until SIGINT/SIGTERM (`freeze_heap` False: the collector as Python
    sets it, for comparison)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Thousands of terminals connecting at once to a busy broker take longer than a
    # county; those not in yet keep trying on their own, so a slow start is said, not
    # fatal (a simulator that exited would take every connected terminal with it).
    try:
        await fleet.start(connect_timeout_s=30.0 + len(fleet.configs) / 50)
        log.info("fleet: %d terminals connected", len(fleet.agents))
    except TimeoutError:
        connected = sum(a.connected for a in fleet.agents.values())
        log.warning("fleet: %d of %d terminals connected so far", connected, len(fleet.agents))
    if freeze_heap:
        settle_heap()
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    try:
        await stop.wait()
    finally:
        gc.callbacks.remove(pauses)
        await fleet.stop()
        if fleet.records is not None:
            # Beside the batched records: what the collector cost this process
            # (bench/bench_fleet.py reads it).
            path = fleet.records.directory / f"{fleet.process_name}-gc.json"
            path.write_text(json.dumps(pauses.summary()))


class GcPauses:
    """A gc callback timing each collection: how long the whole process stood still."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []  # (generation, ms)
        self._started = 0.0
        self._since = time.monotonic()

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], (time.perf_counter() - self._started) * 1e3))

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {
            "seconds": round(time.monotonic() - self._since, 1),
            "frozen_objects": gc.get_freeze_count(),
        }
        for gen in (0, 1, 2):
            ms = [d for g, d in self.pauses if g == gen]
            out[f"gen{gen}"] = {
                "count": len(ms),
                "total_ms": round(sum(ms), 1),
                "max_ms": round(max(ms), 1) if ms else 0.0,
            }
        return out


def settle_heap() -> None:
    """After start-up: a simulator process holds about a hundred objects per terminal
    (over a million at 10,000) that live as long as it does. Left to the collector, each
    full collection walks all of them (measured: 570 ms pauses, seven in 20 idle
    seconds), freezing every terminal in the process. `gc.freeze` moves them out of the
    collector's view; the higher first threshold makes young collections rarer, as the
    per-message garbage is mostly freed by reference counting anyway."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def spawn_fleet_processes(
    data_dir: Path,
    processes: int,
    *,
    record_wav: bool = True,
    log_dir: Path | None = None,
    mqtt: str = "paho",
    records: str = "auto",
    freeze_heap: bool = True,
) -> list[subprocess.Popen[bytes]]:
    """Split the terminals under DATA_DIR/sim over several `dalaba sim` processes
    (their output to `log_dir`/sim-<i>.log when given)."""
    total = len(find_device_configs(data_dir))
    procs = []
    for i in range(min(processes, total)):
        command = [
            sys.executable, "-m", "dalaba_ops.cli", "sim",
            "--data-dir", str(data_dir), "--share", f"{i}/{processes}",
        ]  # fmt: skip
        command += ["--mqtt", mqtt, "--records", records]
        if not freeze_heap:
            command.append("--no-gc-freeze")
        if not record_wav:
            command.append("--no-wav")
        if log_dir is None:
            procs.append(subprocess.Popen(command))
            continue
        with (log_dir / f"sim-{i}.log").open("wb") as log_file:
            procs.append(subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT))
    return procs
