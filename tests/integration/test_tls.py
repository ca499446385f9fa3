"""MQTT over TLS: the spine on a TLS-only broker, and who that broker lets in.

Everything is real: a private Mosquitto with a TLS-only listener and the county's own CA
(dalaba_ops.pki), the controller and the simulated fleet configured as setup_county
configures them, and raw clients (paho, plain sockets, Python's ssl) for those who try
to get in without the right CA, without TLS, or with another terminal's certificate.

Whether a terminal's connection was taken over is read from dalaba.mqtt's log line
"<client id>: disconnected: ..." (test_broker_identity.py does the same, and says why);
the test shows that the line appears when a takeover really happens.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from controller.api import keys
from dalaba import protocol as p
from dalaba.mqtt import BrokerAddress, MqttConnection, TlsSettings
from dalaba_ops.broker import CONTROLLER_USER, controller_username
from dalaba_ops.pki import CertificateAuthority

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TEXT = "紧急通知：河水上涨，请沿河村民立即转移。"
DEADLINE_S = 10.0


def mqtt_connect_packet(client_id: str, username: str, password: str) -> bytes:
    """An MQTT 3.1.1 CONNECT with a username and password, as any plain client sends."""

    def utf8(text: str) -> bytes:
        data = text.encode()
        return struct.pack("!H", len(data)) + data

    variable = utf8("MQTT") + bytes([4, 0b1100_0010]) + struct.pack("!H", 30)
    body = variable + utf8(client_id) + utf8(username) + utf8(password)
    assert len(body) < 128  # one byte of remaining length
    return bytes([0x10, len(body)]) + body


class RawTlsClient:
    """A paho client over TLS with whatever certificate, id and username it likes,
    driven from a worker thread so the event loop keeps serving the county."""

    def __init__(
        self,
        port: int,
        context: ssl.SSLContext,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.port = port
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self.client.tls_set_context(context)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.reason: Any = None
        self.properties: Any = None
        self.client.on_connect = self._on_connect

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, properties: Any) -> None:
        self.reason, self.properties = reason, properties

    def _connect(self) -> None:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        deadline = time.monotonic() + DEADLINE_S
        # Until the broker answers: a CONNACK, or it hangs up (a refused certificate).
        while self.reason is None and self.client.socket() is not None:
            assert time.monotonic() < deadline, "no answer from the broker"
            self.client.loop(timeout=0.05)

    async def connect(self) -> bool:
        """True when the broker accepted the login."""
        await asyncio.to_thread(self._connect)
        return self.reason is not None and not self.reason.is_failure

    @property
    def assigned_client_id(self) -> str | None:
        value = getattr(self.properties, "AssignedClientIdentifier", None)
        return str(value) if value is not None else None

    def _close(self) -> None:
        if self.client.socket() is not None:
            self.client.disconnect()
            deadline = time.monotonic() + DEADLINE_S
            while self.client.socket() is not None and time.monotonic() < deadline:
                self.client.loop(timeout=0.05)
        self.client._reset_sockets()  # see test_broker_identity.RawClient._close

    async def close(self) -> None:
        await asyncio.to_thread(self._close)


def context_with(ca_file: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """The context the product's own clients build (dalaba.mqtt.TlsSettings)."""
    return TlsSettings(ca_file, *(cert or (None, None))).context()


@pytest.fixture
def disconnects(caplog: pytest.LogCaptureFixture) -> Callable[[str], int]:
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


async def broadcast_done_everywhere(county: Any) -> None:
    bid = await county.broadcast(
        text=TEXT, priority="emergency", level=1, repeat=1, targets={"all": True}
    )
    view = await county.wait_states(bid, {"done"}, timeout_s=60)
    terminals = set(county.fleet.agents)
    assert view["summary"]["done"] == len(terminals)
    assert {d["device_id"] for d in view["deliveries"]} == terminals
    for device_id, entries in county.all_plays(bid).items():
        assert len(entries) == 1 and entries[0]["completed"], device_id


# --------------------------------------------------------------------------- passwords


async def test_the_spine_runs_over_tls_and_the_tls_port_lets_no_one_else_in(
    make_county: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    county = await make_county(villages=12, tls=True)
    prepared = county.prepared
    tls = prepared.tls
    assert tls is not None and not tls.require_certificate
    assert prepared.settings.broker_url == f"mqtts://127.0.0.1:{prepared.broker_port}"

    # The controller and every terminal are on TLS, each with its password.
    dispatcher = county.controller.app[keys.DISPATCHER]
    assert dispatcher.mqtt.tls_version in ("TLSv1.2", "TLSv1.3")
    for device_id, agent in county.fleet.agents.items():
        assert agent.mqtt.tls_version in ("TLSv1.2", "TLSv1.3"), device_id
        assert county.fleet.configs[device_id].mqtt_password.get_secret_value()
        assert county.fleet.configs[device_id].ca_file == tls.ca_file

    await broadcast_done_everywhere(county)

    port = prepared.broker_port
    replica = (controller_username(2), prepared.replica_password)

    # A client that trusts another CA refuses the broker (an impostor, to it) before
    # sending anything: the product's client says why and never connects.
    other_ca = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    with (
        pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"),
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
    ):
        context_with(other_ca.cert_file).wrap_socket(sock, server_hostname="127.0.0.1")
    caplog.set_level(logging.WARNING, logger="dalaba.mqtt")
    wrong_ca = MqttConnection(
        client_id=replica[0],
        broker=BrokerAddress.from_url(
            prepared.broker_url, ca_file=other_ca.cert_file
        ).with_credentials(*replica),
        on_message=lambda _t, _p: None,
        subscriptions=[],
        session_expiry_s=0,
    )
    await wrong_ca.start(timeout_s=None)
    try:
        await wait_until(
            lambda: any("certificate verify failed" in r.getMessage() for r in caplog.records),
            "the refused certificate to be logged",
        )
        assert not wrong_ca.connected
    finally:
        await wrong_ca.stop()

    # The right CA, but a name the certificate does not carry: refused as well.
    with (
        pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"),
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
    ):
        context_with(tls.ca_file).wrap_socket(sock, server_hostname="broker.elsewhere.example")

    # Plain MQTT to the TLS port, with a valid account: no CONNACK, the broker hangs up
    # (a close or a reset, after at most a TLS alert).
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(mqtt_connect_packet("plain-client", *replica))
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    assert not answer.startswith(b"\x20")  # 0x20 would be a CONNACK

    # The same account over TLS with the county's CA is let in: the refusals above were
    # about the transport, not the account.
    good = RawTlsClient(port, context_with(tls.ca_file), client_id=replica[0], username=replica[0])
    good.client.username_pw_set(*replica)
    try:
        assert await good.connect()
    finally:
        await good.close()

    # The spine still works after all of that.
    await broadcast_done_everywhere(county)


# --------------------------------------------------------------------------- certificates


async def test_certificate_identity_a_terminal_is_the_device_its_certificate_names(
    make_county: Any, tmp_path: Path, disconnects: Callable[[str], int]
) -> None:
    county = await make_county(villages=3, tls=True, client_certs=True)
    prepared = county.prepared
    tls = prepared.tls
    assert tls is not None and tls.require_certificate
    port = prepared.broker_port

    # No terminal holds a password: each logged in with its own certificate, and so did
    # the controller (its certificate names dalaba-controller).
    assert prepared.settings.broker_cert_file is not None
    assert county.controller.app[keys.DISPATCHER].mqtt.tls_version is not None
    for device_id, config in county.fleet.configs.items():
        assert config.mqtt_password.get_secret_value() == "", device_id
        assert config.cert_file == prepared.client_cert(device_id)[0]
        assert county.fleet.agents[device_id].mqtt.tls_version is not None
    await broadcast_done_everywhere(county)

    attacker, victim, *_ = sorted(county.fleet.agents)
    attacker_cert = prepared.client_cert(attacker)

    # Its certificate alone, no username, no password, no client id: the broker names
    # the client after the certificate (MQTT 5 Assigned Client Identifier).
    anonymous = RawTlsClient(port, context_with(tls.ca_file, attacker_cert), client_id="")
    try:
        assert await anonymous.connect()
        assert anonymous.assigned_client_id == attacker
    finally:
        await anonymous.close()

    # The attacker's certificate (read off its flash) with the victim's id and name:
    # it is let in as itself, the victim stays connected and still gets its commands.
    impostor = RawTlsClient(
        port,
        context_with(tls.ca_file, attacker_cert),
        client_id=victim,
        username=victim,
        password="anything",
    )
    try:
        assert await impostor.connect()
        command = p.Command.new(
            p.ConfigBody(normal_volume=41),
            p.Target(devices=(victim,)),
            expires_at=p.now_ms() + 60_000,
        )
        dispatcher = county.controller.app[keys.DISPATCHER]
        assert await dispatcher.send(command, (p.Topics.command_device(victim),))
        await county.wait_for(
            _volume_is(county, victim, 41), DEADLINE_S, "the victim to apply its command"
        )
    finally:
        await impostor.close()
    assert county.fleet.agents[victim].mqtt.connected
    assert disconnects(victim) == 0

    # Refused at the door: no certificate (a password the broker knows does not help),
    # and a certificate naming the victim from a CA the broker does not trust.
    stranger_ca = CertificateAuthority.load_or_create(tmp_path / "stranger-ca")
    forged = (tmp_path / "forged.pem", tmp_path / "forged.key")
    stranger_ca.issue_client(victim, *forged)
    for name, context, username, password in [
        ("no certificate", context_with(tls.ca_file), CONTROLLER_USER, "x"),
        (
            "the replica's password, no certificate",
            context_with(tls.ca_file),
            controller_username(2),
            prepared.replica_password,
        ),
        ("a stranger CA's certificate", context_with(tls.ca_file, forged), victim, None),
    ]:
        refused = RawTlsClient(
            port, context, client_id=username, username=username, password=password
        )
        try:
            assert not await refused.connect(), name
        finally:
            await refused.close()
    assert county.fleet.agents[victim].mqtt.connected
    assert disconnects(victim) == 0

    # The control: the victim's own certificate, under another client id, *is* the
    # victim and takes its connection over, so the line the checks above read appears.
    own = RawTlsClient(
        port, context_with(tls.ca_file, prepared.client_cert(victim)), client_id="another-id"
    )
    try:
        assert await own.connect()
        await wait_until(lambda: disconnects(victim) >= 1, "the takeover to show")
    finally:
        await own.close()


def _volume_is(county: Any, device_id: str, volume: int) -> Callable[[], Any]:
    async def check() -> bool:
        return bool(county.fleet.agents[device_id].normal_volume == volume)

    return check
