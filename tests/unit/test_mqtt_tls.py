"""Broker addresses with and without TLS, as the controller's settings and a terminal's
device file give them (the handshakes themselves: tests/integration/test_tls.py)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from controller.settings import Settings
from dalaba.mqtt import BrokerAddress, MqttConnection, TlsSettings
from dalaba_ops.pki import CertificateAuthority
from edge_agent.config import DeviceConfig


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://broker.example", "broker.example", 1883, False),
        ("tcp://10.0.0.1:1884", "10.0.0.1", 1884, False),
        ("mqtts://broker.example", "broker.example", 8883, True),
        ("mqtts://127.0.0.1:18883", "127.0.0.1", 18883, True),
        ("ssl://broker.example:8884", "broker.example", 8884, True),
    ],
)
def test_broker_url_schemes_and_default_ports(url: str, host: str, port: int, tls: bool) -> None:
    address = BrokerAddress.from_url(url)
    assert (address.host, address.port, address.tls is not None) == (host, port, tls)


@pytest.mark.parametrize(
    ("url", "kw", "message"),
    [
        ("http://broker.example", {}, "unsupported scheme"),
        ("mqtt://broker.example", {"ca_file": Path("ca.pem")}, "use mqtts://"),
        ("mqtt://broker.example", {"cert_file": Path("c.pem")}, "use mqtts://"),
        ("mqtts://broker.example", {"cert_file": Path("c.pem")}, "cert_file and key_file"),
        ("mqtts://broker.example:99999", {}, "(?i)port out of range"),
    ],
)
def test_broker_urls_that_are_refused(url: str, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BrokerAddress.from_url(url, **kw)


def test_credentials_keep_the_tls_settings_and_never_show_the_password() -> None:
    address = BrokerAddress.from_url("mqtts://b.example", ca_file=Path("/etc/ca.pem"))
    with_login = address.with_credentials("d-001", "s3cret-pw")
    assert with_login.tls == address.tls
    assert with_login.password == "s3cret-pw"
    assert "s3cret-pw" not in repr(with_login)
    assert with_login.url == "mqtts://b.example:8883"
    # Certificate identity: no password is sent at all.
    assert address.with_credentials("d-001", "").password is None


def test_tls_context_verifies_the_broker_and_its_name(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    ca.issue_client("d-001", tmp_path / "d.pem", tmp_path / "d.key")
    context = TlsSettings(ca.cert_file, tmp_path / "d.pem", tmp_path / "d.key").context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    # Only the given CA is trusted, not the system's.
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "Dalaba private broker CA"),),)
    ]
    with pytest.raises(FileNotFoundError):
        TlsSettings(tmp_path / "missing.pem").context()


# --------------------------------------------------------------------------- settings


def device(**kw: Any) -> DeviceConfig:
    base: dict[str, Any] = {
        "device_id": "d-001",
        "village_id": "v-001",
        "township_id": "t-01",
        "broker_url": "mqtts://broker.county.example",
        "mqtt_username": "d-001",
        "mqtt_password": SecretStr("pw"),
        "media_base_url": "http://media.example/media/",
        "controller_public_keys": [],
        "state_dir": Path("/var/lib/dalaba-agent/state"),
    }
    return DeviceConfig(**(base | kw))


def test_device_file_gives_the_terminal_its_tls_broker(tmp_path: Path) -> None:
    config = device(ca_file=Path("/etc/dalaba/broker-ca.pem"))
    address = config.broker_address()
    assert (address.host, address.port) == ("broker.county.example", 8883)
    assert address.tls is not None and address.tls.ca_file == Path("/etc/dalaba/broker-ca.pem")
    assert (address.username, address.password) == ("d-001", "pw")
    config.save(tmp_path / "device.json")
    assert DeviceConfig.load(tmp_path / "device.json") == config


def test_device_file_with_a_certificate_needs_no_password() -> None:
    config = device(
        mqtt_password=SecretStr(""),
        cert_file=Path("/etc/dalaba/client.pem"),
        key_file=Path("/etc/dalaba/client.key"),
    )
    address = config.broker_address()
    assert address.password is None
    assert address.tls is not None and address.tls.cert_file == Path("/etc/dalaba/client.pem")
    with pytest.raises(ValueError, match="mqtt_password"):
        device(mqtt_password=SecretStr("")).broker_address()


def test_device_file_with_tls_files_and_a_plain_url_is_refused() -> None:
    with pytest.raises(ValidationError, match="use mqtts://"):
        device(broker_url="mqtt://broker.county.example", ca_file=Path("/etc/ca.pem"))
    with pytest.raises(ValidationError, match="cert_file and key_file"):
        device(cert_file=Path("/etc/dalaba/client.pem"))


def test_controller_settings_give_the_controller_its_tls_broker() -> None:
    settings = Settings(
        broker_url="mqtts://broker.county.example",
        broker_password=SecretStr("a-real-password"),
        broker_ca_file=Path("/etc/dalaba/broker-ca.pem"),
    )
    address = settings.broker_address()
    assert address.tls is not None and address.port == 8883
    assert address.username == "dalaba-controller"
    with pytest.raises(ValidationError, match=r"broker_ca_file.*use mqtts://"):
        Settings(
            broker_url="mqtt://broker.county.example",
            broker_password=SecretStr("a-real-password"),
            broker_ca_file=Path("/etc/dalaba/broker-ca.pem"),
        )


def test_controller_with_a_certificate_needs_no_password() -> None:
    settings = Settings(
        broker_url="mqtts://broker.county.example",
        broker_cert_file=Path("/etc/dalaba/controller.pem"),
        broker_key_file=Path("/etc/dalaba/controller.key"),
    )
    assert settings.broker_address().password is None
    with pytest.raises(ValidationError, match="broker_password"):
        Settings(broker_url="mqtts://broker.county.example")


# --------------------------------------------------------------------------- reading


async def test_packets_sharing_one_tls_record_are_all_read(tmp_path: Path) -> None:
    """Two MQTT packets in one TLS record: OpenSSL decrypts both at once and paho reads
    one, so the second waits inside the SSL object where the event loop cannot see it.
    A broker is free to send that (Mosquitto happens to write one record per packet),
    so this one does: CONNACK and a PUBLISH in one write. The PUBLISH must arrive with
    no further traffic (without the pending-data loop it waited for the next packet)."""
    ca = CertificateAuthority.load_or_create(tmp_path)
    ca.issue_server(tmp_path / "server.pem", tmp_path / "server.key")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    topic, payload = b"dalaba/v1/cmd/all", b"hello over one record"
    publish_body = struct.pack("!H", len(topic)) + topic + b"\x00" + payload  # QoS 0, no props
    connack = bytes([0x20, 3, 0, 0, 0])  # MQTT 5: no session, success, no properties
    publish = bytes([0x30, len(publish_body)]) + publish_body
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    done = threading.Event()

    def broker() -> None:
        # In a thread of its own: the client's TLS handshake blocks its event loop, as
        # it would block on any broker.
        with (
            listener,
            listener.accept()[0] as raw,
            server_context.wrap_socket(raw, server_side=True) as tls,
        ):
            tls.settimeout(10)
            buffered = b""
            while True:  # the CONNECT: first byte, remaining length, body
                buffered += tls.recv(4096)
                length, shift, i = 0, 0, 1
                while i < len(buffered):
                    length |= (buffered[i] & 0x7F) << shift
                    shift += 7
                    i += 1
                    if not buffered[i - 1] & 0x80:
                        break
                if i < len(buffered) and len(buffered) >= i + length:
                    break
            tls.sendall(connack + publish)  # one write: one TLS record
            done.wait(60)  # silent meanwhile: nothing else makes the socket readable

    thread = threading.Thread(target=broker, daemon=True)
    thread.start()
    received = asyncio.Event()
    seen: list[tuple[str, bytes]] = []

    def on_message(t: str, p: bytes) -> None:
        seen.append((t, p))
        received.set()

    conn = MqttConnection(
        client_id="d-001",
        broker=BrokerAddress.from_url(
            f"mqtts://127.0.0.1:{port}", ca_file=ca.cert_file
        ).with_credentials("d-001", "pw"),
        on_message=on_message,
        subscriptions=[],
        session_expiry_s=0,
    )
    try:
        await conn.start(timeout_s=10)
        await asyncio.wait_for(received.wait(), 10)
        assert seen == [(topic.decode(), payload)]
    finally:
        await conn.stop()
        done.set()
        await asyncio.to_thread(thread.join, 10)
