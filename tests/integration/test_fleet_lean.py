"""The lean MQTT client (dalaba.mqtt_lean) against a real private Mosquitto with the
product's configuration (password file, ACL, client id = username), and the lean
fleet's batched records. The controller's side of each exchange is paho
(`dalaba.mqtt.MqttConnection`), as in the product."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from dalaba import protocol as p
from dalaba.mqtt import BrokerAddress, MqttConnection, WillMessage
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
from firmware_sim.fleet import Fleet
from firmware_sim.records import BatchedRecords, read_plays_started, read_verified

DEVICES = [DeviceAccount(f"d-t01-v01-{i}", "v01", "t01", secrets.token_hex(8)) for i in (1, 2)]


@dataclass
class Broker:
    process: MosquittoProcess
    port: int
    controller_password: str

    def address(self, user: str, password: str) -> BrokerAddress:
        return BrokerAddress("127.0.0.1", self.port, user, password)

    def controller(self, received: list[tuple[str, bytes]] | None = None) -> MqttConnection:
        got = received if received is not None else []
        return MqttConnection(
            client_id=CONTROLLER_USER,
            broker=self.address(CONTROLLER_USER, self.controller_password),
            on_message=lambda t, b: got.append((t, b)),
            subscriptions=[(p.Topics.ALL_DEVICE_ACKS, 1), (p.Topics.ALL_DEVICE_STATUS, 1)],
            session_expiry_s=0,
        )


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    port = free_port()
    files = write_broker_config(tmp_path / "broker", port)
    password = secrets.token_hex(8)
    write_password_file(files.password_file, password, DEVICES)
    write_acl(files.acl_file, DEVICES)
    process = MosquittoProcess(files, port)
    await process.start_async()
    try:
        yield Broker(process, port, password)
    finally:
        process.stop()


def terminal(
    broker: Broker,
    on_message: Callable[[str, bytes], None],
    *,
    index: int = 0,
    up: Callable[[], bool] = lambda: True,
    on_published: Callable[[int], None] | None = None,
) -> LeanMqttConnection:
    device = DEVICES[index]
    status = p.Topics.device_status(device.device_id)
    return LeanMqttConnection(
        client_id=device.device_id,
        broker=broker.address(device.device_id, device.password),
        on_message=on_message,
        subscriptions=[
            (t, p.COMMAND_QOS) for t in p.Topics.subscriptions_for(device.device_id, "v01", "t01")
        ],
        session_expiry_s=p.DEVICE_SESSION_EXPIRY_S,
        will=WillMessage(status, b'{"online": false}'),
        bind_address="127.0.0.3",
        may_connect=up,
        on_published=on_published,
    )


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout_s)


async def test_commands_in_reports_out_and_the_last_will(broker: Broker) -> None:
    at_controller: list[tuple[str, bytes]] = []
    controller = broker.controller(at_controller)
    await controller.start()
    got: list[tuple[str, bytes]] = []
    published: list[int] = []
    lean = terminal(broker, lambda t, b: got.append((t, b)), on_published=published.append)
    try:
        await lean.start()
        assert lean.connected and lean.tls_version is None
        await asyncio.sleep(0.2)  # the SUBSCRIBE is answered
        controller.publish(p.Topics.COMMAND_ALL, b"command-1", qos=1, expiry_s=60)
        controller.publish(p.Topics.command_village("v01"), b"command-2", qos=1)
        await eventually(lambda: len(got) == 2)
        assert got == [
            (p.Topics.COMMAND_ALL, b"command-1"),
            (p.Topics.command_village("v01"), b"command-2"),
        ]

        ack_topic = p.Topics.device_ack(DEVICES[0].device_id)
        mids = [lean.publish(ack_topic, f"report-{i}".encode(), qos=1) for i in range(150)]
        # More than the broker's window in flight at once is queued, not refused.
        await lean.publish_confirmed(ack_topic, b"report-last", timeout_s=10)
        await eventually(lambda: set(mids) <= set(published))
        await eventually(lambda: sum(t == ack_topic for t, _ in at_controller) == 151)
        assert [b for t, b in at_controller if t == ack_topic][:3] == [
            b"report-0",
            b"report-1",
            b"report-2",
        ]

        # A report outside its own topics is refused by the ACL; the connection lives on.
        lean.publish(p.Topics.device_ack(DEVICES[1].device_id), b"forged", qos=1)
        # Cut without DISCONNECT: the broker publishes the last will.
        lean.drop()
        status = p.Topics.device_status(DEVICES[0].device_id)
        await eventually(lambda: (status, b'{"online": false}') in at_controller)
        await lean.wait_connected(10)  # and it reconnects by itself
        assert not any(b == b"forged" for _, b in at_controller)
    finally:
        await lean.stop()
        await controller.stop()


async def test_a_persistent_session_gets_what_was_queued_while_offline(broker: Broker) -> None:
    controller = broker.controller()
    await controller.start()
    link = {"up": True}
    got: list[bytes] = []
    published: list[int] = []
    lean = terminal(
        broker, lambda _t, b: got.append(b), up=lambda: link["up"], on_published=published.append
    )
    try:
        await lean.start()
        await asyncio.sleep(0.2)
        link["up"] = False
        lean.drop()
        assert not lean.connected
        # Queued by the broker for the offline session (QoS 1, clean start false).
        await controller.publish_confirmed(p.Topics.COMMAND_ALL, b"while-offline")
        # And one of the terminal's own, queued by the client until it is back.
        mid = lean.publish(p.Topics.device_ack(DEVICES[0].device_id), b"owed-report", qos=1)
        await asyncio.sleep(1.0)
        assert got == [] and not lean.connected
        link["up"] = True
        await lean.wait_connected(10)
        await eventually(lambda: got == [b"while-offline"])
        await eventually(lambda: mid in published)
    finally:
        await lean.stop()
        await controller.stop()


async def test_a_broker_restart_is_survived_and_a_stop_sends_no_will(broker: Broker) -> None:
    controller = broker.controller()
    got: list[bytes] = []
    lean = terminal(broker, lambda _t, b: got.append(b))
    await lean.start()
    try:
        await asyncio.sleep(0.3)  # subscribed, and persisted by the broker's autosave
        broker.process.stop()  # a clean stop writes the persistence file
        await eventually(lambda: not lean.connected)
        await broker.process.start_async()
        await lean.wait_connected(15)
        await controller.start()
        await controller.publish_confirmed(p.Topics.COMMAND_ALL, b"after-restart")
        await eventually(lambda: got == [b"after-restart"])
    finally:
        await lean.stop()
        await controller.stop()


async def test_handler_failures_and_garbage_are_dropped_one_by_one(broker: Broker) -> None:
    """Each bad message is dropped on its own (a handler that raises on it, as on garbage
    a terminal cannot parse) and acknowledged; the connection stays, and the good message
    after them arrives. After a reconnect none of the bad ones comes back."""
    controller = broker.controller()
    await controller.start()
    good: list[bytes] = []
    failures = 0

    def handler(_topic: str, payload: bytes) -> None:
        nonlocal failures
        if payload.startswith(b"bad"):
            failures += 1
            raise ValueError("unparseable")
        good.append(payload)

    lean = terminal(broker, handler)
    try:
        await lean.start()
        await asyncio.sleep(0.2)
        for payload in (b"bad-1", b"bad\xff\xfe\x00", b"bad-2", b"good", b"bad-3", b"good-2"):
            await controller.publish_confirmed(p.Topics.COMMAND_ALL, payload)
        await eventually(lambda: good == [b"good", b"good-2"])
        assert failures == 4
        lean.drop()
        await lean.wait_connected(10)
        await asyncio.sleep(0.5)
        assert (failures, good) == (4, [b"good", b"good-2"])  # nothing was redelivered
    finally:
        await lean.stop()
        await controller.stop()


async def test_batched_records_are_read_back_with_the_per_device_layout(tmp_path: Path) -> None:
    per_device = tmp_path / "sim" / "d-a"
    per_device.mkdir(parents=True)
    (per_device / "plays-started.jsonl").write_text('{"broadcast_id": "b1", "start_ms": 1}\n')
    records = BatchedRecords(tmp_path, "p1")
    records.start()
    sink = records.sink("d-b")
    sink("plays-started", {"broadcast_id": "b1", "start_ms": 2})
    sink("verified", {"command_id": "c1", "verified_at_ms": 3})
    await asyncio.sleep(0.3)  # flushed by the writer's own interval, not by stop()
    assert read_plays_started(tmp_path) == [
        {"broadcast_id": "b1", "start_ms": 1, "device_id": "d-a"},
        {"device_id": "d-b", "broadcast_id": "b1", "start_ms": 2},
    ]
    sink("plays-started", {"broadcast_id": "b2", "start_ms": 4})
    await records.stop()
    assert [e["broadcast_id"] for e in read_plays_started(tmp_path, "d-b")] == ["b1", "b2"]
    assert read_verified(tmp_path) == [
        {"device_id": "d-b", "command_id": "c1", "verified_at_ms": 3}
    ]


async def test_a_lean_fleet_verifies_records_and_drops_garbage(
    broker: Broker, tmp_path: Path
) -> None:
    """Real agents on the lean client with batched records: garbage on the command topic
    is counted and dropped message by message, a sealed command is verified by every
    terminal and recorded in the process's `verified` file."""
    signer = Ed25519Signer.generate()
    configs = [
        DeviceConfig(
            device_id=d.device_id,
            village_id=d.village_id,
            township_id=d.township_id,
            broker_url=f"mqtt://127.0.0.1:{broker.port}",
            mqtt_username=d.device_id,
            mqtt_password=SecretStr(d.password),
            media_base_url="http://127.0.0.1:9/media/",
            controller_public_keys=[signer.public_pem().decode()],
            state_dir=tmp_path / "sim" / d.device_id / "state",
        )
        for d in DEVICES
    ]
    fleet = Fleet(configs, record_wav=False, records="batched", mqtt="lean")
    controller = broker.controller()
    await controller.start()
    try:
        await fleet.start()
        assert all(isinstance(a.mqtt, LeanMqttConnection) for a in fleet.agents.values())
        await asyncio.sleep(0.3)
        for garbage in (b"", b"not json", b'{"v": 1}', b"\xff" * 300):
            await controller.publish_confirmed(p.Topics.COMMAND_ALL, garbage)
        command = p.Command.new(
            p.CancelBody(broadcast_id="b-lean"), p.Target(all=True), p.now_ms() + 60_000
        )
        await controller.publish_confirmed(p.Topics.COMMAND_ALL, p.seal(command, signer))
        await eventually(lambda: len(read_verified(tmp_path)) == len(DEVICES))
        assert {e["device_id"] for e in read_verified(tmp_path)} == {d.device_id for d in DEVICES}
        assert {e["command_id"] for e in read_verified(tmp_path)} == {command.id}
        for agent in fleet.agents.values():
            assert agent.counters["dropped"] == 4
    finally:
        await fleet.stop()
        await controller.stop()
    assert (tmp_path / "sim" / "_records" / "p0-verified.jsonl").exists()
    assert not (tmp_path / "sim" / DEVICES[0].device_id / "verified.jsonl").exists()
