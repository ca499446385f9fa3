"""A whole simulated county on one machine: private broker, controller, terminals.

`setup_county` prepares a data directory (database with the county, keys, broker
accounts, terminal configs); `run_demo` starts the broker, the controller and the
simulated fleet, writes DATA_DIR/demo.json, and stops everything on Ctrl-C. The tests
use `setup_county` too, so the demo and the tests run the same system.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr
from sqlmodel import Session, select

from controller.app import ControllerServer
from controller.auth import Role, create_user_and_token
from controller.county import County, seed
from controller.db import Database
from controller.groups import TargetGroup
from controller.sessions import set_console_password
from controller.settings import Settings
from dalaba.mqtt import BrokerAddress
from dalaba.protocol import now_ms
from dalaba.signing import SigningScheme, load_or_create_signer
from dalaba_ops.broker import (
    CONTROLLER_USER,
    BrokerTls,
    ControllerAccount,
    DeviceAccount,
    MosquittoProcess,
    controller_username,
    free_port,
    write_broker_config,
)
from dalaba_ops.broker_accounts import MosquittoFileAccounts
from dalaba_ops.provisioning import provision_simulated_county, read_or_create_secret
from edge_agent.config import ClockSource, DeviceConfig
from firmware_sim.fleet import device_dir, find_device_configs, spawn_fleet_processes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedCounty:
    data_dir: Path
    settings: Settings
    broker: MosquittoProcess
    broker_port: int
    controller_password: str
    # A second controller replica's broker account (dalaba-controller-2): for a second
    # controller, and for tests and tools that need the broker rights of one without
    # taking over the first controller's session (client ids are bound to accounts).
    replica_password: str
    admin_token: str
    county: County
    # Console logins made for the demo: name -> (role, township, password).
    console_users: dict[str, tuple[str, str | None, str]] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.http_host}:{self.settings.http_port}"

    @property
    def tls(self) -> BrokerTls | None:
        return self.broker.files.tls

    @property
    def broker_url(self) -> str:
        return self.settings.broker_url

    def broker_address(self, username: str, password: str | None = None) -> BrokerAddress:
        """The private broker as a client of account `username` reaches it: TLS with the
        county's CA when it has one, and then, with client certificates, the account's
        own certificate (made by setup_county for the controller replicas)."""
        address = BrokerAddress.from_url(
            self.broker_url,
            ca_file=self.tls.ca_file if self.tls else None,
            cert_file=self.client_cert(username)[0] if self._client_certs else None,
            key_file=self.client_cert(username)[1] if self._client_certs else None,
        )
        return address.with_credentials(username, password)

    @property
    def _client_certs(self) -> bool:
        return self.tls is not None and self.tls.require_certificate

    def client_cert(self, account: str) -> tuple[Path, Path]:
        """Where setup_county keeps account `account`'s certificate and key: a terminal's
        in its own folder, a controller replica's under keys/."""
        if account == CONTROLLER_USER or account.startswith(f"{CONTROLLER_USER}-"):
            base = self.data_dir / "keys" / f"broker-{account}"
            return base.with_suffix(".pem"), base.with_suffix(".key")
        folder = device_dir(self.data_dir, account)
        return folder / "client.pem", folder / "client.key"


def setup_county(
    data_dir: Path,
    *,
    villages: int = 164,
    http_port: int | None = None,
    broker_port: int | None = None,
    telemetry_interval_s: float = 30.0,
    speech_backends: tuple[str, ...] = ("edge-tts", "espeak-ng"),
    database_url: str | None = None,
    two_person_levels: tuple[int, ...] = (),
    console_users: bool = True,
    tls: bool = False,
    client_certs: bool = False,
    signing_scheme: SigningScheme = "ed25519",
    clock_source: ClockSource = "system",
) -> PreparedCounty:
    """`two_person_levels` is empty by default so the tests and benchmarks can send a
    county-wide emergency with one token; the demo turns the rule on, as production has
    it by default (see Settings). `clock_source`: see DeviceConfig (the simulated
    terminals share the machine's clock, so "system" unless a test injects offsets).

    `tls`: the broker listens for MQTT over TLS only (mqtts://), with a CA made for this
    county under DATA_DIR/broker/tls; the controller and every terminal trust that CA.
    `client_certs` as well: every account logs in with a certificate of that CA naming
    it (a terminal's in its folder, a controller replica's under keys/), no password."""
    if client_certs and not tls:
        raise ValueError("client_certs: needs tls=True")
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    http_port = http_port or free_port()
    broker_port = broker_port or free_port()
    county = County.for_size(villages)
    controller_password = read_or_create_secret(data_dir / "keys" / "broker-controller.secret")
    replica_password = read_or_create_secret(data_dir / "keys" / "broker-controller-2.secret")
    broker_dir = data_dir / "broker"
    files = write_broker_config(broker_dir, broker_port, tls=tls, client_certs=client_certs)
    controller_cert = _controller_cert(data_dir, files.tls, CONTROLLER_USER)
    settings = Settings(
        data_dir=data_dir,
        http_port=http_port,
        broker_url=f"{'mqtts' if tls else 'mqtt'}://127.0.0.1:{broker_port}",
        broker_username=CONTROLLER_USER,
        broker_password=SecretStr(controller_password),
        broker_ca_file=files.tls.ca_file if files.tls else None,
        broker_cert_file=controller_cert[0] if controller_cert else None,
        broker_key_file=controller_cert[1] if controller_cert else None,
        demo=True,
        speech_backends=speech_backends,
        database_url=database_url,
        two_person_levels=two_person_levels,
        signing_scheme=signing_scheme,
    )
    db = Database(settings.db_url)
    db.start()
    try:
        db.run_sync(lambda s: seed(s, county))
        admin_token = db.run_sync(
            lambda s: create_user_and_token(s, "demo-admin", Role.ADMIN, None, label="demo")
        )
        logins = _demo_console_users(county) if console_users else {}
        for name, (role, township, password) in logins.items():
            db.run_sync(_console_user_setter(name, Role(role), township, password))
        db.run_sync(lambda s: _seed_groups(s, county))
    finally:
        db.stop()
    signer = load_or_create_signer(settings.signing_scheme, settings.signing_key_path)
    if not client_certs:
        _forget_certificate_logins(data_dir)
    accounts = provision_simulated_county(
        data_dir,
        county,
        broker_url=settings.broker_url,
        media_url=settings.media_url,
        public_key_pem=signer.trust_pem().decode(),
        broker_dir=broker_dir,
        controller_password=controller_password,
        telemetry_interval_s=telemetry_interval_s,
        clock_source=clock_source,
        extra_controllers=(ControllerAccount(controller_username(2), replica_password),),
    )
    if files.tls is not None:
        _controller_cert(data_dir, files.tls, controller_username(2))
        _terminals_use_tls(data_dir, files.tls, accounts)
    return PreparedCounty(
        data_dir=data_dir,
        settings=settings,
        broker=MosquittoProcess(files, broker_port),
        broker_port=broker_port,
        controller_password=controller_password,
        replica_password=replica_password,
        admin_token=admin_token,
        county=county,
        console_users=logins,
    )


def _controller_cert(
    data_dir: Path, tls: BrokerTls | None, account: str
) -> tuple[Path, Path] | None:
    """A controller replica's client certificate under keys/, when the broker wants one
    (made once; kept beside the replica's other broker secret)."""
    if tls is None or not tls.require_certificate:
        return None
    base = data_dir / "keys" / f"broker-{account}"
    cert, key = base.with_suffix(".pem"), base.with_suffix(".key")
    if not (cert.exists() and key.exists()):
        tls.ca.issue_client(account, cert, key)
    return cert, key


def _forget_certificate_logins(data_dir: Path) -> None:
    """A data directory last set up with client certificates holds device files without
    passwords, which provisioning would keep: drop those files, so that its terminals
    get new passwords (and the broker's password file with them)."""
    for path in find_device_configs(data_dir):
        if not DeviceConfig.load(path).mqtt_password.get_secret_value():
            path.unlink()


def _terminals_use_tls(data_dir: Path, tls: BrokerTls, accounts: list[DeviceAccount]) -> None:
    """Point every simulated terminal's device file at the county's CA and, with
    certificate identity, at a certificate of its own in its folder, without a password
    (the broker takes the account from the certificate). Done here, over what
    provisioning wrote, so provisioning stays the same for both transports."""
    for account in accounts:
        folder = device_dir(data_dir, account.device_id)
        path = folder / "device.json"
        update: dict[str, object] = {"ca_file": tls.ca_file}
        if tls.require_certificate:
            cert, key = folder / "client.pem", folder / "client.key"
            if not (cert.exists() and key.exists()):
                tls.ca.issue_client(account.device_id, cert, key)
            update |= {"cert_file": cert, "key_file": key, "mqtt_password": SecretStr("")}
        config = DeviceConfig.load(path)
        # Validated again (model_copy would not): the TLS files must agree with the URL.
        DeviceConfig.model_validate({**config.model_dump(), **update}).save(path)


def _console_user_setter(
    name: str, role: Role, township: str | None, password: str
) -> Callable[[Session], object]:
    return lambda session: set_console_password(session, name, role, township, password)


def _demo_console_users(county: County) -> dict[str, tuple[str, str | None, str]]:
    """An admin, two duty officers (the two-person rule needs two), a technician and a
    clerk of the first township, each with a fresh random password written to
    demo.json."""
    first = county.townships[0].id if county.townships else None
    return {
        name: (role, township, secrets.token_urlsafe(9))
        for name, role, township in (
            ("demo-admin", "admin", None),
            ("duty1", "duty_officer", None),
            ("duty2", "duty_officer", None),
            ("tech1", "technician", None),
            (f"clerk-{first}", "township_staff", first),
        )
    }


def _seed_groups(session: Session, county: County) -> None:
    """The saved groups a county starts with, from the villages' tags."""
    have = set(session.exec(select(TargetGroup.name)).all())
    riverside = [v.id for v in county.villages if "riverside" in v.tags]
    if riverside and "沿河村 riverside villages" not in have:
        now = now_ms()
        session.add(
            TargetGroup(
                name="沿河村 riverside villages",
                description="防汛转移重点村 villages to warn first in a flood",
                villages=riverside,
                created_by="demo",
                created_ms=now,
                updated_ms=now,
            )
        )


def write_demo_file(prepared: PreparedCounty) -> Path:
    path = prepared.data_dir / "demo.json"
    info = {
        "api_url": prepared.api_url,
        "console_url": prepared.api_url + "/",
        "api_token": prepared.admin_token,
        "broker_url": (
            f"{'mqtts' if prepared.tls else 'mqtt'}://{CONTROLLER_USER}:"
            f"{prepared.controller_password}@127.0.0.1:{prepared.broker_port}"
        ),
        "broker_ca_file": str(prepared.tls.ca_file) if prepared.tls else None,
        "data_dir": str(prepared.data_dir),
        "townships": len(prepared.county.townships),
        "villages": len(prepared.county.villages),
        "terminals": sum(v.terminals for v in prepared.county.villages),
        "console_users": [
            {"name": name, "role": role, "township": township, "password": password}
            for name, (role, township, password) in prepared.console_users.items()
        ],
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=2)
    return path


async def run_demo(
    data_dir: Path,
    villages: int,
    port: int | None,
    processes: int,
    *,
    tls: bool = False,
    client_certs: bool = False,
) -> None:
    prepared = setup_county(
        data_dir,
        villages=villages,
        http_port=port,
        two_person_levels=(1, 2),
        tls=tls,
        client_certs=client_certs,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    fleet: list[subprocess.Popen[bytes]] = []
    # The demo's own broker: the console can enrol and revoke boards (docs/operations.md).
    accounts = MosquittoFileAccounts(prepared.data_dir / "broker", prepared.broker.reload)
    controller = ControllerServer(prepared.settings, accounts)
    try:
        await prepared.broker.start_async()
        await controller.start()
        fleet = spawn_fleet_processes(prepared.data_dir, processes)
        demo_file = write_demo_file(prepared)
        terminals = sum(v.terminals for v in prepared.county.villages)
        print(
            f"\nDalaba demo is up: {len(prepared.county.townships)} townships, "
            f"{len(prepared.county.villages)} villages, {terminals} terminals\n"
            f"  console / API : {prepared.api_url}/\n"
            f"  broker        : {prepared.broker_url} (private)\n"
            f"  logins, token : {demo_file}\n"
            f"Press Ctrl-C to stop.\n",
            flush=True,
        )
        await stop.wait()
    finally:
        print("stopping the demo ...", flush=True)
        for proc in fleet:
            proc.send_signal(signal.SIGTERM)
        for proc in fleet:
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
        await controller.stop()
        prepared.broker.stop()
