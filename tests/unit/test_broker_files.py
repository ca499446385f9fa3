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

from dalaba.protocol import Topics
from dalaba_ops.broker import (
    CONTROLLER_USER,
    ControllerAccount,
    DeviceAccount,
    MosquittoProcess,
    controller_username,
    free_port,
    mosquitto_password_hash,
    write_acl,
    write_broker_config,
    write_password_file,
)

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


REPLICAS = [
    ControllerAccount(controller_username(2), password="replica-two"),
    ControllerAccount(controller_username(3), password="replica-three"),
]


def test_controller_replica_usernames() -> None:
    assert controller_username(1) == CONTROLLER_USER == "dalaba-controller"
    assert controller_username(2) == "dalaba-controller-2"
    assert controller_username(12) == "dalaba-controller-12"
    with pytest.raises(ValueError):
        controller_username(0)


@pytest.mark.parametrize(
    "username",
    [CONTROLLER_USER, "dalaba-controller-1", "dalaba-controller-02", "dalaba-controller-x",
     "d-001", "dalaba-controller-2 ", ""],
)  # fmt: skip
def test_controller_account_names_only_a_further_replica(username: str) -> None:
    with pytest.raises(ValueError, match="controller replica account"):
        ControllerAccount(username, password="pw")


def test_controller_account_repr_hides_the_password() -> None:
    assert "replica-two" not in repr(REPLICAS[0])


def test_password_file_has_each_controller_replica_with_its_own_password(
    tmp_path: Path,
) -> None:
    path = tmp_path / "passwd"
    write_password_file(path, "controller-secret", DEVICES, extra_controllers=REPLICAS)
    entries = dict(line.split(":", 1) for line in path.read_text().splitlines())
    assert set(entries) == {
        CONTROLLER_USER, "dalaba-controller-2", "dalaba-controller-3", "d-001", "d-002", "d-003"
    }  # fmt: skip
    assert check_mosquitto_hash(entries[CONTROLLER_USER], "controller-secret")
    assert check_mosquitto_hash(entries["dalaba-controller-2"], "replica-two")
    assert check_mosquitto_hash(entries["dalaba-controller-3"], "replica-three")
    assert not check_mosquitto_hash(entries["dalaba-controller-2"], "controller-secret")
    assert "replica-two" not in path.read_text()


def test_accounts_named_twice_are_refused(tmp_path: Path) -> None:
    """An account name is a client id too: two accounts of one name would share one
    session. Nothing is written."""
    clash_device = [*DEVICES, DeviceAccount("dalaba-controller-2", "v-009", "t-09", "pw")]
    clash_twice = [*DEVICES, DeviceAccount("d-001", "v-009", "t-09", "pw")]
    for devices, replicas in [(clash_device, REPLICAS), (clash_twice, []), (DEVICES, REPLICAS * 2)]:
        with pytest.raises(ValueError, match="named twice"):
            write_password_file(tmp_path / "passwd", "pw", devices, extra_controllers=replicas)
        with pytest.raises(ValueError, match="named twice"):
            write_acl(tmp_path / "acl", devices, extra_controllers=replicas)
    device_as_controller = [*DEVICES, DeviceAccount(CONTROLLER_USER, "v-009", "t-09", "pw")]
    with pytest.raises(ValueError, match=CONTROLLER_USER):
        write_acl(tmp_path / "acl", device_as_controller)
    assert list(tmp_path.iterdir()) == []


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


def test_acl_gives_every_controller_replica_the_controllers_rights(tmp_path: Path) -> None:
    path = tmp_path / "acl"
    write_acl(path, DEVICES, extra_controllers=REPLICAS)
    patterns, users = parse_acl(path.read_text())
    controller_rights = [("readwrite", "dalaba/v1/#")]
    assert users[CONTROLLER_USER] == controller_rights
    assert users["dalaba-controller-2"] == controller_rights
    assert users["dalaba-controller-3"] == controller_rights
    assert set(users) == {CONTROLLER_USER, "dalaba-controller-2", "dalaba-controller-3"} | {
        d.device_id for d in DEVICES
    }
    write_acl(tmp_path / "acl-single", DEVICES)
    assert parse_acl((tmp_path / "acl-single").read_text())[0] == patterns


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
    assert "use_username_as_clientid true" in lines
    # Every setting but log_type appears once: a repeated one would be taken silently.
    keys = [line.split()[0] for line in conf.splitlines() if line and not line.startswith("#")]
    single = [k for k in keys if k != "log_type"]
    assert len(single) == len(set(single))


def settings_of(conf: str) -> list[list[str]]:
    return [line.split() for line in conf.splitlines() if line and not line.startswith("#")]


def test_broker_config_binds_client_ids_on_every_listener(tmp_path: Path) -> None:
    """use_username_as_clientid is a listener option in Mosquitto 2.0.x (even with
    per_listener_settings false): it counts only after a listener line, and before the
    first one it would open a default listener on 1883 of every interface."""
    settings = settings_of(write_broker_config(tmp_path, 18_883).config.read_text())
    keys = [words[0] for words in settings]
    assert keys.count("listener") == 1
    assert "port" not in keys  # the deprecated default listener
    binding = keys.index("use_username_as_clientid")
    assert settings[binding] == ["use_username_as_clientid", "true"]
    assert keys[binding - 1] == "listener"


def test_production_config_example_binds_client_ids_on_every_listener() -> None:
    """The documented config: every listener, live or commented out, is followed by
    use_username_as_clientid true, and none comes before the first listener."""
    example = Path(__file__).resolve().parents[2] / "deploy/mosquitto/dalaba.conf.example"
    # Read commented-out settings too: they are what an operator uncomments.
    uncommented = "\n".join(
        line[1:] if line.startswith("#") and not line.startswith("# ") else line
        for line in example.read_text().splitlines()
    )
    settings = settings_of(uncommented)
    keys = [words[0] for words in settings]
    listeners = [i for i, key in enumerate(keys) if key == "listener"]
    assert len(listeners) == 3
    for i in listeners:
        assert settings[i + 1] == ["use_username_as_clientid", "true"], settings[i]
    assert keys.count("use_username_as_clientid") == len(listeners)
    assert keys.index("use_username_as_clientid") > listeners[0]
    live = settings_of(example.read_text())
    assert ["use_username_as_clientid", "true"] in live
    assert ["per_listener_settings", "false"] in live


def test_broker_config_bind_address(tmp_path: Path) -> None:
    files = write_broker_config(tmp_path, 1884, bind="0.0.0.0")
    assert "listener 1884 0.0.0.0" in files.config.read_text().splitlines()


# --------------------------------------------------------------------------- real broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    port = free_port()
    files = write_broker_config(tmp_path / "broker", port)
    write_password_file(
        files.password_file, "controller-secret", DEVICES, extra_controllers=REPLICAS[:1]
    )
    write_acl(files.acl_file, DEVICES, extra_controllers=REPLICAS[:1])
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
        # loop() opened a loopback socket pair to wake itself; paho closes it only when
        # the client is finalised, which in a reference cycle may come after the sockets'
        # own finalisers (an unclosed-socket ResourceWarning at the end of the session).
        self.client._reset_sockets()


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


@pytest.mark.broker
def test_real_mosquitto_serves_a_controller_replica_as_the_controller(
    broker: MosquittoProcess,
) -> None:
    replica = BlockingClient(broker.port, "dalaba-controller-2", "replica-two")
    device = BlockingClient(broker.port, "d-003", "pw-three")
    try:
        assert not replica.connect().is_failure
        assert not device.connect().is_failure
        assert not replica.subscribe(Topics.ALL_DEVICE_ACKS).is_failure
        device.publish(Topics.device_ack("d-003"), b"report")
        replica.run_until(lambda: bool(replica.messages))
        assert replica.messages == [(Topics.device_ack("d-003"), b"report")]
    finally:
        replica.close()
        device.close()

    refused = BlockingClient(broker.port, "dalaba-controller-2", "controller-secret")
    try:
        assert refused.connect().is_failure  # its own password, not the first replica's
    finally:
        refused.close()
