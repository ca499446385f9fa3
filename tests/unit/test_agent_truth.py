"""The terminal tells the truth through crashes, outages and power cuts.

Real agents (in process, and one as its own `dalaba agent` process to be SIGKILLed) on
simulated hardware, a real private Mosquitto, and a small aiohttp media server that can
stop listening, answer 404 or serve altered bytes. The "controller" here is a plain MQTT
client with the controller's account: it signs and publishes commands and collects
every report, so each test reads what a terminal really said, in the order it arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from dalaba import protocol as p
from dalaba.mqtt import BrokerAddress, MqttConnection
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
from edge_agent.agent import LATE_STEP_MS, LATE_TOLERANCE_MS, EdgeAgent
from edge_agent.cache import MediaCache
from edge_agent.config import DeviceConfig
from edge_agent.fetcher import Backoff, FetchDeadline, MediaFetcher, MediaUnavailable
from edge_agent.journal import PlayJournal
from edge_agent.outbox import Outbox
from firmware_sim.hardware import SimClock, SimHardware, SimNetwork

pytestmark = [pytest.mark.broker]

REPO = Path(__file__).resolve().parents[2]
S = p.DeliveryState
Report = p.DeviceStatus | p.DeliveryReport | p.DeviceEvent | p.Telemetry


# --------------------------------------------------------------------------- audio


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> Callable[[float], bytes]:
    """`tones(seconds)`: a WAV tone of that length (made once per length by ffmpeg)."""
    made: dict[float, bytes] = {}
    folder = tmp_path_factory.mktemp("tones")

    def tone(seconds: float) -> bytes:
        if seconds not in made:
            path = folder / f"tone-{seconds}.wav"
            subprocess.run(
                [
                    *("ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi"),
                    *("-i", f"sine=frequency=440:duration={seconds}"),
                    *("-ar", "16000", "-ac", "1", str(path)),
                ],
                check=True,
            )
            made[seconds] = path.read_bytes()
        return made[seconds]

    return tone


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- media server


class MediaServer:
    """Serves `files` by path; `status` forces an answer for a path; it can stop
    listening (connection refused, as a controller that is restarting) and listen again
    on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.files: dict[str, bytes] = {}
        self.status: dict[str, int] = {}
        self.hits: list[str] = []
        app = web.Application()
        app.router.add_get("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app)
        self._site: web.TCPSite | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, data: bytes, path: str | None = None) -> str:
        path = path or f"/media/{sha(data)}"
        self.files[path] = data
        return path

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        if request.path in self.status:
            return web.Response(status=self.status[request.path])
        data = self.files.get(request.path)
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data)

    async def start(self) -> None:
        await self._runner.setup()
        await self.listen()

    async def listen(self) -> None:
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    async def stop_listening(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def close(self) -> None:
        await self._runner.cleanup()


# --------------------------------------------------------------------------- the rig


class Rig:
    """A private broker, a media server, and the controller's side of MQTT."""

    def __init__(self, tmp: Path, devices: tuple[str, ...]) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.signer = Ed25519Signer.generate()
        self.media = MediaServer()
        self.controller_password = secrets.token_urlsafe(12)
        self.accounts = {
            d: DeviceAccount(d, "v-1", "t-1", secrets.token_urlsafe(12)) for d in devices
        }
        files = write_broker_config(tmp / "broker", self.port)
        write_password_file(
            files.password_file, self.controller_password, [*self.accounts.values()]
        )
        write_acl(files.acl_file, [*self.accounts.values()])
        self.broker = MosquittoProcess(files, self.port)
        self.received: list[
            tuple[str, p.DeviceStatus | p.DeliveryReport | p.DeviceEvent | p.Telemetry]
        ] = []
        self._changed = asyncio.Event()
        self._probed = asyncio.Event()
        self.controller: MqttConnection | None = None
        self.agents: list[EdgeAgent] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    async def start(self) -> None:
        await self.broker.start_async()
        await self.media.start()
        self.controller = MqttConnection(
            client_id=CONTROLLER_USER,
            broker=BrokerAddress("127.0.0.1", self.port).with_credentials(
                CONTROLLER_USER, self.controller_password
            ),
            on_message=self._on_message,
            subscriptions=[
                (p.Topics.ALL_DEVICE_STATUS, 1),
                (p.Topics.ALL_DEVICE_ACKS, 1),
                (p.Topics.ALL_DEVICE_EVENTS, 1),
                (p.Topics.ALL_DEVICE_TELEMETRY, 0),
            ],
            session_expiry_s=0,
        )
        await self.controller.start()
        # The broker handles our SUBSCRIBE before a PUBLISH sent after it: once the probe
        # comes back, no report from a terminal can be missed.
        self.controller.publish(f"{p.TOPIC_ROOT}/device/probe/event", b"probe", qos=1)
        await asyncio.wait_for(self._probed.wait(), 10)

    async def stop(self) -> None:
        for agent in self.agents:
            await agent.stop()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self.controller is not None:
            await self.controller.stop()
        await self.media.stop_listening()
        await self.media.close()
        self.broker.stop()

    def _on_message(self, topic: str, payload: bytes) -> None:
        parsed = p.Topics.parse_device_topic(topic)
        if parsed is None or parsed[0] == "probe":
            self._probed.set()
            return
        device_id, kind = parsed
        self.received.append((device_id, p.parse_report(kind, payload)))
        self._changed.set()

    # ------------------------------------------------------------------ terminals

    def config(self, device_id: str = "d-1", **settings: Any) -> DeviceConfig:
        return DeviceConfig(
            device_id=device_id,
            village_id="v-1",
            township_id="t-1",
            broker_url=f"mqtt://127.0.0.1:{self.port}",
            mqtt_username=device_id,
            mqtt_password=SecretStr(self.accounts[device_id].password),
            media_base_url=self.media.url("/media/"),
            controller_public_keys=[self.signer.public_pem().decode()],
            state_dir=self.tmp / "sim" / device_id / "state",
            **settings,
        )

    async def start_agent(self, config: DeviceConfig) -> tuple[EdgeAgent, SimHardware]:
        """Start (or, after a power cut, restart) a terminal; returns once its
        subscriptions are in force (its online status follows its SUBSCRIBE)."""
        seen = len(self.statuses(config.device_id))
        hw = SimHardware.create(config.state_dir.parent)
        hw.speaker.record_wav = False
        agent = EdgeAgent(config, hw)
        self.agents.append(agent)
        await agent.start(connect_timeout_s=10)
        await self.wait(
            lambda: any(s.online for s in self.statuses(config.device_id)[seen:]),
            what=f"{config.device_id} online",
        )
        return agent, hw

    async def power_cut(self, agent: EdgeAgent, hw: SimHardware) -> None:
        self.agents.remove(agent)
        await agent.stop(graceful=False)
        await hw.amplifier.power_off()

    def spawn_agent(self, config: DeviceConfig) -> subprocess.Popen[bytes]:
        """The terminal as its own process (`dalaba agent`), to be SIGKILLed."""
        path = config.state_dir.parent / "device.json"
        config.save(path)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DALABA_")}
        log = (config.state_dir.parent / "agent.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "dalaba_ops.cli", "agent", "--config", str(path)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    # ------------------------------------------------------------------ commands

    async def send(
        self, device_id: str, body: Any, *, expires_in_ms: int = 120_000
    ) -> tuple[p.Command, bytes]:
        command = p.Command.new(body, p.Target(devices=(device_id,)), p.now_ms() + expires_in_ms)
        envelope = p.seal(command, self.signer)
        assert self.controller is not None
        await self.controller.publish_confirmed(p.Topics.command_device(device_id), envelope)
        return command, envelope

    def play(
        self,
        bid: str,
        data: bytes,
        *,
        start_in_ms: int = 1_500,
        priority: p.Priority = p.Priority.NOTICE,
        url: str | None = None,
        mirrors: tuple[str, ...] = (),
        attempt: int = 0,
        serve: bool = True,
    ) -> p.PlayBody:
        if serve:
            self.media.serve(data)
        media = p.MediaRef(
            sha256=sha(data), url=url or sha(data), size=len(data), duration_ms=0, mirrors=mirrors
        )
        return p.PlayBody(
            broadcast_id=bid,
            priority=priority,
            level=2 if priority is p.Priority.EMERGENCY else None,
            category="flood",
            media=media,
            start_at=p.now_ms() + start_in_ms,
            attempt=attempt,
        )

    # ------------------------------------------------------------------ what was said

    def statuses(self, device_id: str) -> list[p.DeviceStatus]:
        return [m for d, m in self.received if d == device_id and isinstance(m, p.DeviceStatus)]

    def reports(self, device_id: str, bid: str | None = None) -> list[p.DeliveryReport]:
        """The reports in the order they arrived, each once: the outbox sends at least
        once (a report whose PUBACK a power cut lost comes again after the restart, with
        its `seq`), and the controller applies a `seq` once."""
        seen: set[int] = set()
        found = []
        for d, m in self.received:
            if d != device_id or not isinstance(m, p.DeliveryReport) or m.seq in seen:
                continue
            seen.add(m.seq)
            if bid is None or m.broadcast_id == bid:
                found.append(m)
        return found

    def states(self, device_id: str, bid: str) -> list[S]:
        return [r.state for r in self.reports(device_id, bid)]

    def events(self, device_id: str) -> list[p.DeviceEvent]:
        return [m for d, m in self.received if d == device_id and isinstance(m, p.DeviceEvent)]

    def telemetry(self, device_id: str) -> list[p.Telemetry]:
        return [m for d, m in self.received if d == device_id and isinstance(m, p.Telemetry)]

    async def wait(self, ready: Callable[[], bool], timeout_s: float = 30, what: str = "") -> None:
        """Wait until `ready()` holds; looked at whenever a message arrives, and at least
        every 50 ms for conditions on files and terminal state."""
        deadline = time.monotonic() + timeout_s
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what or ready}")
            self._changed.clear()
            with_timeout = min(remaining, 0.05)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), with_timeout)

    async def wait_state(
        self, device_id: str, bid: str, state: S, timeout_s: float = 30
    ) -> p.DeliveryReport:
        await self.wait(
            lambda: state in self.states(device_id, bid),
            timeout_s,
            f"{device_id} {bid} {state.value} (so far {self.states(device_id, bid)})",
        )
        return next(r for r in self.reports(device_id, bid) if r.state is state)

    async def settled(self, device_id: str) -> None:
        """Everything sent to `device_id` before now has been handled: a marker
        command's `received` comes back after the commands ahead of it on its topic."""
        marker = f"marker-{secrets.token_hex(4)}"
        await self.send(device_id, self.play(marker, b"marker", start_in_ms=600_000))
        await self.wait_state(device_id, marker, S.RECEIVED)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    setup = Rig(tmp_path, devices=("d-1", "d-2"))
    try:
        await setup.start()
        yield setup
    finally:
        await setup.stop()


def plays_started(hw: SimHardware, bid: str) -> list[dict[str, Any]]:
    return [e for e in hw.speaker.plays_started() if e["broadcast_id"] == bid]


def plays_ended(hw: SimHardware, bid: str) -> list[dict[str, Any]]:
    return [e for e in hw.speaker.plays() if e["broadcast_id"] == bid]


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


# --------------------------------------------------------------------------- the outbox


async def test_reports_made_offline_survive_a_power_cut_and_are_sent_in_order(
    rig: Rig, tones: Callable[[float], bytes]
) -> None:
    config = rig.config()
    agent, hw = await rig.start_agent(config)
    audio = tones(1.0)
    rig.media.serve(audio)
    ref = p.MediaRef(sha256=sha(audio), url=sha(audio), size=len(audio), duration_ms=1000)
    start_at = p.now_ms() + 4_000
    occurrence = p.ScheduledItem(
        occurrence_id="occ-1",
        schedule_id="s-1",
        priority=p.Priority.NOTICE,
        category="other",
        media=ref,
        start_at=start_at,
        expires_at=start_at + 600_000,
    )
    schedule = p.ScheduleBody(version=1, horizon_until=start_at + 3_600_000, items=(occurrence,))
    await rig.send("d-1", schedule)
    await rig.wait(lambda: agent.cache.has(ref.sha256), what="the scheduled audio on flash")

    # The link goes; the terminal plays its schedule on its own clock ...
    hw.network.down = True
    assert agent.mqtt is not None
    agent.mqtt.drop()
    await rig.wait(lambda: not rig.statuses("d-1")[-1].online, what="the last will")
    await rig.wait(lambda: agent.counters["state_done"] == 1, what="the local play done")
    assert plays_ended(hw, "occ-1")[0]["completed"]
    # ... then loses power before the link comes back.
    await rig.power_cut(agent, hw)
    assert rig.reports("d-1", "occ-1") == []  # nothing got out

    telemetry_before = len(rig.telemetry("d-1"))
    agent, hw = await rig.start_agent(config)
    await rig.wait_state("d-1", "occ-1", S.DONE)
    reports = rig.reports("d-1", "occ-1")
    assert [r.state for r in reports] == [S.RECEIVED, S.FETCHED, S.PLAYING, S.DONE]
    assert all(r.offline for r in reports)
    assert [r.seq for r in reports] == sorted(r.seq for r in reports)
    assert {r.command_id for r in reports} == {"schedule-v1"}
    await rig.wait(
        lambda: any(e.kind is p.EventKind.PLAYED_OFFLINE for e in rig.events("d-1")),
        what="played_offline",
    )
    await rig.wait(lambda: len(agent.outbox) == 0, what="the outbox emptied by the PUBACKs")
    # The first telemetry after the reboot said what was waiting, and how often it comes.
    await rig.wait(lambda: len(rig.telemetry("d-1")) > telemetry_before, what="telemetry")
    first = rig.telemetry("d-1")[telemetry_before]
    assert first.interval_s == config.telemetry_interval_s
    assert first.outbox >= 5  # four reports and the played_offline event
    # Not played again after the reboot: the claim is on flash.
    assert len(plays_started(hw, "occ-1")) == 1


async def test_reports_queued_on_a_dead_link_go_out_in_order_after_the_reconnect(
    rig: Rig, tones: Callable[[float], bytes]
) -> None:
    agent, hw = await rig.start_agent(rig.config())
    body = rig.play("b-1", tones(1.0), start_in_ms=2_500)
    await rig.send("d-1", body)
    await rig.wait_state("d-1", "b-1", S.FETCHED)
    hw.network.down = True
    assert agent.mqtt is not None
    agent.mqtt.drop()
    await rig.wait(lambda: agent.counters["state_done"] == 1, what="done while offline")
    assert len(agent.outbox) >= 2  # playing and done, on flash
    hw.network.down = False
    await rig.wait_state("d-1", "b-1", S.DONE)
    reports = rig.reports("d-1", "b-1")
    assert [r.state for r in reports] == [S.RECEIVED, S.FETCHED, S.PLAYING, S.DONE]
    assert [r.offline for r in reports] == [False, False, True, True]
    await rig.wait(lambda: len(agent.outbox) == 0, what="the outbox emptied")


async def test_final_reports_are_sent_again_when_the_controller_asks(
    rig: Rig, tones: Callable[[float], bytes]
) -> None:
    """A broker that lost the controller's session acknowledged the terminal's `done`
    and delivered it to nobody; the controller, finding its session gone, asks for the
    final reports made since the link was lost, and gets the same report (same seq)."""
    agent, _hw = await rig.start_agent(rig.config())
    await rig.send("d-1", rig.play("b-1", tones(0.5), start_in_ms=1_500))
    done = await rig.wait_state("d-1", "b-1", S.DONE)
    await rig.wait(lambda: len(agent.outbox) == 0, what="the outbox emptied by the PUBACKs")

    def dones() -> list[p.DeliveryReport]:
        return [
            m
            for d, m in rig.received
            if d == "d-1" and isinstance(m, p.DeliveryReport) and m.state is S.DONE
        ]

    # Asked for what was finished after it: nothing comes again.
    await rig.send("d-1", p.ReportAgainBody(since=done.at + 1))
    await rig.settled("d-1")
    assert len(dones()) == 1
    assert agent.counters["reported_again"] == 0

    await rig.send("d-1", p.ReportAgainBody(since=done.at - 60_000))
    await rig.wait(lambda: len(dones()) == 2, what="the done report sent again")
    assert dones()[1] == done  # the same report: the controller ignores it by its seq
    # With it, the marker play that `settled` sent (its "audio" fails at once).
    assert agent.counters["reported_again"] == 2
    await rig.wait(lambda: len(agent.outbox) == 0, what="the outbox emptied again")


# --------------------------------------------------------------------------- interrupted play


async def test_a_play_cut_by_a_crash_is_played_again_from_its_start(
    rig: Rig, tones: Callable[[float], bytes]
) -> None:
    config = rig.config()
    proc = rig.spawn_agent(config)
    await rig.wait(lambda: any(s.online for s in rig.statuses("d-1")), what="the agent process")
    body = rig.play("b-1", tones(4.0), priority=p.Priority.EMERGENCY)
    await rig.send("d-1", body)
    await rig.wait_state("d-1", "b-1", S.PLAYING)
    record_dir = config.state_dir.parent
    await rig.wait(lambda: bool(read_lines(record_dir / "plays-started.jsonl")), what="sound")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    await rig.wait(lambda: not rig.statuses("d-1")[-1].online, what="the last will")
    cut_after_ms = p.now_ms() - read_lines(record_dir / "plays-started.jsonl")[0]["start_ms"]
    assert read_lines(record_dir / "plays.jsonl") == []  # killed: no end line, only the start

    agent, hw = await rig.start_agent(config)
    done = await rig.wait_state("d-1", "b-1", S.DONE)
    states = rig.states("d-1", "b-1")
    interrupted = states.index(S.PREEMPTED)
    assert states[interrupted:] == [S.PREEMPTED, S.PLAYING, S.DONE]
    report = rig.reports("d-1", "b-1")[interrupted]
    assert report.reason == p.FAIL_INTERRUPTED
    assert report.offset_ms is not None and 0 <= report.offset_ms <= cut_after_ms
    replayed = rig.reports("d-1", "b-1")[interrupted + 1]
    assert replayed.late_ms is not None and replayed.late_ms >= LATE_TOLERANCE_MS
    assert done.command_id == replayed.command_id == report.command_id
    starts = plays_started(hw, "b-1")
    assert len(starts) == 2  # the cut one and the replay
    (end,) = plays_ended(hw, "b-1")
    assert end["completed"] and end["start_ms"] == starts[1]["start_ms"]
    assert len(agent.journal.owed()) == 0


@pytest.mark.parametrize("why", ["routine", "expired"])
async def test_a_play_cut_by_a_power_cut_that_cannot_resume_is_failed_interrupted(
    rig: Rig, tones: Callable[[float], bytes], why: str
) -> None:
    config = rig.config()
    agent, hw = await rig.start_agent(config)
    priority = p.Priority.ROUTINE if why == "routine" else p.Priority.NOTICE
    body = rig.play("b-1", tones(6.0), start_in_ms=1_000, priority=priority)
    command, _ = await rig.send("d-1", body, expires_in_ms=120_000 if why == "routine" else 3_000)
    await rig.wait_state("d-1", "b-1", S.PLAYING)
    await rig.power_cut(agent, hw)
    if why == "expired":
        await rig.wait(lambda: p.now_ms() > command.expires_at, what="the broadcast's expiry")

    agent, hw = await rig.start_agent(config)
    failed = await rig.wait_state("d-1", "b-1", S.FAILED)
    assert failed.reason == p.FAIL_INTERRUPTED
    assert failed.offset_ms is not None and 0 <= failed.offset_ms <= 6_000
    assert failed.offline  # made before the reconnect, sent from the outbox
    await rig.settled("d-1")
    assert rig.states("d-1", "b-1") == [S.RECEIVED, S.FETCHED, S.PLAYING, S.FAILED]
    assert len(plays_started(hw, "b-1")) == 1  # not played again
    assert "b-1" not in {o.broadcast_id for o in agent.journal.owed()}


async def test_a_broadcast_waiting_in_the_queue_at_a_power_cut_is_resumed(
    rig: Rig, tones: Callable[[float], bytes]
) -> None:
    config = rig.config()
    agent, hw = await rig.start_agent(config)
    body = rig.play("b-1", tones(1.0), start_in_ms=6_000)
    await rig.send("d-1", body)
    await rig.wait_state("d-1", "b-1", S.FETCHED)
    await rig.power_cut(agent, hw)

    agent, hw = await rig.start_agent(config)
    await rig.wait_state("d-1", "b-1", S.DONE)
    assert rig.states("d-1", "b-1") == [S.RECEIVED, S.FETCHED, S.PLAYING, S.DONE]
    (start,) = plays_started(hw, "b-1")
    assert start["start_at_ms"] == body.start_at  # still in time: on its signed instant


async def test_a_crash_between_the_final_report_and_the_journal_replays_nothing(
    rig: Rig, tones: Callable[[float], bytes]
) -> None:
    # The instant between putting `done` in the outbox and closing the play in the
    # journal: the next start must send the `done`, not report an interruption.
    config = rig.config()
    body = rig.play("b-1", tones(1.0), start_in_ms=-5_000)
    journal = PlayJournal(config.state_dir / "owed-plays.log")
    journal.load()
    journal.accepted("cmd-1", p.now_ms() + 60_000, False, body, p.now_ms() - 6_000)
    journal.started("b-1", p.now_ms() - 5_000, 1_000)
    journal.close()
    outbox = Outbox(config.state_dir / "outbox.log")
    outbox.load()
    done = p.DeliveryReport(
        device_id="d-1",
        broadcast_id="b-1",
        command_id="cmd-1",
        state=S.DONE,
        at=p.now_ms() - 4_000,
        seq=1,
    )
    outbox.add(p.Topics.device_ack("d-1"), done.to_bytes(), keep=True)
    outbox.close()

    agent, hw = await rig.start_agent(config)
    await rig.wait_state("d-1", "b-1", S.DONE)
    await rig.settled("d-1")
    assert rig.states("d-1", "b-1") == [S.DONE]
    assert plays_started(hw, "b-1") == []
    assert "b-1" not in {o.broadcast_id for o in agent.journal.owed()}


# --------------------------------------------------------------------------- fetching


async def test_a_late_fetch_starts_on_the_late_grid_and_reports_its_lateness(
    rig: Rig, tones: Callable[[float], bytes]
) -> None:
    agent, hw = await rig.start_agent(rig.config())
    await rig.media.stop_listening()  # the controller is restarting
    body = rig.play("b-1", tones(1.0), start_in_ms=800)
    await rig.send("d-1", body)
    await rig.wait(lambda: p.now_ms() > body.start_at, what="the start instant passing")
    await rig.wait(lambda: agent.fetcher.requests >= 3, what="retries")
    await rig.media.listen()  # and back

    await rig.wait_state("d-1", "b-1", S.DONE)
    assert rig.states("d-1", "b-1") == [S.RECEIVED, S.FETCHED, S.PLAYING, S.DONE]
    playing = rig.reports("d-1", "b-1")[2]
    assert playing.late_ms is not None and playing.late_ms >= LATE_STEP_MS - LATE_TOLERANCE_MS
    (start,) = plays_started(hw, "b-1")
    asked_late_by = start["start_at_ms"] - body.start_at
    assert asked_late_by > 0 and asked_late_by % LATE_STEP_MS == 0
    assert start["amplifier_warm_ms"] >= 0


async def test_past_start_plus_grace_the_play_fails_with_the_reason(
    rig: Rig, tones: Callable[[float], bytes]
) -> None:
    agent, hw = await rig.start_agent(rig.config(fetch_grace_s=1))
    await rig.media.stop_listening()
    body = rig.play("b-1", tones(1.0), start_in_ms=500)
    await rig.send("d-1", body)
    failed = await rig.wait_state("d-1", "b-1", S.FAILED)
    assert failed.reason is not None
    assert failed.reason.startswith("media: could not fetch before start + grace (1 s)")
    assert agent.fetcher.requests >= 2  # it did retry
    assert plays_started(hw, "b-1") == []


@pytest.mark.parametrize("fault", ["HTTP 404", "hash mismatch"])
async def test_a_missing_or_altered_file_fails_at_once_without_sound(
    rig: Rig, tones: Callable[[float], bytes], fault: str
) -> None:
    agent, hw = await rig.start_agent(rig.config())
    audio = tones(1.0)
    body = rig.play("b-1", audio, mirrors=("/mirror/x",), serve=False)
    if fault == "hash mismatch":  # altered in the store, and on the mirror too
        rig.media.serve(audio[:-10] + b"\x00" * 10, f"/media/{sha(audio)}")
        rig.media.serve(audio[:-10] + b"\x01" * 10, "/mirror/x")
    await rig.send("d-1", body)
    failed = await rig.wait_state("d-1", "b-1", S.FAILED)
    assert failed.reason is not None
    assert failed.reason.startswith(f"media: {fault}"), failed.reason
    assert "/mirror/x" in failed.reason  # every source named
    assert agent.fetcher.requests == 2  # each source once: a definitive answer
    assert rig.states("d-1", "b-1") == [S.RECEIVED, S.FAILED]
    assert not agent.cache.has(sha(audio))
    assert hw.speaker.plays_started() == []


async def test_the_mirror_serves_when_the_first_url_cannot(
    rig: Rig, tones: Callable[[float], bytes]
) -> None:
    _, hw = await rig.start_agent(rig.config())
    audio = tones(1.0)
    dead = f"http://127.0.0.1:{free_port()}/media/{sha(audio)}"  # a replica that is down
    rig.media.serve(audio, "/mirror/a.wav")
    body = rig.play("b-1", audio, url=dead, mirrors=("/mirror/a.wav",), serve=False)
    await rig.send("d-1", body)
    await rig.wait_state("d-1", "b-1", S.DONE)
    assert rig.media.hits == ["/mirror/a.wav"]
    assert plays_ended(hw, "b-1")[0]["completed"]


# --------------------------------------------------------------------------- the amplifier


async def test_the_amplifier_is_warm_before_the_first_sample_with_one_warm_up(
    rig: Rig, tones: Callable[[float], bytes]
) -> None:
    _, hw = await rig.start_agent(rig.config())
    # Close enough to its start that the agent warms the amplifier while fetching;
    # the play then joins that warm-up instead of starting another.
    body = rig.play("b-1", tones(1.0), start_in_ms=2_000, priority=p.Priority.EMERGENCY)
    await rig.send("d-1", body)
    await rig.wait_state("d-1", "b-1", S.DONE)
    (start,) = plays_started(hw, "b-1")
    assert start["amplifier_warm_ms"] >= 0
    assert start["start_at_ms"] == body.start_at
    assert hw.amplifier.power_cycles == 1


@pytest.mark.parametrize("fault", ["speaker line cut", "amplifier failed"])
async def test_a_fault_during_a_play_is_reported_silent_with_the_seconds_affected(
    rig: Rig, tones: Callable[[float], bytes], fault: str
) -> None:
    # The DAC plays on through a dead line; the output monitor is what notices, and the
    # play ends `silent` (not `done`) with how long and from where it was not heard.
    agent, hw = await rig.start_agent(rig.config())
    body = rig.play("b-1", tones(3.0), start_in_ms=1_000)
    await rig.send("d-1", body)
    await rig.wait_state("d-1", "b-1", S.PLAYING)
    await asyncio.sleep(0.5)
    if fault == "speaker line cut":
        hw.speaker.line_cut = True
    else:
        hw.amplifier.failed = True
    silent = await rig.wait_state("d-1", "b-1", S.SILENT)
    assert silent.reason is not None and "no sound on the speaker line" in silent.reason
    assert ("speaker_line" if fault == "speaker line cut" else "amplifier") in silent.reason
    assert silent.silent_ms is not None and 0 < silent.silent_ms <= 3_000, silent.silent_ms
    assert silent.offset_ms is not None and 0 < silent.offset_ms < 3_000, silent.offset_ms
    (end,) = plays_ended(hw, "b-1")
    # The simulator's own record agrees within the monitor's sampling step (and load).
    assert end["completed"] and isinstance(end["silent_ms"], int)
    assert abs(end["silent_ms"] - silent.silent_ms) < 1_500, (end, silent.silent_ms)
    assert agent.journal.owed() == []


async def test_a_whole_play_heard_is_done_not_silent(
    rig: Rig, tones: Callable[[float], bytes]
) -> None:
    _, hw = await rig.start_agent(rig.config())
    await rig.send("d-1", rig.play("b-1", tones(1.0), start_in_ms=500))
    done = await rig.wait_state("d-1", "b-1", S.DONE)
    assert done.silent_ms is None
    (end,) = plays_ended(hw, "b-1")
    assert "silent_ms" not in end


async def test_a_failed_amplifier_fails_the_play_before_it_sounds(
    rig: Rig, tones: Callable[[float], bytes]
) -> None:
    _, hw = await rig.start_agent(rig.config())
    hw.amplifier.failed = True
    await rig.send("d-1", rig.play("b-1", tones(1.0)))
    failed = await rig.wait_state("d-1", "b-1", S.FAILED)
    assert failed.reason == "amplifier failed to power on"
    assert failed.offset_ms is None
    assert plays_started(hw, "b-1") == []


# --------------------------------------------------------------------------- resend


async def test_a_resend_is_taken_up_unless_already_played(
    rig: Rig, tones: Callable[[float], bytes]
) -> None:
    config = rig.config()
    agent, hw = await rig.start_agent(config)
    audio = tones(1.0)
    first = rig.play("b-1", audio, serve=False)  # the media is missing: it fails
    await rig.send("d-1", first)
    await rig.wait_state("d-1", "b-1", S.FAILED)
    assert {r.attempt for r in rig.reports("d-1", "b-1")} == {0}

    rig.media.serve(audio)
    resend = rig.play("b-1", audio, attempt=1)
    _, envelope = await rig.send("d-1", resend)
    await rig.wait(lambda: rig.states("d-1", "b-1").count(S.DONE) == 1, what="resend done")
    again = rig.reports("d-1", "b-1")[2:]
    assert [r.state for r in again] == [S.RECEIVED, S.FETCHED, S.PLAYING, S.DONE]
    assert {r.attempt for r in again} == {1}

    # The same attempt under another command id, and a later attempt: played already.
    await rig.send("d-1", rig.play("b-1", audio, attempt=1))
    await rig.send("d-1", rig.play("b-1", audio, attempt=2))
    # The resend's own command captured and replayed: refused as a replay.
    assert rig.controller is not None
    await rig.controller.publish_confirmed(p.Topics.command_device("d-1"), envelope)
    await rig.settled("d-1")
    assert len(rig.reports("d-1", "b-1")) == 6
    assert agent.counters["already_played"] == 2
    assert [e.reason for e in rig.events("d-1") if e.broadcast_id == "b-1"] == ["replayed"]

    # After a reboot, the memory of what was played holds.
    await rig.power_cut(agent, hw)
    agent, hw = await rig.start_agent(config)
    await rig.send("d-1", rig.play("b-1", audio, attempt=3))
    await rig.settled("d-1")
    assert len(rig.reports("d-1", "b-1")) == 6
    assert agent.counters["already_played"] == 1
    assert len(plays_started(hw, "b-1")) == 1


async def test_a_cancelled_broadcast_is_not_taken_up_by_a_resend(
    rig: Rig, tones: Callable[[float], bytes]
) -> None:
    _, hw = await rig.start_agent(rig.config())
    audio = tones(1.0)
    await rig.send("d-1", p.CancelBody(broadcast_id="b-1"))  # before it ever arrived
    await rig.send("d-1", rig.play("b-1", audio))
    await rig.send("d-1", rig.play("b-1", audio, attempt=1))
    await rig.settled("d-1")
    assert rig.reports("d-1", "b-1") == []
    assert plays_started(hw, "b-1") == []


async def test_a_claimed_schedule_occurrence_is_never_played_twice(
    rig: Rig, tones: Callable[[float], bytes]
) -> None:
    config = rig.config()
    agent, hw = await rig.start_agent(config)
    audio = tones(1.0)
    rig.media.serve(audio)
    ref = p.MediaRef(sha256=sha(audio), url=sha(audio), size=len(audio), duration_ms=1000)
    start_at = p.now_ms() + 3_000
    item = p.ScheduledItem(
        occurrence_id="occ-1",
        schedule_id="s-1",
        priority=p.Priority.NOTICE,
        category="other",
        media=ref,
        start_at=start_at,
        expires_at=start_at + 600_000,
    )
    await rig.send(
        "d-1", p.ScheduleBody(version=1, horizon_until=start_at + 3_600_000, items=(item,))
    )
    await rig.wait_state("d-1", "occ-1", S.DONE)
    # The controller's own command for the occurrence (its runner) comes after all.
    await rig.send("d-1", item.play_body())
    await rig.settled("d-1")
    await rig.power_cut(agent, hw)
    agent, hw = await rig.start_agent(config)  # its schedule still lists the occurrence
    await rig.send("d-1", item.play_body())
    await rig.settled("d-1")
    assert rig.states("d-1", "occ-1") == [S.RECEIVED, S.FETCHED, S.PLAYING, S.DONE]
    assert len(plays_started(hw, "occ-1")) == 1


# --------------------------------------------------------------------------- the fetcher


@pytest.fixture
async def media() -> AsyncIterator[MediaServer]:
    server = MediaServer()
    await server.start()
    yield server
    await server.stop_listening()
    await server.close()


@pytest.fixture
async def fetcher(tmp_path: Path, media: MediaServer) -> AsyncIterator[MediaFetcher]:
    async with aiohttp.ClientSession() as session:
        yield MediaFetcher(
            cache=MediaCache(tmp_path / "cache", 10 * 1024 * 1024),
            base_url=media.url("/media/"),
            network=SimNetwork(),
            clock=SimClock(),
            session=lambda: session,
        )


FAST = Backoff(first_s=0.01, cap_s=0.05)


async def until(ready: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)  # polling a condition, not waiting for time to pass


def ref_for(data: bytes, url: str | None = None, mirrors: tuple[str, ...] = ()) -> p.MediaRef:
    return p.MediaRef(
        sha256=sha(data), url=url or sha(data), size=len(data), duration_ms=0, mirrors=mirrors
    )


def test_sources_are_the_url_then_each_mirror_joined_to_the_base(tmp_path: Path) -> None:
    fetcher = MediaFetcher(
        cache=MediaCache(tmp_path, 1000),
        base_url="http://ctl:8080/media/",
        network=SimNetwork(),
        clock=SimClock(),
        session=lambda: None,  # type: ignore[arg-type, return-value]
    )
    ref = ref_for(b"x", mirrors=("http://replica:8080/media/abc", "/alt/abc", "abc"))
    assert fetcher.sources(ref) == [
        f"http://ctl:8080/media/{sha(b'x')}",
        "http://replica:8080/media/abc",
        "http://ctl:8080/alt/abc",
        "http://ctl:8080/media/abc",
    ]


async def test_a_5xx_is_retried_and_the_bytes_are_verified_before_storing(
    fetcher: MediaFetcher, media: MediaServer
) -> None:
    data = b"sound" * 100
    path = media.serve(data)
    media.status[path] = 503
    task = asyncio.create_task(fetcher.fetch(ref_for(data), p.now_ms() + 30_000, FAST))
    await until(lambda: len(media.hits) >= 3)  # answered 503 three times ...
    del media.status[path]  # ... then the file
    stored = await task
    assert stored.read_bytes() == data
    assert fetcher.requests == len(media.hits) >= 4


async def test_a_cached_file_is_not_fetched_again(
    fetcher: MediaFetcher, media: MediaServer
) -> None:
    data = b"sound" * 100
    media.serve(data)
    await fetcher.fetch(ref_for(data), p.now_ms() + 1_000, FAST)
    await fetcher.fetch(ref_for(data), p.now_ms() + 1_000, FAST)
    assert fetcher.requests == 1
    # Altered on the flash: found, and fetched again.
    fetcher.cache.path_for(sha(data)).write_bytes(b"x" * len(data))
    assert (await fetcher.fetch(ref_for(data), p.now_ms() + 1_000, FAST)).read_bytes() == data
    assert fetcher.requests == 2


async def test_all_404_is_definitive_at_once(fetcher: MediaFetcher, media: MediaServer) -> None:
    data = b"missing"
    with pytest.raises(MediaUnavailable, match=r"HTTP 404 from .*/media/.*; HTTP 404 from"):
        await fetcher.fetch(ref_for(data, mirrors=("/m/x",)), p.now_ms() + 60_000, FAST)
    assert fetcher.requests == 2


async def test_a_404_on_one_source_and_an_outage_on_the_other_is_retried(
    fetcher: MediaFetcher, media: MediaServer
) -> None:
    data = b"sound" * 10
    dead = f"http://127.0.0.1:{free_port()}/x"
    with pytest.raises(FetchDeadline):
        # The outage may end: not definitive, retried until the deadline.
        await fetcher.fetch(ref_for(data, mirrors=(dead,)), p.now_ms() + 300, FAST)
    assert fetcher.requests > 2


async def test_a_deadline_already_past_still_tries_every_source_once(
    fetcher: MediaFetcher, media: MediaServer
) -> None:
    data = b"late" * 10
    media.serve(data, "/m/late")
    media.status[f"/media/{sha(data)}"] = 500
    stored = await fetcher.fetch(ref_for(data, mirrors=("/m/late",)), p.now_ms() - 1, FAST)
    assert stored.read_bytes() == data


async def test_a_network_that_is_down_makes_no_request(
    fetcher: MediaFetcher, media: MediaServer
) -> None:
    assert isinstance(fetcher.network, SimNetwork)
    fetcher.network.down = True
    with pytest.raises(FetchDeadline, match="network down"):
        await fetcher.fetch(ref_for(b"x"), p.now_ms() + 100, FAST)
    assert media.hits == [] and fetcher.requests == 0


def test_backoff_doubles_to_its_cap_with_jitter() -> None:
    delays = Backoff(first_s=0.25, cap_s=2.0, jitter=0.25).delays()
    got = [next(delays) for _ in range(7)]
    for value, nominal in zip(got, [0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0], strict=True):
        assert nominal * 0.75 <= value <= nominal * 1.25
