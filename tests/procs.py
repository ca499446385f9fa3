"""A county run as separate processes, for fault tests that kill and restart them.

`FaultCounty` prepares a county data directory with `dalaba_ops.demo.setup_county` and runs
the parts as a user would, each its own process that a test can SIGKILL, pause and
restart at a chosen instant:

- the private Mosquitto (`mosquitto -c` on the config `setup_county` wrote),
- the controller (`dalaba controller --config <env file>`),
- the simulated fleet (`dalaba sim`, every terminal but the last few, spread over
  127.0.0.x as the fleet runner does), and
- the last few terminals ("loners") each alone (`dalaba agent --config device.json`), so
  one terminal can be taken down while the rest keep running.

`Api` talks to the controller over HTTP with the admin token. What should have happened
is always taken from the county data (`FaultCounty.terminals`) and from what the
simulated speakers recorded (DATA/sim/<id>/plays.jsonl), never only from the
controller's own rows: an empty delivery list must not pass as "all done".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import SecretStr

from controller.settings import Settings
from dalaba.protocol import now_ms
from dalaba_ops.broker import BrokerFiles, MosquittoProcess, controller_username, free_port
from dalaba_ops.demo import PreparedCounty, setup_county
from edge_agent.config import DeviceConfig
from firmware_sim.fleet import device_dir, find_device_configs

REPO_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# Nothing more happens to a delivery in these states (short of a resend), though the
# controller's own inferences (`unknown`, `expired`) give way to a late report.
FINAL_STATES = frozenset({"done", "failed", "rejected", "expired", "cancelled", "unknown"})


def dalaba_argv(*args: str) -> list[str]:
    """The `dalaba` command of the interpreter running the tests (the project's venv)."""
    script = Path(sys.executable).with_name("dalaba")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "dalaba_ops.cli", *args]


def _child_env() -> dict[str, str]:
    # A DALABA_* variable in the test runner's environment would override the env file.
    return {k: v for k, v in os.environ.items() if not k.startswith("DALABA_")}


class Proc:
    """One child process, restartable; its output is appended to `log_path`."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.starts = 0
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {self.name} start #{self.starts + 1} at {time.time():.3f}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                env=_child_env(),
            )
        self.starts += 1

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash or a power cut; nothing runs after it."""
        if self._popen is None:
            return
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGKILL)
        self._popen.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self._popen is None:
            return
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def pause(self) -> None:
        """SIGSTOP: the process holds its sockets open but does nothing at all."""
        assert self._popen is not None and self.running
        self._popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._popen is not None
        self._popen.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class BrokerProc(Proc):
    """The county's private Mosquitto, run directly (not through `MosquittoProcess`) so
    a test can signal it: SIGKILL for a crash that publishes no last will and saves
    nothing, SIGUSR1 to save its in-memory state (retained messages, sessions) first."""

    def __init__(self, files: BrokerFiles, port: int, log_path: Path) -> None:
        super().__init__(
            "broker", [MosquittoProcess.executable(), "-c", str(files.config)], log_path
        )
        self.files = files
        self.port = port

    def start(self, timeout_s: float = 10.0) -> None:
        super().start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"mosquitto exited: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log_tail()}")

    async def start_async(self) -> None:
        await asyncio.to_thread(self.start)

    def save(self, timeout_s: float = 10.0) -> None:
        """Have the broker write its persistence file now, and wait until it has."""
        db = self.files.data_dir / "mosquitto.db"

        def mtime() -> int | None:
            try:
                return db.stat().st_mtime_ns
            except FileNotFoundError:
                return None

        before = mtime()
        assert self._popen is not None and self.running
        self._popen.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout_s
        while mtime() == before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not save {db}: {self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.files.log_file.read_text(errors="replace")
        except OSError:
            text = ""
        return "\n".join([*text.splitlines()[-lines:], super().log_tail(lines)])


def write_env_file(settings: Settings, path: Path, **overrides: object) -> Path:
    """Every setting of `settings` (plus `overrides`) as DALABA_* lines, the format of
    config/dalaba.example.env, readable by `dalaba controller --config`."""
    values: dict[str, Any] = settings.model_dump()
    values.update(overrides)
    lines = ["# Written by tests/procs.py for a fault test's controller."]
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, dict | list | tuple):
            text = json.dumps(value)
        else:
            text = str(value)
        if "\n" in text:
            raise ValueError(f"setting {name}: a value on one line only")
        lines.append(f"DALABA_{name.upper()}={text}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def controller_replica(
    prepared: PreparedCounty, replica: int, work_dir: Path, log_dir: Path
) -> tuple[Proc, int]:
    """`dalaba controller` as replica `replica` of a prepared county (1: the county's own
    controller): its own broker account, HTTP port (returned) and replica id
    (`replica-<n>`); the county's database and data directory."""
    password = prepared.controller_password if replica == 1 else prepared.replica_password
    if replica > 2:
        raise ValueError("setup_county makes broker accounts for two replicas")
    port = prepared.settings.http_port if replica == 1 else free_port()
    env = write_env_file(
        prepared.settings,
        work_dir / f"controller-{replica}.env",
        broker_username=controller_username(replica),
        broker_password=SecretStr(password),
        http_port=port,
        replica_id=f"replica-{replica}",
        shared_ingest=True,  # replicas share the reports (controller/settings.py)
    )
    argv = dalaba_argv("controller", "--config", str(env))
    return Proc(f"replica-{replica}", argv, log_dir / f"replica-{replica}.log"), port


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """A JSON-lines file another process may be appending to: a torn last line (or a
    line cut by a SIGKILL) is skipped, not fatal."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


@dataclass
class FaultCounty:
    """One prepared county and its processes; `prepare` writes it, nothing runs until
    `start_missing`, and `shutdown` kills whatever still runs."""

    prepared: PreparedCounty
    env_file: Path
    log_dir: Path
    broker: BrokerProc
    controller: Proc
    fleet: Proc
    loners: dict[str, Proc]
    fleet_ids: tuple[str, ...]

    @classmethod
    def prepare(
        cls,
        base_dir: Path,
        *,
        villages: int = 30,
        loners: int = 2,
        telemetry_interval_s: float = 2.0,
        database_url: str | None = None,
        **settings_overrides: object,
    ) -> FaultCounty:
        """`database_url`: None for the county's own SQLite file (see `db_backend` in
        conftest.py for a PostgreSQL one)."""
        prepared = setup_county(
            base_dir / "county",
            villages=villages,
            database_url=database_url,
            speech_backends=("espeak-ng",),
            telemetry_interval_s=telemetry_interval_s,
            console_users=False,
        )
        data_dir = prepared.data_dir
        log_dir = base_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        env_file = write_env_file(
            prepared.settings, base_dir / "controller.env", **settings_overrides
        )
        # The order `dalaba sim` takes terminals in; it runs the first N of them.
        ordered = [path.parent.name for path in find_device_configs(data_dir)]
        expected = {d for v in prepared.county.villages for d in v.device_ids()}
        if set(ordered) != expected:
            raise RuntimeError("the provisioned terminals differ from the county data")
        if not 0 <= loners < len(ordered):
            raise ValueError(f"loners: 0 to {len(ordered) - 1}")
        fleet_ids = tuple(ordered[: len(ordered) - loners])
        loner_ids = ordered[len(ordered) - loners :]
        data = str(data_dir)
        return cls(
            prepared=prepared,
            env_file=env_file,
            log_dir=log_dir,
            broker=BrokerProc(prepared.broker.files, prepared.broker_port, log_dir / "broker.log"),
            controller=Proc(
                "controller",
                dalaba_argv("controller", "--config", str(env_file)),
                log_dir / "controller.log",
            ),
            fleet=Proc(
                "fleet",
                dalaba_argv("sim", "--data-dir", data, "--villages", str(len(fleet_ids))),
                log_dir / "fleet.log",
            ),
            loners={
                device_id: Proc(
                    device_id,
                    dalaba_argv(
                        "agent", "--config", str(device_dir(data_dir, device_id) / "device.json")
                    ),
                    log_dir / f"{device_id}.log",
                )
                for device_id in loner_ids
            },
            fleet_ids=fleet_ids,
        )

    # ------------------------------------------------------------------ who

    @property
    def data_dir(self) -> Path:
        return self.prepared.data_dir

    @property
    def terminals(self) -> frozenset[str]:
        """Every terminal of the county, from the county data."""
        return frozenset(d for v in self.prepared.county.villages for d in v.device_ids())

    @property
    def loner_ids(self) -> tuple[str, ...]:
        return tuple(self.loners)

    # ------------------------------------------------------------------ processes

    @property
    def processes(self) -> list[Proc]:
        """Every process, the broker first (the order they start in)."""
        return [self.broker, self.controller, self.fleet, *self.loners.values()]

    def start_missing(self) -> list[str]:
        """Start whatever process is not running; the names started."""
        started = []
        for proc in self.processes:
            if not proc.running:
                proc.start()
                started.append(proc.name)
        return started

    def terminals_run_by(self, names: Iterable[str]) -> frozenset[str]:
        """The terminals that processes of these names (or, through the broker or the
        controller, every process) bring back."""
        names = set(names)
        if names & {self.broker.name, self.controller.name}:
            return self.terminals
        ids = set(self.fleet_ids) if self.fleet.name in names else set()
        return frozenset(ids | (names & set(self.loners)))

    def shutdown(self) -> None:
        for proc in self.processes[1:]:
            proc.kill()
        self.broker.stop()

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(
            f"--- {p.name} ({p.log_path})\n{p.log_tail(lines)}" for p in self.processes
        )

    # ------------------------------------------------------------------ evidence

    def plays(self, device_id: str, broadcast_id: str | None = None) -> list[dict[str, Any]]:
        """What the terminal's speaker recorded as played (written when a play ends)."""
        entries = read_json_lines(device_dir(self.data_dir, device_id) / "plays.jsonl")
        return [e for e in entries if broadcast_id is None or e["broadcast_id"] == broadcast_id]

    def plays_started(self, device_id: str, broadcast_id: str) -> list[dict[str, Any]]:
        """Plays the speaker recorded as started (written when a play starts)."""
        entries = read_json_lines(device_dir(self.data_dir, device_id) / "plays-started.jsonl")
        return [e for e in entries if e.get("broadcast_id") == broadcast_id]

    def completed(self, broadcast_id: str, ids: Iterable[str]) -> set[str]:
        """The terminals among `ids` whose speaker played `broadcast_id` to its end."""
        return {d for d in ids if any(e["completed"] for e in self.plays(d, broadcast_id))}

    def device_config(self, device_id: str) -> DeviceConfig:
        return DeviceConfig.load(device_dir(self.data_dir, device_id) / "device.json")


# --------------------------------------------------------------------------- HTTP


class ControllerDown(Exception):
    """The controller did not answer (killed, restarting)."""


class Api:
    """The controller's REST API with the admin token, for one test's event loop."""

    def __init__(self, county: FaultCounty, http: aiohttp.ClientSession) -> None:
        self.county = county
        self.http = http

    @property
    def url(self) -> str:
        return self.county.prepared.api_url

    async def call(
        self, method: str, path: str, *, json_body: Any = None, expect: int | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.county.prepared.admin_token}"}
        try:
            async with self.http.request(
                method,
                self.url + path,
                json=json_body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=30),
            ) as resp:
                body = (
                    await resp.json()
                    if resp.content_type == "application/json"
                    else await resp.text()
                )
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise ControllerDown(f"{method} {path}: {exc!r}") from exc
        if expect is not None:
            assert resp.status == expect, (method, path, resp.status, body)
        return resp.status, body

    async def broadcast(self, **body: Any) -> dict[str, Any]:
        """POST /api/broadcasts; the 201 body (id, start_at_ms, expires_at_ms, ...)."""
        body.setdefault("category", "flood")
        body.setdefault("priority", "notice")
        _, created = await self.call("POST", "/api/broadcasts", json_body=body, expect=201)
        return dict(created)

    async def broadcast_view(self, broadcast_id: str) -> dict[str, Any]:
        _, view = await self.call("GET", f"/api/broadcasts/{broadcast_id}", expect=200)
        return dict(view)

    async def deliveries(self, broadcast_id: str) -> dict[str, dict[str, Any]]:
        view = await self.broadcast_view(broadcast_id)
        return {d["device_id"]: d for d in view["deliveries"]}

    async def devices(self) -> dict[str, dict[str, Any]]:
        _, body = await self.call("GET", "/api/devices", expect=200)
        return {d["id"]: d for d in body["devices"]}

    async def metrics(self) -> dict[str, Any]:
        _, body = await self.call("GET", "/api/metrics", expect=200)
        return dict(body)

    async def healthy(self) -> bool:
        try:
            status, _ = await self.call("GET", "/api/health")
        except ControllerDown:
            return False
        return status == 200


# --------------------------------------------------------------------------- waiting


async def wait_until(
    check: Callable[[], Awaitable[T | None]],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.1,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll `check` until it returns something truthy (returned) or the deadline passes.
    A controller that does not answer counts as "not yet"."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = await check()
        except ControllerDown:
            result = None
        if result:
            return result
        if time.monotonic() >= deadline:
            extra = f": {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{extra}")
        await asyncio.sleep(interval_s)


async def bring_up(county: FaultCounty, client: Api) -> None:
    """Start whatever of the county is not running and wait until the controller
    answers, the restarted terminals were heard from, and every terminal is online."""
    restarted_ms = now_ms()
    started = await asyncio.to_thread(county.start_missing)
    await wait_until(client.healthy, 60, "the controller up and connected", detail=county.log_tails)
    back = county.terminals_run_by(started)
    if back:
        await wait_heard_since(client, back, restarted_ms, 60)
    await wait_online(client, county.terminals, True, 60)


def expect_states(ids: Iterable[str], states: Collection[str]) -> dict[str, frozenset[str]]:
    return {d: frozenset(states) for d in ids}


async def wait_deliveries(
    api: Api,
    broadcast_id: str,
    expected: Mapping[str, Collection[str]],
    timeout_s: float,
) -> dict[str, dict[str, Any]]:
    """Wait until every terminal named in `expected` has a delivery of `broadcast_id`
    in one of its allowed states; returns every delivery by device id."""
    assert expected, "no terminal to wait for: an empty set must not pass as success"
    last: dict[str, dict[str, Any]] = {}

    async def check() -> bool:
        nonlocal last
        last = await api.deliveries(broadcast_id)
        settled_wrong = [
            d
            for d, ok in expected.items()
            if d in last and last[d]["state"] not in ok and ended_by_terminal(last[d])
        ]
        if settled_wrong:
            # The terminal's own ending is never reopened: waiting longer cannot help.
            raise AssertionError(f"deliveries of {broadcast_id} ended wrong: {mismatches()}")
        return all(d in last and last[d]["state"] in ok for d, ok in expected.items())

    def mismatches() -> str:
        # Grouped by (state, reason), a few device ids each: readable for 33 or 1,000.
        groups: dict[tuple[str, str], list[str]] = {}
        for d, ok in sorted(expected.items()):
            if d not in last:
                groups.setdefault(("no delivery", ""), []).append(d)
            elif last[d]["state"] not in ok:
                key = (last[d]["state"], str(last[d].get("reason") or "")[:120])
                groups.setdefault(key, []).append(d)
        wrong = sum(len(ids) for ids in groups.values())
        parts = [f"{len(ids)} x {key} e.g. {ids[:3]}" for key, ids in groups.items()]
        return f"{wrong} of {len(expected)} not there: " + "; ".join(parts)

    await wait_until(check, timeout_s, f"deliveries of {broadcast_id}", detail=mismatches)
    return last


def ended_by_terminal(delivery: Mapping[str, Any]) -> bool:
    """A final state the terminal itself reported (the controller's inferred endings,
    `unknown` or `expired`, may still be overruled by a late report)."""
    return delivery["state"] in FINAL_STATES and delivery.get("source") == "device"


async def wait_online(
    api: Api, ids: Collection[str], online: bool, timeout_s: float
) -> dict[str, dict[str, Any]]:
    """Wait until the controller shows every one of `ids` online (or offline)."""
    assert ids
    last: dict[str, dict[str, Any]] = {}

    async def check() -> bool:
        nonlocal last
        last = await api.devices()
        return all(d in last and last[d]["online"] is online for d in ids)

    def wrong() -> str:
        return str(sorted(d for d in ids if d not in last or last[d]["online"] is not online))

    word = "online" if online else "offline"
    await wait_until(check, timeout_s, f"{len(ids)} terminals shown {word}", detail=wrong)
    return last


async def wait_heard_since(api: Api, ids: Collection[str], since_ms: int, timeout_s: float) -> None:
    """Until the controller has heard from each of `ids` at or after `since_ms` (its
    `last_seen`): a restarted terminal is really back, not shown online from before."""
    last: dict[str, dict[str, Any]] = {}

    def heard(d: str) -> bool:
        seen = last.get(d, {}).get("last_seen")
        return seen is not None and epoch_ms(seen) >= since_ms

    async def check() -> bool:
        nonlocal last
        last = await api.devices()
        return all(heard(d) for d in ids)

    await wait_until(
        check,
        timeout_s,
        f"{len(ids)} terminals heard from",
        detail=lambda: str(sorted(d for d in ids if not heard(d))),
    )


def epoch_ms(value: Any) -> int:
    """A time from the API (ISO 8601 or epoch ms) as epoch ms."""
    if isinstance(value, int):
        return value
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)


async def wait_first_completed_play(
    county: FaultCounty, broadcast_id: str, ids: Collection[str], timeout_s: float
) -> str:
    """The first terminal among `ids` to record a completed play of `broadcast_id`;
    polled every few milliseconds, for killing something just after it."""
    paths = {d: device_dir(county.data_dir, d) / "plays.jsonl" for d in ids}
    sizes = {d: -1 for d in ids}

    async def check() -> str | None:
        for d, path in paths.items():
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size != sizes[d]:
                sizes[d] = size
                if any(e["completed"] for e in county.plays(d, broadcast_id)):
                    return d
        return None

    return await wait_until(
        check, timeout_s, f"a completed play of {broadcast_id}", interval_s=0.003
    )


# --------------------------------------------------------------------------- intruders


class MqttIntruder:
    """Someone with one terminal's broker credentials who connects under a client id of
    their choosing, again and again (as paho's reconnect would), from a thread.

    `connacks` records each CONNACK reason; `sessions` counts the connections the broker
    accepted. The intruder asks for a clean start, the way to wipe whatever session the
    client id had."""

    def __init__(self, host: str, port: int, username: str, password: str, client_id: str) -> None:
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.client_id = client_id
        self.connacks: list[str] = []
        self.errors: list[str] = []
        self.sessions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"intruder-{client_id}")

    def __enter__(self) -> MqttIntruder:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._one_connection()
            except Exception as exc:  # recorded, never raised out of the thread
                self.errors.append(repr(exc))
            self._stop.wait(0.3)

    def _one_connection(self) -> None:
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5
        )
        client.username_pw_set(self.username, self.password)
        connected = threading.Event()
        closed = threading.Event()

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            self.connacks.append(str(reason))
            if not reason.is_failure:
                self.sessions += 1
                connected.set()
            else:
                closed.set()

        def on_disconnect(_c: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
            closed.set()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        client.connect(self.host, self.port, keepalive=30, clean_start=True, properties=props)
        deadline = time.monotonic() + 5
        # Hold the connection (and whatever session it got) until thrown off or stopped.
        while not self._stop.is_set() and not closed.is_set():
            if client.loop(timeout=0.05) != paho.MQTT_ERR_SUCCESS:
                break
            if not connected.is_set() and time.monotonic() > deadline:
                break
        with contextlib.suppress(Exception):
            client.disconnect()
            client.loop(timeout=0.05)
