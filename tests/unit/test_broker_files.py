"""The private broker's account, ACL and config files, and one real Mosquitto using them."""

from __future__ import annotations

import base64
import hashlib
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from dalaba.broker import (
    CONTROLLER_USER,
    DeviceAccount,
    MosquittoProcess,
    free_port,
    mosquitto_password_hash,
    write_acl,
    write_broker_config,
    write_password_file,
)
from dalaba.protocol import Topics

DEVICES = [
    DeviceAccount("d-001", "v-001", "t-01", password="pw-one"),
    DeviceAccount("d-002", "v-002", "t-01", password="pw-two"),
    DeviceAccount("d-003", "v-003", "t-02", password="pw-three"),
]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- password hashes


def check_mosquitto_hash(encoded: str, password: str) -> bool:
    """Verify a `$7$` hash the way Mosquitto does: PBKDF2-SHA512 over the stored salt."""
    match = re.fullmatch(r"\$7\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)", encoded)
    assert match, encoded
    rounds, salt, digest = int(match[1]), base64.b64decode(match[2]), base64.b64decode(match[3])
    computed = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, rounds, len(digest))
    return computed == digest


def test_password_hash_is_mosquitto_pbkdf2_sha512() -> None:
    encoded = mosquitto_password_hash("correct horse")
    assert encoded.startswith("$7$101$")
    _, _, _, salt, digest = encoded.split("$")
    assert len(base64.b64decode(salt)) == 12
    assert len(base64.b64decode(digest)) == 64
    assert check_mosquitto_hash(encoded, "correct horse")
    assert not check_mosquitto_hash(encoded, "correct horsE")
    assert not check_mosquitto_hash(encoded, "")


def test_password_hash_is_salted_per_call() -> None:
    first, second = mosquitto_password_hash("same"), mosquitto_password_hash("same")
    assert first != second
    assert first.split("$")[3] != second.split("$")[3]
    assert check_mosquitto_hash(first, "same") and check_mosquitto_hash(second, "same")


def test_password_file_has_every_account_hashed(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write_password_file(path, "controller-secret", DEVICES)
    assert mode(path) == 0o600

    entries = dict(line.split(":", 1) for line in path.read_text().splitlines())
    assert set(entries) == {CONTROLLER_USER, "d-001", "d-002", "d-003"}
    assert check_mosquitto_hash(entries[CONTROLLER_USER], "controller-secret")
    for d in DEVICES:
        assert check_mosquitto_hash(entries[d.device_id], d.password)
    assert "pw-one" not in path.read_text()
    assert "controller-secret" not in path.read_text()


def test_device_account_repr_hides_the_password() -> None:
    assert "pw-one" not in repr(DEVICES[0])


# --------------------------------------------------------------------------- ACL


def parse_acl(text: str) -> tuple[list[tuple[str, str]], dict[str, list[tuple[str, str]]]]:
    """(pattern rules for everyone, topic rules per user), as (access, topic)."""
    patterns: list[tuple[str, str]] = []
    users: dict[str, list[tuple[str, str]]] = {}
    user: str | None = None
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user":
            user = words[1]
            users[user] = []
        elif words[0] == "pattern":
            patterns.append((words[1], words[2]))
        elif words[0] == "topic":
            assert user is not None, f"topic rule before any user: {line}"
            users[user].append((words[1], words[2]))
        else:
            raise AssertionError(f"unexpected ACL line: {line}")
    return patterns, users


def test_acl_gives_each_device_exactly_its_township_and_village(tmp_path: Path) -> None:
    path = tmp_path / "acl"
    write_acl(path, DEVICES)
    assert mode(path) == 0o600
    _, users = parse_acl(path.read_text())

    for d in DEVICES:
        assert sorted(users[d.device_id]) == sorted(
            [
                ("read", Topics.command_township(d.township_id)),
                ("read", Topics.command_village(d.village_id)),
            ]
        )
    assert users[CONTROLLER_USER] == [("readwrite", "dalaba/v1/#")]
    assert set(users) == {CONTROLLER_USER, "d-001", "d-002", "d-003"}


def test_acl_patterns_let_devices_write_only_under_their_own_topics(tmp_path: Path) -> None:
    path = tmp_path / "acl"
    write_acl(path, DEVICES)
    patterns, _ = parse_acl(path.read_text())

    writes = [t for access, t in patterns if access in ("write", "readwrite")]
    assert writes, "devices must be able to report"
    for topic in writes:
        assert topic.startswith("dalaba/v1/device/%u/"), topic
        assert "#" not in topic and "+" not in topic
    assert {t.rsplit("/", 1)[1] for t in writes} == {"status", "ack", "telemetry", "event"}
    # Per-device commands: its own topic only; county-wide: everyone.
    reads = sorted(t for access, t in patterns if access == "read")
    assert reads == sorted(["dalaba/v1/cmd/device/%u", Topics.COMMAND_ALL])


def test_acl_with_no_devices_still_lets_the_controller_in(tmp_path: Path) -> None:
    path = tmp_path / "acl"
    write_acl(path, [])
    _, users = parse_acl(path.read_text())
    assert users == {CONTROLLER_USER: [("readwrite", "dalaba/v1/#")]}


def test_acl_is_rewritten_in_place(tmp_path: Path) -> None:
    path = tmp_path / "acl"
    write_acl(path, DEVICES)
    write_acl(path, DEVICES[:1])
    _, users = parse_acl(path.read_text())
    assert set(users) == {CONTROLLER_USER, "d-001"}
    assert mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acl"]  # no temp file left


# --------------------------------------------------------------------------- config


def test_broker_config(tmp_path: Path) -> None:
    files = write_broker_config(tmp_path / "broker", 18_883)
    conf = files.config.read_text()
    lines = {line.strip() for line in conf.splitlines()}

    assert "allow_duplicate_messages true" in lines
    assert "allow_anonymous false" in lines
    assert "persistence true" in lines
    assert "listener 18883 127.0.0.1" in lines
    assert f"password_file {files.password_file}" in lines
    assert f"acl_file {files.acl_file}" in lines
    assert f"persistence_location {files.data_dir}/" in lines
    assert files.data_dir.is_dir()
    assert mode(files.config) == 0o600
    # Every setting but log_type appears once: a repeated one would be taken silently.
    keys = [line.split()[0] for line in conf.splitlines() if line and not line.startswith("#")]
    single = [k for k in keys if k != "log_type"]
    assert len(single) == len(set(single))


def test_broker_config_bind_address(tmp_path: Path) -> None:
    files = write_broker_config(tmp_path, 1884, bind="0.0.0.0")
    assert "listener 1884 0.0.0.0" in files.config.read_text().splitlines()


# --------------------------------------------------------------------------- real broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    port = free_port()
    files = write_broker_config(tmp_path / "broker", port)
    write_password_file(files.password_file, "controller-secret", DEVICES)
    write_acl(files.acl_file, DEVICES)
    process = MosquittoProcess(files, port)
    process.start()
    try:
        yield process
    finally:
        process.stop()
    assert not process.running


class BlockingClient:
    """paho driven by hand from the test thread: no background threads."""

    def __init__(self, port: int, username: str, password: str) -> None:
        self.port = port
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"test-{username}-{time.monotonic_ns()}",
            protocol=paho.MQTTv5,
        )
        self.client.username_pw_set(username, password)
        self.connack: Any = None
        self.suback: list[Any] | None = None
        self.messages: list[tuple[str, bytes]] = []
        self.acked: set[int] = set()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connack = reason

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        self.suback = reasons

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        self.messages.append((message.topic, bytes(message.payload)))

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        self.acked.add(mid)

    def run_until(self, done: Any, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            self.client.loop(timeout=0.05)
        assert done(), "no answer from the broker"

    def connect(self) -> Any:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.run_until(lambda: self.connack is not None)
        return self.connack

    def subscribe(self, topic: str) -> Any:
        self.suback = None
        self.client.subscribe(topic, qos=1)
        self.run_until(lambda: self.suback is not None)
        assert self.suback is not None
        return self.suback[0]

    def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1, waiting for the broker's PUBACK."""
        mid = self.client.publish(topic, payload, qos=1).mid
        self.run_until(lambda: mid in self.acked)

    def close(self) -> None:
        # DISCONNECT is written by the next loop pass, which then closes the socket;
        # a refused client's socket is closed by reading the broker's hang-up.
        self.client.disconnect()
        self.run_until(lambda: self.client.socket() is None, timeout_s=2.0)


@pytest.mark.broker
def test_real_mosquitto_accepts_devices_and_refuses_wrong_passwords(
    broker: MosquittoProcess,
) -> None:
    assert broker.running

    device = BlockingClient(broker.port, "d-001", "pw-one")
    controller = BlockingClient(broker.port, CONTROLLER_USER, "controller-secret")
    try:
        assert not device.connect().is_failure
        assert not controller.connect().is_failure
        for topic in Topics.subscriptions_for("d-001", "v-001", "t-01"):
            device.subscribe(topic)
        device.subscribe(Topics.command_village("v-002"))  # a neighbour's: granted, not served

        # The ACL is in force on delivery: the neighbour's command never arrives, its own
        # does (the broker forwards one publisher's messages in order).
        controller.publish(Topics.command_village("v-002"), b"not yours")
        controller.publish(Topics.command_village("v-001"), b"yours")
        device.run_until(lambda: bool(device.messages))
        assert device.messages == [(Topics.command_village("v-001"), b"yours")]
    finally:
        device.close()
        controller.close()

    for username, password in [
        ("d-001", "pw-two"),  # another device's password
        ("d-001", ""),
        ("d-999", "pw-one"),  # no such account
        (CONTROLLER_USER, "pw-one"),
    ]:
        refused = BlockingClient(broker.port, username, password)
        try:
            reason = refused.connect()
        finally:
            refused.close()
        assert reason.is_failure, (username, password)
        assert reason.value in (0x86, 0x87), reason  # bad user name or password / not authorized
