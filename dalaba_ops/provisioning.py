"""Terminal identities: broker accounts, ACLs and each terminal's config file.

On a real deployment (`dalaba provision`, `provision_terminals`) the device file is
copied onto the board and the accounts are merged into the county broker's files; in the
demo and the tests (`provision_simulated_county`) the device file is written into the
simulated terminal's folder under DATA_DIR/sim/ and the broker's files are written whole.
"""

from __future__ import annotations

import errno
import os
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from controller.county import County
from dalaba.protocol import check_id
from dalaba_ops.broker import (
    CONTROLLER_USER,
    ControllerAccount,
    DeviceAccount,
    write_acl,
    write_password_file,
)
from edge_agent.config import ClockSource, DeviceConfig
from firmware_sim.fleet import device_dir


def read_or_create_secret(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def provision_simulated_county(
    data_dir: Path,
    county: County,
    *,
    broker_url: str,
    media_url: str,
    public_key_pem: str,
    broker_dir: Path,
    controller_password: str,
    telemetry_interval_s: float = 30.0,
    clock_source: ClockSource = "system",
    extra_controllers: tuple[ControllerAccount, ...] = (),
) -> list[DeviceAccount]:
    """Write every terminal's config (keeping existing passwords) and the broker's
    password and ACL files. Returns the accounts."""
    accounts = []
    for village in county.villages:
        for device_id in village.device_ids():
            path = device_dir(data_dir, device_id) / "device.json"
            password = (
                DeviceConfig.load(path).mqtt_password.get_secret_value()
                if path.exists()
                else secrets.token_urlsafe(18)
            )
            DeviceConfig(
                device_id=device_id,
                village_id=village.id,
                township_id=village.township_id,
                broker_url=broker_url,
                mqtt_username=device_id,
                mqtt_password=SecretStr(password),
                media_base_url=media_url,
                controller_public_keys=[public_key_pem],
                state_dir=path.parent / "state",
                telemetry_interval_s=telemetry_interval_s,
                clock_source=clock_source,
            ).save(path)
            accounts.append(DeviceAccount(device_id, village.id, village.township_id, password))
    broker_dir.mkdir(parents=True, exist_ok=True)
    write_password_file(
        broker_dir / "passwd", controller_password, accounts, extra_controllers=extra_controllers
    )
    write_acl(broker_dir / "acl", accounts, extra_controllers=extra_controllers)
    return accounts


# ------------------------------------------------------------------ real terminals


@dataclass(frozen=True)
class Terminal:
    """A terminal as the database knows it: the device row gives its place."""

    device_id: str
    village_id: str
    township_id: str


@dataclass(frozen=True)
class Provisioned:
    terminal: Terminal
    device_file: Path
    new_password: bool  # a password the broker did not know before this run


@dataclass(frozen=True)
class BrokerFilesWritten:
    password_file: Path
    acl_file: Path
    accounts: int  # every account in the password file, controllers included


def controller_trust_pem(scheme: str, key_path: Path) -> str:
    """What terminals must trust (`controller_public_keys`) for the controller's signing
    key: its certificate if it has one, else its public key. The key is read, never
    created: a key made here would not be the one the controller signs with."""
    from dalaba import signing

    if not key_path.exists():
        raise FileNotFoundError(errno.ENOENT, "signing key not found", str(key_path))
    # Releases before the national scheme have only the Ed25519 signer.
    loader = getattr(signing, "load_or_create_signer", None)
    signer = loader(scheme, key_path) if loader else signing.Ed25519Signer.load_or_create(key_path)
    trust = getattr(signer, "trust_pem", signer.public_pem)
    pem: bytes = trust()
    return pem.decode()


def provision_terminals(
    terminals: Sequence[Terminal],
    *,
    out_dir: Path,
    broker_dir: Path,
    broker_url: str,
    media_url: str,
    public_key_pems: list[str],
    controller_password: str | None,
    state_dir: Path,
    ca_file: Path | None = None,
    rotate: bool = False,
) -> tuple[list[Provisioned], BrokerFilesWritten]:
    """Write `out_dir/<device_id>/device.json` for each terminal and add or update its
    account and ACL entry in `broker_dir/passwd` and `broker_dir/acl`, keeping every
    other account in them.

    A terminal keeps the password of its existing device file, so running this again
    changes nothing a board holds; `rotate` gives it a new one (a board re-flashed, a
    password that leaked). A terminal the broker knows but whose device file is not in
    `out_dir` is refused without `rotate`: its board holds a password nobody here has.
    `controller_password` is needed only when there is no password file yet (it then
    gets the controller's account). `ca_file` is where the board keeps the CA of an
    mqtts:// broker."""
    passwd = broker_dir / "passwd"
    hashes = read_password_file(passwd)
    if not hashes and not controller_password:
        raise ValueError(
            f"{passwd}: no password file yet, and no controller password to start it with "
            "(set DALABA_BROKER_PASSWORD in the --config file)"
        )
    planned: list[tuple[Terminal, Path, DeviceConfig, bool]] = []
    for terminal in terminals:
        check_id(terminal.device_id)
        path = out_dir / terminal.device_id / "device.json"
        password: str | None = None
        if path.exists() and not rotate:
            try:
                password = DeviceConfig.load(path).mqtt_password.get_secret_value()
            except (OSError, ValueError) as exc:
                raise ValueError(f"{path}: unreadable device file ({exc}); give --rotate") from exc
        elif terminal.device_id in hashes and not rotate:
            raise ValueError(
                f"terminal {terminal.device_id} has a broker account but no device file in "
                f"{out_dir}: give --rotate to issue a new password (its board then needs the "
                "new device.json)"
            )
        new = password is None or terminal.device_id not in hashes
        fields: dict[str, object] = {
            "device_id": terminal.device_id,
            "village_id": terminal.village_id,
            "township_id": terminal.township_id,
            "broker_url": broker_url,
            "mqtt_username": terminal.device_id,
            "mqtt_password": SecretStr(password or secrets.token_urlsafe(18)),
            "media_base_url": media_url,
            "controller_public_keys": public_key_pems,
            "state_dir": state_dir,
            # A real board: a power cut must not lose a report already on flash.
            "fsync_flash_writes": True,
            # A board's NTP may be broken or blocked: start on the controller's clock.
            "clock_source": "controller",
        }
        if ca_file is not None:
            fields["ca_file"] = ca_file
        # Validated before anything is written: a bad URL changes no file.
        planned.append((terminal, path, DeviceConfig.model_validate(fields), new))

    accounts = [
        DeviceAccount(
            t.device_id, t.village_id, t.township_id, config.mqtt_password.get_secret_value()
        )
        for t, _path, config, _new in planned
    ]
    written = merge_broker_files(broker_dir, accounts, controller_password=controller_password)
    # The device files hold passwords in clear: nobody else may list or read them.
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    done = []
    for terminal, path, config, new in planned:
        config.save(_private_dir(path))
        done.append(Provisioned(terminal, path, new))
    return done, written


def _private_dir(path: Path) -> Path:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    return path


def read_password_file(path: Path) -> dict[str, str]:
    """username -> password hash, in file order; {} when there is no file."""
    if not path.exists():
        return {}
    hashes: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            user, sep, digest = line.partition(":")
            if not sep:
                raise ValueError(f"{path}: not a Mosquitto password file (line {line[:20]!r})")
            hashes[user] = digest
    return hashes


def _acl_blocks(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """An ACL file as its header (everything before the first `user` line) and one
    block of lines per user, in file order."""
    header: list[str] = []
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("user "):
            current = blocks.setdefault(line[5:].strip(), [])
            current.append(line)
        elif current is None:
            header.append(line)
        elif line.strip():
            current.append(line)
    while header and not header[-1].strip():
        header.pop()
    return header, blocks


def merge_broker_files(
    broker_dir: Path, devices: list[DeviceAccount], *, controller_password: str | None
) -> BrokerFilesWritten:
    """Add or replace `devices`' accounts and ACL entries in the broker's files, keeping
    every other account (controller replicas, terminals provisioned before). The entries
    are made by write_acl/write_password_file, so their form is spelled in one place."""
    broker_dir.mkdir(parents=True, exist_ok=True)
    passwd, acl = broker_dir / "passwd", broker_dir / "acl"
    hashes = read_password_file(passwd)
    old_header, old_blocks = _acl_blocks(acl.read_text()) if acl.exists() else ([], {})
    with tempfile.TemporaryDirectory(dir=broker_dir, prefix=".merge-") as tmp:
        fresh_passwd, fresh_acl = Path(tmp) / "passwd", Path(tmp) / "acl"
        # The controller's line is only taken from here when the file has none yet; a
        # stand-in password is never written.
        write_password_file(fresh_passwd, controller_password or secrets.token_hex(8), devices)
        write_acl(fresh_acl, devices)
        fresh_hashes = read_password_file(fresh_passwd)
        header, fresh_blocks = _acl_blocks(fresh_acl.read_text())
    if CONTROLLER_USER not in hashes and controller_password is None:
        fresh_hashes.pop(CONTROLLER_USER)
    for user, digest in fresh_hashes.items():
        if user != CONTROLLER_USER or user not in hashes:
            hashes[user] = digest
    blocks = dict(old_blocks)
    for user, lines in fresh_blocks.items():
        if user != CONTROLLER_USER or user not in blocks:
            blocks[user] = lines
    acl_text = "\n".join(old_header or header) + "\n"
    for lines in blocks.values():
        acl_text += "\n" + "\n".join(lines) + "\n"
    _write_private(passwd, "".join(f"{user}:{digest}\n" for user, digest in hashes.items()))
    _write_private(acl, acl_text)
    return BrokerFilesWritten(passwd, acl, len(hashes))


def _write_private(path: Path, text: str) -> None:
    """Atomically, mode 0600: the files hold password hashes and who may do what."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
