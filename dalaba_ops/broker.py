"""A private Mosquitto for the demo and the tests, and the account/ACL files it reads.

The demo and every test start their own broker on a free port with its own data
directory; nothing here ever touches the system broker on 1883. Production points the
controller at the county's broker instead and installs the same password/ACL files
(see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dalaba.protocol import Topics
from dalaba_ops.pki import LOCAL_NAMES, CertificateAuthority

CONTROLLER_USER = "dalaba-controller"
# The broker makes every client's id its username (use_username_as_clientid), so each
# controller replica needs an account of its own: its username is its client id.
_CONTROLLER_REPLICA = re.compile(rf"{re.escape(CONTROLLER_USER)}-([2-9]|[1-9][0-9]+)")


def controller_username(replica: int) -> str:
    """The broker account (and so the MQTT client id) of controller replica `replica`:
    1 is dalaba-controller, as a single controller has always been; n > 1 is
    dalaba-controller-n."""
    if replica < 1:
        raise ValueError(f"controller replicas count from 1, not {replica}")
    return CONTROLLER_USER if replica == 1 else f"{CONTROLLER_USER}-{replica}"


# Letters of a salt that EMQX's JSON/CSV user import carries unchanged (no comma,
# quote or backslash).
SALT_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789./"


def mosquitto_password_hash(password: str) -> str:
    """Mosquitto 2's own format ($7$: PBKDF2-SHA512, 101 rounds), written directly
    because calling `mosquitto_passwd` once per terminal is far too slow at 10,000.
    The 12 salt bytes are printable (72 random bits from a 64-letter alphabet) so that
    the same hash can be imported into EMQX, which takes a salt as text
    (dalaba_ops/broker_cluster.py)."""
    salt = "".join(secrets.choice(SALT_ALPHABET) for _ in range(12)).encode()
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
    return f"$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


@dataclass(frozen=True)
class DeviceAccount:
    device_id: str
    village_id: str
    township_id: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class ControllerAccount:
    """An extra controller replica's broker account (the first is CONTROLLER_USER)."""

    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if not _CONTROLLER_REPLICA.fullmatch(self.username):
            raise ValueError(
                f"controller replica account {self.username!r}: must be "
                f"{CONTROLLER_USER}-<n> with n >= 2 (see controller_username)"
            )


@dataclass(frozen=True)
class BrokerTls:
    """The TLS material of a private broker: its CA (which clients trust, and which
    issues client certificates) and its server certificate."""

    ca: CertificateAuthority
    cert_file: Path
    key_file: Path
    # Clients must show a certificate of this CA, whose common name is their account;
    # passwords are then not used on the listener (use_identity_as_username).
    require_certificate: bool = False

    @property
    def ca_file(self) -> Path:
        return self.ca.cert_file

    def client_context(self) -> ssl.SSLContext:
        """What a client of this broker verifies: this CA, and the host name it dials."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


@dataclass(frozen=True)
class BrokerFiles:
    config: Path
    password_file: Path
    acl_file: Path
    data_dir: Path
    log_file: Path
    tls: BrokerTls | None = None


def write_acl(
    path: Path,
    devices: list[DeviceAccount],
    *,
    extra_controllers: Sequence[ControllerAccount] = (),
) -> None:
    """Least privilege per device: a terminal may publish only under its own device
    topics and read only the command topics that cover it. Every controller replica
    (CONTROLLER_USER and each of `extra_controllers`) has the same rights."""
    controllers = _controller_usernames(devices, extra_controllers)
    lines = [
        "# Written by dalaba; regenerated when terminals are added.",
        "# Every device: its own reports, and the county-wide and its own command topic.",
        *(f"pattern write {topic}" for topic in Topics.acl_device_writes()),
        *(f"pattern read {topic}" for topic in Topics.acl_device_reads()),
    ]
    for username in controllers:
        lines += ["", f"user {username}", f"topic readwrite {Topics.ACL_ALL}"]
    for d in devices:
        lines += [
            "",
            f"user {d.device_id}",
            f"topic read {Topics.command_township(d.township_id)}",
            f"topic read {Topics.command_village(d.village_id)}",
        ]
    _write_private(path, "\n".join(lines) + "\n")


def write_password_file(
    path: Path,
    controller_password: str,
    devices: list[DeviceAccount],
    *,
    extra_controllers: Sequence[ControllerAccount] = (),
) -> None:
    """CONTROLLER_USER with `controller_password`, each extra controller replica with
    its own password, and every device."""
    _controller_usernames(devices, extra_controllers)  # refuse clashing names first
    lines = [f"{CONTROLLER_USER}:{mosquitto_password_hash(controller_password)}"]
    lines += [f"{c.username}:{mosquitto_password_hash(c.password)}" for c in extra_controllers]
    lines += [f"{d.device_id}:{mosquitto_password_hash(d.password)}" for d in devices]
    _write_private(path, "\n".join(lines) + "\n")


def _controller_usernames(
    devices: list[DeviceAccount], extra_controllers: Sequence[ControllerAccount]
) -> list[str]:
    """Every account name is a client id as well: two accounts of one name would share
    (and take over) one session, so a clash is refused rather than written."""
    controllers = [CONTROLLER_USER, *(c.username for c in extra_controllers)]
    names = controllers + [d.device_id for d in devices]
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ValueError(f"broker accounts named twice: {', '.join(duplicates)}")
    return controllers


def write_broker_tls(
    base_dir: Path, *, names: Sequence[str] = LOCAL_NAMES, require_certificate: bool = False
) -> BrokerTls:
    """A CA of the broker's own under `base_dir`/tls (made once, then kept) and a server
    certificate for `names`, the host names and addresses clients dial."""
    tls_dir = base_dir / "tls"
    ca = CertificateAuthority.load_or_create(tls_dir)
    tls = BrokerTls(ca, tls_dir / "server.pem", tls_dir / "server.key", require_certificate)
    ca.issue_server(tls.cert_file, tls.key_file, names)
    return tls


def write_broker_config(
    base_dir: Path,
    port: int,
    *,
    bind: str = "127.0.0.1",
    tls: bool = False,
    client_certs: bool = False,
    server_names: Sequence[str] = LOCAL_NAMES,
) -> BrokerFiles:
    """With `tls`, the one listener speaks MQTT over TLS only (see write_broker_tls);
    with `client_certs` as well, a client is the account its certificate names and no
    password is asked (certificate identity, the alternative to passwords)."""
    if client_certs and not tls:
        raise ValueError("client_certs: needs tls (client certificates are a TLS feature)")
    base_dir.mkdir(parents=True, exist_ok=True)
    files = BrokerFiles(
        config=base_dir / "mosquitto.conf",
        password_file=base_dir / "passwd",
        acl_file=base_dir / "acl",
        data_dir=base_dir / "data",
        log_file=base_dir / "mosquitto.log",
        tls=(
            write_broker_tls(base_dir, names=server_names, require_certificate=client_certs)
            if tls
            else None
        ),
    )
    files.data_dir.mkdir(exist_ok=True)
    user = pwd.getpwuid(os.getuid()).pw_name
    conf = f"""# Written by dalaba for a private broker. Every line is deliberate:
per_listener_settings false
listener {port} {bind}
# A client's id is its username: a terminal can only ever be its own device id and a
# controller replica its own account, so no one's credentials can take over another's
# session. A listener option (in 2.0.x even with per_listener_settings false): it must
# follow every listener line; before the first it would open a default listener on
# port 1883 of every interface.
use_username_as_clientid true
{_tls_lines(files.tls)}allow_anonymous false
password_file {files.password_file}
acl_file {files.acl_file}
# Queued commands for offline terminals survive a broker restart.
persistence true
persistence_location {files.data_dir}/
autosave_interval 10
# Persistent sessions of terminals that never come back are dropped after two weeks.
persistent_client_expiration 14d
# The controller receives four reports from every terminal within a second of a
# county-wide push; a small per-client queue drops them ("Outgoing messages are being
# dropped"), measured at 1,000 terminals with the former limit of 1000.
max_queued_messages 100000
max_inflight_messages 1000
# Mosquitto 2.0.x defaults this to false in code (its docs say true), which makes a
# fan-out to many subscribers of one topic O(N^2).
allow_duplicate_messages true
max_packet_size 262144
set_tcp_nodelay true
max_keepalive 120
# Running as our own user keeps the data directory ours (root would drop to 'mosquitto').
user {user}
log_dest file {files.log_file}
log_type error
log_type warning
log_type notice
connection_messages false
"""
    _write_private(files.config, conf)
    return files


def _tls_lines(tls: BrokerTls | None) -> str:
    if tls is None:
        return ""
    lines = f"""# TLS only on this listener: a plain MQTT client is refused before it can send a
# password. The CA also vouches for client certificates when they are required.
cafile {tls.ca_file}
certfile {tls.cert_file}
keyfile {tls.key_file}
tls_version tlsv1.2
"""
    if tls.require_certificate:
        lines += """# Certificate identity: no connection without a certificate of this CA, and its
# common name is the username (so, above, the client id); passwords are not used.
require_certificate true
use_identity_as_username true
"""
    return lines


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class MosquittoProcess:
    """A private `mosquitto` child process."""

    def __init__(self, files: BrokerFiles, port: int, host: str = "127.0.0.1") -> None:
        self.files = files
        self.port = port
        self.host = host
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def executable() -> str:
        exe = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if exe is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        return exe

    def start(self, timeout_s: float = 10.0) -> None:
        self._proc = subprocess.Popen(
            [self.executable(), "-c", str(self.files.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err}{self.log_tail()}")
            if self._answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log_tail()}")

    def _answers(self) -> bool:
        """The listener is up: it accepts a connection and, with TLS, completes a
        handshake showing a certificate of our CA for the host we dial."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=0.5)
        except OSError:
            return False
        with sock:
            tls = self.files.tls
            if tls is None:
                return True
            try:
                with tls.client_context().wrap_socket(sock, server_hostname=self.host):
                    return True
            except ssl.SSLCertVerificationError as exc:
                # Up, but not as its clients will accept it: say so now, not as a
                # fleet that never connects.
                raise RuntimeError(f"mosquitto on {self.port}: TLS certificate: {exc}") from exc
            except ssl.SSLError:
                # It speaks TLS and refused us (no client certificate): up.
                return True
            except OSError:
                return False

    async def start_async(self, timeout_s: float = 10.0) -> None:
        await asyncio.to_thread(self.start, timeout_s)

    def reload(self) -> None:
        """Re-read the password and ACL files (after terminals were added)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def kill(self) -> None:
        """Stop abruptly, as a crash or power cut would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.files.log_file.read_text().splitlines()[-lines:])
        except OSError:
            return ""
