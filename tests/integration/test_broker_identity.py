"""Broker identities are bound: a client is the client its account owns, whatever id it
sends (Mosquitto's use_username_as_clientid, in the config dalaba writes).

A hostile terminal holds its own password (read off its flash). With it, it must not take
over the controller's persistent session (wiping the reports queued in it) nor another
terminal's (keeping that terminal off the air). Everything here is real: a private
Mosquitto with dalaba's config, password file and ACL, the controller's Dispatcher, a
terminal connection set up as the edge agent sets up its own, and a raw paho client for
the attacker, which may send any client id, clean start and session expiry it likes.

Whether a connection was taken over is read from dalaba.mqtt's log line
"<client id>: disconnected: ..." (every disconnect writes one); each test shows that this
line does appear when a takeover really happens (the account's own second login), so a
silent log could not make a test pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.dispatch import Dispatcher
from dalaba import protocol as p
from dalaba.mqtt import BrokerAddress, MqttConnection, WillMessage
from dalaba.signing import Ed25519Signer, Ed25519Verifier, VerifierSet
from dalaba_ops.broker import (
    CONTROLLER_USER,
    DeviceAccount,
    MosquittoProcess,
    free_port,
    write_acl,
    write_broker_config,
    write_password_file,
)

pytestmark = pytest.mark.broker

CONTROLLER_PASSWORD = "controller-secret"
ATTACKER = DeviceAccount("d-001", "v-001", "t-01", password="pw-attacker")
VICTIM = DeviceAccount("d-002", "v-002", "t-01", password="pw-victim")
DEADLINE_S = 10.0


@dataclass
class Broker:
    process: MosquittoProcess

    def address(self, username: str, password: str) -> BrokerAddress:
        return BrokerAddress("127.0.0.1", self.process.port).with_credentials(username, password)

    @property
    def controller(self) -> BrokerAddress:
        return self.address(CONTROLLER_USER, CONTROLLER_PASSWORD)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    port = free_port()
    files = write_broker_config(tmp_path / "broker", port)
    write_password_file(files.password_file, CONTROLLER_PASSWORD, [ATTACKER, VICTIM])
    write_acl(files.acl_file, [ATTACKER, VICTIM])
    process = MosquittoProcess(files, port)
    process.start()
    try:
        yield Broker(process)
    finally:
        process.stop()


@pytest.fixture
def disconnects(caplog: pytest.LogCaptureFixture) -> Callable[[str], int]:
    """How many times the named client's connection has been lost so far."""
    caplog.set_level(logging.DEBUG, logger="dalaba.mqtt")

    def count(client_id: str) -> int:
        prefix = f"{client_id}: disconnected"
        return sum(
            1
            for r in caplog.records
            if r.name == "dalaba.mqtt" and r.getMessage().startswith(prefix)
        )

    return count


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- the parties


class Controller:
    """The controller's real MQTT side, recording the reports handed to ingest."""

    def __init__(self, broker: Broker, signer: Ed25519Signer) -> None:
        self.reports: list[tuple[str, str, bytes]] = []
        self.dispatcher = Dispatcher(broker.controller, signer, self._on_report)

    @classmethod
    async def start(cls, broker: Broker, signer: Ed25519Signer) -> Controller:
        controller = cls(broker, signer)
        await controller.dispatcher.start()
        return controller

    def _on_report(
        self,
        device_id: str,
        kind: str,
        payload: bytes,
        ack: Callable[[], None] | None = None,
    ) -> None:
        # Stored at once, so acknowledged at once (when the Dispatcher hands an ack over).
        self.reports.append((device_id, kind, payload))
        if ack is not None:
            ack()

    def acks_from(self, device_id: str) -> list[p.DeliveryReport]:
        return [
            p.DeliveryReport.model_validate_json(payload)
            for d, kind, payload in self.reports
            if d == device_id and kind == "ack"
        ]

    async def stop(self) -> None:
        await self.dispatcher.stop()


class Terminal:
    """A terminal's connection, set up as edge_agent.agent.EdgeAgent sets up its own:
    client id = device id, its command subscriptions, a 7-day session, its last will."""

    def __init__(self, broker: Broker, account: DeviceAccount, verifier: VerifierSet) -> None:
        self.account = account
        self.verifier = verifier
        self.commands: list[p.Command] = []
        self.connects = 0
        self._seq = 0
        offline = p.DeviceStatus(device_id=account.device_id, online=False, at=0)
        self.mqtt = MqttConnection(
            client_id=account.device_id,
            broker=broker.address(account.device_id, account.password),
            on_message=self._on_message,
            subscriptions=[
                (t, p.COMMAND_QOS)
                for t in p.Topics.subscriptions_for(
                    account.device_id, account.village_id, account.township_id
                )
            ],
            session_expiry_s=p.DEVICE_SESSION_EXPIRY_S,
            will=WillMessage(p.Topics.device_status(account.device_id), offline.to_bytes()),
            on_connected=self._on_connected,
        )

    def _on_connected(self) -> None:
        self.connects += 1

    def _on_message(self, _topic: str, payload: bytes) -> None:
        self.commands.append(p.open_envelope(payload, self.verifier, p.now_ms()))

    async def wait_for_command(self, command_id: str) -> None:
        await wait_until(
            lambda: command_id in {c.id for c in self.commands},
            f"{self.account.device_id} to receive command {command_id}",
        )

    async def report_done(self) -> p.DeliveryReport:
        """One delivery report, QoS 1, waiting for the broker's PUBACK."""
        self._seq += 1
        report = p.DeliveryReport(
            device_id=self.account.device_id,
            broadcast_id=f"b-{self._seq}",
            command_id=f"c-{self._seq}",
            state=p.DeliveryState.DONE,
            at=p.now_ms(),
            seq=self._seq,
        )
        await self.mqtt.publish_confirmed(
            p.Topics.device_ack(self.account.device_id), report.to_bytes()
        )
        return report


class RawClient:
    """A paho client with no manners, driven from a worker thread so the event loop
    keeps serving the controller and the terminals meanwhile."""

    def __init__(self, port: int, username: str, password: str, client_id: str) -> None:
        self.port = port
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self.client.username_pw_set(username, password)
        self.reason: Any = None
        self.session_present: bool | None = None
        self.connack_properties: Any = None
        self.suback: list[Any] | None = None
        self.messages: list[tuple[str, bytes]] = []
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.reason = reason
        self.session_present = bool(flags.session_present)
        self.connack_properties = properties

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        self.suback = reasons

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        self.messages.append((message.topic, bytes(message.payload)))

    @property
    def assigned_client_id(self) -> str | None:
        value = getattr(self.connack_properties, "AssignedClientIdentifier", None)
        return str(value) if value is not None else None

    def _run_until(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not done() and time.monotonic() < deadline:
            self.client.loop(timeout=0.05)
        assert done(), "no answer from the broker"

    def _connect(self, clean_start: bool, session_expiry_s: int) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry_s
        self.client.connect(
            "127.0.0.1", self.port, keepalive=10, clean_start=clean_start, properties=props
        )
        self._run_until(lambda: self.reason is not None)

    def _subscribe(self, topic: str) -> None:
        # The broker sends a resumed session's queued messages right after its CONNACK,
        # before it reads this SUBSCRIBE: once the SUBACK is in, they would be in too.
        self.suback = None
        self.client.subscribe(topic, qos=1)
        self._run_until(lambda: self.suback is not None)

    def _close(self) -> None:
        self.client.disconnect()
        self._run_until(lambda: self.client.socket() is None)
        # loop() opened a loopback socket pair to wake itself; paho closes it only when
        # the client is finalised, which in a reference cycle may come after the sockets'
        # own finalisers (an unclosed-socket ResourceWarning at the end of the session).
        self.client._reset_sockets()

    async def connect(self, *, clean_start: bool = True, session_expiry_s: int = 0) -> None:
        await asyncio.to_thread(self._connect, clean_start, session_expiry_s)
        assert not self.reason.is_failure, self.reason

    async def subscribe(self, topic: str) -> None:
        await asyncio.to_thread(self._subscribe, topic)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)


@pytest.fixture
def signer() -> Ed25519Signer:
    return Ed25519Signer.generate()


@pytest.fixture
async def victim(broker: Broker, signer: Ed25519Signer) -> AsyncIterator[Terminal]:
    terminal = Terminal(broker, VICTIM, VerifierSet(Ed25519Verifier.from_pem(signer.public_pem())))
    await terminal.mqtt.start()
    try:
        yield terminal
    finally:
        await terminal.mqtt.stop()


# --------------------------------------------------------------------------- the tests


async def test_the_controllers_client_id_is_its_broker_account(
    broker: Broker, signer: Ed25519Signer
) -> None:
    controller = await Controller.start(broker, signer)
    try:
        assert controller.dispatcher.mqtt is not None
        assert controller.dispatcher.mqtt.client_id == CONTROLLER_USER
    finally:
        await controller.stop()
    with pytest.raises(ValueError, match="broker account"):
        Dispatcher(BrokerAddress("127.0.0.1", broker.process.port), signer, lambda *_: None)


async def test_a_terminal_cannot_take_over_the_connected_controller(
    broker: Broker,
    signer: Ed25519Signer,
    victim: Terminal,
    disconnects: Callable[[str], int],
) -> None:
    """The attack of issue 8: a terminal's own password with the client id
    dalaba-controller, again and again, clean start each time. The controller stays
    connected and gets every report; the attacker is only ever itself (d-001)."""
    controller = await Controller.start(broker, signer)
    try:
        sent: list[p.DeliveryReport] = []
        for _attempt in range(5):
            attacker = RawClient(
                broker.process.port, ATTACKER.device_id, ATTACKER.password, CONTROLLER_USER
            )
            await attacker.connect(clean_start=True, session_expiry_s=0)
            await attacker.subscribe(p.Topics.command_device(ATTACKER.device_id))
            sent.append(await victim.report_done())  # published while the attacker is on
            await wait_until(
                lambda: len(controller.acks_from(VICTIM.device_id)) == len(sent),
                "the controller to receive the report",
            )
            await attacker.close()
            assert attacker.messages == []

        assert controller.acks_from(VICTIM.device_id) == sent  # each once, in order
        assert controller.dispatcher.connected
        assert disconnects(CONTROLLER_USER) == 0

        # The control: the controller's own account, whatever id it sends, *is* the
        # controller, so its second login takes the session over and the line appears.
        second = RawClient(
            broker.process.port, CONTROLLER_USER, CONTROLLER_PASSWORD, "not-the-controller"
        )
        await second.connect(clean_start=False, session_expiry_s=0)
        assert second.session_present is True  # it resumed the controller's session
        await wait_until(lambda: disconnects(CONTROLLER_USER) == 1, "the takeover to show")
        await second.close()
    finally:
        await controller.stop()


async def test_a_terminal_cannot_wipe_the_offline_controllers_queued_reports(
    broker: Broker, signer: Ed25519Signer, victim: Terminal
) -> None:
    """While the controller is away, the broker keeps reports in its persistent session.
    The attacker connects as dalaba-controller with clean start (which, were it the
    controller, would throw that session away) and sees none of them; every report,
    including the one published while it was connected, reaches the controller when
    it returns."""
    first = await Controller.start(broker, signer)
    await first.stop()  # a clean DISCONNECT: the session and its subscriptions stay

    queued = [await victim.report_done()]
    for clean_start, expiry_s in [(True, 0), (False, 3600)]:
        attacker = RawClient(
            broker.process.port, ATTACKER.device_id, ATTACKER.password, CONTROLLER_USER
        )
        await attacker.connect(clean_start=clean_start, session_expiry_s=expiry_s)
        assert attacker.session_present is False  # never the controller's session
        assert attacker.assigned_client_id is None  # and it is not told it is d-001
        await attacker.subscribe(p.Topics.command_device(ATTACKER.device_id))
        queued.append(await victim.report_done())  # while the attacker is connected
        await attacker.close()
        assert attacker.messages == []

    controller = await Controller.start(broker, signer)
    try:
        await wait_until(
            lambda: len(controller.acks_from(VICTIM.device_id)) >= len(queued),
            "the queued reports",
        )
        assert controller.acks_from(VICTIM.device_id) == queued
    finally:
        await controller.stop()


async def test_a_terminal_cannot_take_over_another_terminal(
    broker: Broker,
    signer: Ed25519Signer,
    victim: Terminal,
    disconnects: Callable[[str], int],
) -> None:
    """The attacker connects with the victim's device id: it gets its own session
    (d-001), the victim stays connected and still receives the command sent to it."""
    controller = await Controller.start(broker, signer)
    try:
        for clean_start in (True, False):
            attacker = RawClient(
                broker.process.port, ATTACKER.device_id, ATTACKER.password, VICTIM.device_id
            )
            await attacker.connect(clean_start=clean_start, session_expiry_s=3600)
            await attacker.subscribe(p.Topics.command_device(VICTIM.device_id))

            command = p.Command.new(
                p.ConfigBody(normal_volume=40),
                p.Target(devices=(VICTIM.device_id,)),
                expires_at=p.now_ms() + 60_000,
            )
            topic = p.Topics.command_device(VICTIM.device_id)
            assert await controller.dispatcher.send(command, (topic,))
            await victim.wait_for_command(command.id)
            await attacker.close()
            # The ACL keeps the victim's command topic from d-001, and it holds no
            # session of the victim's that would carry the command.
            assert attacker.messages == []

        assert victim.mqtt.connected
        assert victim.connects == 1
        assert disconnects(VICTIM.device_id) == 0

        # The control: the victim's own account under another id is the victim, and
        # takes its connection over.
        own = RawClient(broker.process.port, VICTIM.device_id, VICTIM.password, "another-id")
        await own.connect(clean_start=False, session_expiry_s=3600)
        assert own.session_present is True
        await wait_until(lambda: disconnects(VICTIM.device_id) == 1, "the takeover to show")
        await own.close()
    finally:
        await controller.stop()


async def test_an_empty_client_id_is_assigned_the_username(broker: Broker) -> None:
    """MQTT 5 lets a client send an empty id and learn the one the broker assigns
    (Assigned Client Identifier in the CONNACK). With the ids bound, that is the
    username; a client that sends an id of its own is not told that it was replaced."""
    empty = RawClient(broker.process.port, ATTACKER.device_id, ATTACKER.password, "")
    await empty.connect()
    await empty.close()
    assert empty.assigned_client_id == ATTACKER.device_id

    named = RawClient(broker.process.port, ATTACKER.device_id, ATTACKER.password, "whatever")
    await named.connect()
    await named.close()
    assert named.assigned_client_id is None
