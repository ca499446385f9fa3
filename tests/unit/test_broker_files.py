"""The private broker's account, ACL and config files, and one real Mosquitto using them."""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import re
import ssl
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dalaba.protocol import Topics
from dalaba_ops.broker import (
    CONTROLLER_USER,
    BrokerFiles,
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
from dalaba_ops.pki import CertificateAuthority

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
    # Per-device commands: its own topic only; county-wide: everyone; live paging
    # streams: any (only readable; every frame is signed by its session's key).
    reads = sorted(t for access, t in patterns if access == "read")
    assert reads == sorted(["dalaba/v1/cmd/device/%u", Topics.COMMAND_ALL, "dalaba/v1/live/+"])


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
    assert len(listeners) == 2
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


# --------------------------------------------------------------------------- TLS


def listener_blocks(settings: list[list[str]]) -> list[dict[str, str]]:
    """Each listener's settings up to the next listener or the next general section."""
    blocks: list[dict[str, str]] = []
    for words in settings:
        if words[0] == "listener":
            blocks.append({"listener": " ".join(words[1:])})
        elif blocks and words[0] in LISTENER_OPTIONS:
            blocks[-1][words[0]] = " ".join(words[1:])
    return blocks


LISTENER_OPTIONS = {
    "use_username_as_clientid",
    "cafile",
    "certfile",
    "keyfile",
    "tls_version",
    "require_certificate",
    "use_identity_as_username",
    "crlfile",
}


def test_broker_config_with_tls_has_one_tls_only_listener(tmp_path: Path) -> None:
    files = write_broker_config(tmp_path / "broker", 18_884, tls=True)
    assert files.tls is not None
    settings = settings_of(files.config.read_text())
    [block] = listener_blocks(settings)
    assert block == {
        "listener": "18884 127.0.0.1",
        "use_username_as_clientid": "true",  # the identity binding stays
        "cafile": str(files.tls.ca_file),
        "certfile": str(files.tls.cert_file),
        "keyfile": str(files.tls.key_file),
        "tls_version": "tlsv1.2",
    }
    keys = [words[0] for words in settings]
    assert keys[keys.index("listener") + 1] == "use_username_as_clientid"
    single = [k for k in keys if k != "log_type"]
    assert len(single) == len(set(single))
    # The private keys are the broker's alone; the certificates are public.
    assert mode(files.tls.key_file) == 0o600
    assert mode(files.tls.ca.key_file) == 0o600
    assert mode(files.tls.cert_file) == 0o644
    assert files.tls.ca.key_file.parent == tmp_path / "broker" / "tls"


def test_broker_config_with_client_certificates_takes_identity_from_them(
    tmp_path: Path,
) -> None:
    files = write_broker_config(tmp_path, 18_885, tls=True, client_certs=True)
    [block] = listener_blocks(settings_of(files.config.read_text()))
    assert block["require_certificate"] == "true"
    assert block["use_identity_as_username"] == "true"
    assert block["use_username_as_clientid"] == "true"
    with_passwords = write_broker_config(tmp_path / "pw", 18_886, tls=True)
    assert (
        "require_certificate"
        not in listener_blocks(settings_of(with_passwords.config.read_text()))[0]
    )
    with pytest.raises(ValueError, match="client_certs"):
        write_broker_config(tmp_path / "plain", 18_887, client_certs=True)


def test_broker_ca_is_made_once_and_the_server_certificate_names_the_loopback(
    tmp_path: Path,
) -> None:
    first = write_broker_config(tmp_path, 18_888, tls=True).tls
    again = write_broker_config(tmp_path, 18_888, tls=True).tls
    assert first is not None and again is not None
    # Written again, the config keeps its CA (clients trust it) and its certificate.
    assert again.ca_file.read_bytes() == first.ca_file.read_bytes()
    server = x509.load_pem_x509_certificate(first.cert_file.read_bytes())
    assert server.issuer == first.ca.certificate().subject
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1"}
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_client_certificate_names_its_account_and_only_logs_in(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    ca.issue_client("d-001", tmp_path / "d.pem", tmp_path / "d.key")
    cert = x509.load_pem_x509_certificate((tmp_path / "d.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "d-001"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # it cannot pose as a broker
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert mode(tmp_path / "d.key") == 0o600


def test_production_config_example_is_tls_only() -> None:
    """Every listener of the documented config, live or commented out, speaks TLS 1.2+
    only; the certificate-identity one also requires a certificate and reads the
    identity from it."""
    example = Path(__file__).resolve().parents[2] / "deploy/mosquitto/dalaba.conf.example"
    uncommented = "\n".join(
        line[1:] if line.startswith("#") and not line.startswith("# ") else line
        for line in example.read_text().splitlines()
    )
    blocks = listener_blocks(settings_of(uncommented))
    assert len(blocks) == 2
    for block in blocks:
        assert block["certfile"] and block["keyfile"], block
        assert block["tls_version"] == "tlsv1.2", block
    live, by_certificate = blocks
    assert "require_certificate" not in live
    assert by_certificate["require_certificate"] == "true"
    assert by_certificate["use_identity_as_username"] == "true"
    assert by_certificate["cafile"]


# --------------------------------------------------------------------------- real broker


def production_config(
    tmp_path: Path, port: int, *, by_certificate: bool, crl: Path | None = None
) -> BrokerFiles:
    """The documented config as Mosquitto would read it here: its paths pointed at files
    made in `tmp_path`, its listener at a free loopback port and, with `by_certificate`,
    its commented-out certificate-identity listener uncommented in place of the live one."""
    example = Path(__file__).resolve().parents[2] / "deploy/mosquitto/dalaba.conf.example"
    tls = write_broker_config(tmp_path, port, tls=True).tls  # a CA and a server certificate
    assert tls is not None
    lines = example.read_text().splitlines()
    live_start = lines.index("listener 8883")
    live = lines[live_start : lines.index("tls_version tlsv1.2", live_start) + 1]
    alt_start = lines.index("#listener 8883")
    alt_end = lines.index("#use_identity_as_username true") + 1
    alternative = [line[1:] for line in lines[alt_start:alt_end]]
    if crl is not None:  # the documented line, as the operator would add it
        documented_crl = lines.index("# crlfile /etc/mosquitto/certs/dalaba-clients.crl")
        alternative.append(lines[documented_crl].removeprefix("# "))
    text = "\n".join(
        lines[:live_start] + (alternative if by_certificate else live) + lines[alt_end:]
    )
    for documented, here in [
        ("listener 8883", f"listener {port} 127.0.0.1"),
        ("/etc/mosquitto/certs/broker.crt", str(tls.cert_file)),
        ("/etc/mosquitto/certs/broker.key", str(tls.key_file)),
        ("/etc/mosquitto/dalaba/passwd", str(tmp_path / "passwd")),
        ("/etc/mosquitto/dalaba/acl", str(tmp_path / "acl")),
        *([("/etc/mosquitto/certs/dalaba-clients.crl", str(crl))] if crl else []),
    ] + (
        [("/etc/mosquitto/certs/dalaba-clients-ca.crt", str(tls.ca_file))] if by_certificate else []
    ):
        assert documented in text, documented
        text = text.replace(documented, here)
    files = BrokerFiles(
        config=tmp_path / "production.conf",
        password_file=tmp_path / "passwd",
        acl_file=tmp_path / "acl",
        data_dir=tmp_path / "data",
        log_file=tmp_path / "mosquitto.log",
        tls=tls,
    )
    # What Debian's main mosquitto.conf adds around conf.d, here for a private process.
    user = pwd.getpwuid(os.getuid()).pw_name
    files.config.write_text(f"{text}\nlog_dest file {files.log_file}\nuser {user}\n")
    write_password_file(files.password_file, "controller-secret", DEVICES)
    write_acl(files.acl_file, DEVICES)
    return files


@pytest.mark.broker
@pytest.mark.parametrize("by_certificate", [False, True], ids=["passwords", "certificates"])
def test_real_mosquitto_runs_the_documented_tls_only_config(
    tmp_path: Path, by_certificate: bool
) -> None:
    """Mosquitto 2.0.11 starts with the documented config and its listener is TLS only:
    with passwords, a device logs in over TLS and a plain client is refused; with
    certificates, a device logs in with its certificate and no password, and a client
    without one is refused."""
    port = free_port()
    files = production_config(tmp_path, port, by_certificate=by_certificate)
    assert files.tls is not None
    process = MosquittoProcess(files, port)
    process.start()
    try:
        context = ssl.create_default_context(cafile=str(files.tls.ca_file))
        if by_certificate:
            files.tls.ca.issue_client("d-001", tmp_path / "d.pem", tmp_path / "d.key")
            with_cert = ssl.create_default_context(cafile=str(files.tls.ca_file))
            with_cert.load_cert_chain(tmp_path / "d.pem", tmp_path / "d.key")
            # No username or password at all: the certificate says who it is.
            device = BlockingClient(port, None, None, tls=with_cert, client_id="")
            refused = BlockingClient(port, "d-001", "pw-one", tls=context)
        else:
            device = BlockingClient(port, "d-001", "pw-one", tls=context, client_id="")
            refused = BlockingClient(port, "d-001", "pw-one")  # plain MQTT
        try:
            assert not device.connect().is_failure
            assert device.assigned_client_id == "d-001"
        finally:
            device.close()
        try:
            assert refused.connect_refused()
        finally:
            refused.close()
    finally:
        process.stop()


@pytest.mark.broker
def test_real_mosquitto_refuses_a_revoked_terminal_certificate(tmp_path: Path) -> None:
    """Certificate identity with the documented crlfile: a board whose certificate is in
    the CA's revocation list is refused; the others still log in."""
    port = free_port()
    ca = CertificateAuthority.load_or_create(tmp_path / "tls")  # what production_config uses
    for device in ("d-001", "d-002"):
        ca.issue_client(device, tmp_path / f"{device}.pem", tmp_path / f"{device}.key")
    ca.write_crl(tmp_path / "revoked.crl", [tmp_path / "d-002.pem"])
    files = production_config(tmp_path, port, by_certificate=True, crl=tmp_path / "revoked.crl")
    assert files.tls is not None and files.tls.ca == ca
    process = MosquittoProcess(files, port)
    process.start()
    try:
        outcomes = {}
        for device in ("d-001", "d-002"):
            context = ssl.create_default_context(cafile=str(ca.cert_file))
            context.load_cert_chain(tmp_path / f"{device}.pem", tmp_path / f"{device}.key")
            client = BlockingClient(port, None, None, tls=context, client_id="")
            try:
                outcomes[device] = "refused" if client.connect_refused() else "accepted"
            finally:
                client.close()
        assert outcomes == {"d-001": "accepted", "d-002": "refused"}
    finally:
        process.stop()

    stranger = CertificateAuthority.load_or_create(tmp_path / "stranger")
    stranger.issue_client("d-003", tmp_path / "d-003.pem", tmp_path / "d-003.key")
    with pytest.raises(ValueError, match="not issued by this CA"):
        ca.write_crl(tmp_path / "bad.crl", [tmp_path / "d-003.pem"])


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

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        *,
        tls: ssl.SSLContext | None = None,
        client_id: str | None = None,
    ) -> None:
        self.port = port
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"test-{username}-{time.monotonic_ns()}" if client_id is None else client_id,
            protocol=paho.MQTTv5,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set_context(tls)
        self.connack: Any = None
        self.connack_properties: Any = None
        self.suback: list[Any] | None = None
        self.messages: list[tuple[str, bytes]] = []
        self.acked: set[int] = set()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, properties: Any) -> None:
        self.connack = reason
        self.connack_properties = properties

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

    def connect_refused(self) -> bool:
        """True when the broker hangs up or refuses instead of accepting the login."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=10)
        except (ssl.SSLError, ConnectionError):
            return True
        self.run_until(lambda: self.connack is not None or self.client.socket() is None)
        return self.connack is None or self.connack.is_failure

    @property
    def assigned_client_id(self) -> str | None:
        value = getattr(self.connack_properties, "AssignedClientIdentifier", None)
        return str(value) if value is not None else None

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
