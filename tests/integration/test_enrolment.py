"""Enrolment with one-time codes and revocation, against a real Mosquitto: a code
enrols a board once (never twice, never after expiry); the board's new password works
and the old one stops; a revoked board is dropped by the broker at once and cannot log
in again; wrong codes are slowed down like failed logins."""

from __future__ import annotations

import asyncio
import os
import queue
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import paho.mqtt.client as paho
import pytest
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr
from sqlmodel import Session, select

from controller.api import keys
from controller.app import ControllerServer
from controller.enrolment import EnrolmentCode
from dalaba_ops.broker_accounts import MosquittoFileAccounts
from dalaba_ops.demo import PreparedCounty, setup_county
from edge_agent.agent import EdgeAgent
from edge_agent.config import DeviceConfig
from edge_agent.enrol import EnrolRefused, enrol
from firmware_sim.hardware import SimHardware
from tests.procs import write_env_file
from tests.support import DatabaseUrlFactory

pytestmark = [pytest.mark.broker]


@dataclass
class Enrolling:
    prepared: PreparedCounty
    controller: ControllerServer
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.prepared.api_url

    async def api(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {self.prepared.admin_token}"}
        async with self.http.request(method, self.url + path, json=body, headers=headers) as r:
            return r.status, await r.json()

    async def new_code(self, device_id: str) -> str:
        status, body = await self.api("POST", f"/api/devices/{device_id}/enrolment-code")
        assert status == 200, body
        return str(body["code"])


@pytest.fixture
async def county(tmp_path: Path, new_database_url: DatabaseUrlFactory) -> AsyncIterator[Enrolling]:
    prepared = setup_county(
        tmp_path / "county",
        villages=2,
        speech_backends=("espeak-ng",),
        console_users=False,
        database_url=new_database_url(),
    )
    await prepared.broker.start_async()
    accounts = MosquittoFileAccounts(prepared.data_dir / "broker", prepared.broker.reload)
    controller = ControllerServer(prepared.settings, broker_accounts=accounts)
    http = aiohttp.ClientSession()
    try:
        await controller.start()
        yield Enrolling(prepared, controller, http)
    finally:
        await http.close()
        await controller.stop()
        prepared.broker.stop()


async def start_agent(device_file: Path) -> EdgeAgent:
    config = DeviceConfig.load(device_file)
    agent = EdgeAgent(config, SimHardware.create(device_file.parent))
    await agent.start(connect_timeout_s=None)
    return agent


def connack(port: int, username: str, password: SecretStr) -> ReasonCode:
    """The broker's answer to one MQTT 5 login, by a plain paho client."""
    answers: queue.Queue[ReasonCode] = queue.Queue()
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id=f"{username}-probe", protocol=paho.MQTTv5
    )
    client.username_pw_set(username, password.get_secret_value())
    client.on_connect = lambda _c, _u, _f, reason, _p: answers.put(reason)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        return answers.get(timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()


async def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_a_code_enrols_once_and_a_revoked_board_is_dropped(
    county: Enrolling, tmp_path: Path
) -> None:
    device_id = county.prepared.county.villages[0].device_ids()[0]
    code = await county.new_code(device_id)
    assert len(code.replace("-", "")) == 10
    board_dir = tmp_path / "board"
    device_file = await enrol(county.url, code, board_dir, insecure_http=True)

    assert stat.S_IMODE(os.stat(board_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(device_file).st_mode) == 0o600
    config = DeviceConfig.load(device_file)
    assert config.device_id == device_id and config.clock_source == "controller"
    assert config.controller_public_keys and config.mqtt_password.get_secret_value()
    # Only the code's hash is kept.
    db = county.controller.app[keys.DB]  # type: ignore[index]
    rows = await db.run(lambda s: list(s.exec(select(EnrolmentCode))))
    assert [r.device_id for r in rows] == [device_id] and code not in rows[0].code_sha256
    assert rows[0].used_ms is not None

    # Once only: the same code again is refused, and nothing changes.
    with pytest.raises(EnrolRefused, match="403"):
        await enrol(county.url, code, tmp_path / "thief", insecure_http=True)
    assert not (tmp_path / "thief" / "device.json").exists()

    agent = await start_agent(device_file)
    try:
        await wait_until(lambda: agent.connected, 20, "the enrolled board connected")
        # The provisioned password of that terminal no longer works.
        old = DeviceConfig.load(
            county.prepared.data_dir / "sim" / device_id / "device.json"
        ).mqtt_password.get_secret_value()
        assert old != config.mqtt_password.get_secret_value()
        passwd = (county.prepared.data_dir / "broker" / "passwd").read_text()
        assert passwd.count(f"{device_id}:") == 1

        status, body = await county.api("POST", f"/api/devices/{device_id}/revoke")
        assert status == 200, body
        await wait_until(lambda: not agent.connected, 10, "the broker dropping the board")
        # It keeps trying (backoff up to 5 s) and is refused every time.
        await asyncio.sleep(8)
        assert not agent.connected
        assert f"{device_id}:" not in (county.prepared.data_dir / "broker" / "passwd").read_text()
        # And the broker itself says no to those credentials.
        refused = await asyncio.to_thread(
            connack, county.prepared.broker_port, device_id, config.mqtt_password
        )
        assert refused.is_failure, refused
    finally:
        await agent.stop()

    # A revoked board comes back only through a new code.
    again = await county.new_code(device_id)
    back = await enrol(county.url, again, tmp_path / "board2", insecure_http=True)
    password = DeviceConfig.load(back).mqtt_password
    assert f"{device_id}:" in (county.prepared.data_dir / "broker" / "passwd").read_text()
    accepted = await asyncio.to_thread(connack, county.prepared.broker_port, device_id, password)
    assert not accepted.is_failure, accepted
    agent = await start_agent(back)
    try:
        await wait_until(lambda: agent.connected, 30, "the re-enrolled board connected")
    finally:
        await agent.stop()


async def test_an_expired_code_is_refused_and_wrong_codes_are_slowed(
    county: Enrolling, tmp_path: Path
) -> None:
    device_id = county.prepared.county.villages[1].device_ids()[0]
    code = await county.new_code(device_id)
    db = county.controller.app[keys.DB]  # type: ignore[index]

    def expire(session: Session) -> None:
        for row in session.exec(select(EnrolmentCode)):
            row.expires_ms = 1
            session.add(row)

    await db.run(expire)
    with pytest.raises(EnrolRefused, match=r"403.*unknown, used or expired"):
        await enrol(county.url, code, tmp_path / "late", insecure_http=True)

    statuses = []
    for i in range(6):
        async with county.http.post(
            county.url + "/api/enrol", json={"code": f"WRONG-{i:05d}"}
        ) as resp:
            statuses.append(resp.status)
            body = await resp.json()
    assert statuses[0] == 403 and statuses[-1] == 429, statuses
    assert body["error"]["code"] == "enrol_backoff" and body["error"]["field"] == "code"


async def test_provision_prints_codes_that_enrol(county: Enrolling, tmp_path: Path) -> None:
    device_id = county.prepared.county.villages[1].device_ids()[0]
    env = write_env_file(county.prepared.settings, tmp_path / "dalaba.env")
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "dalaba_ops.cli", "provision", "--config", str(env),
         "--enrol-codes", device_id],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed, code, until = done.stdout.strip().split("\t")
    assert listed == device_id and until.startswith("valid until ")
    device_file = await enrol(county.url, code, tmp_path / "board", insecure_http=True)
    assert DeviceConfig.load(device_file).device_id == device_id


def test_the_agent_refuses_plain_http_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dalaba_ops.cli", "agent-enrol", "--controller",
         "http://127.0.0.1:9/", "--code", "ABCDE-FGHJK", "--state-dir", str(tmp_path / "b")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert done.stderr.strip().count("\n") == 0 and "https://" in done.stderr
    assert not (tmp_path / "b").exists()
