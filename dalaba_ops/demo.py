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
from dalaba.protocol import now_ms
from dalaba.signing import Ed25519Signer
from dalaba_ops.broker import (
    CONTROLLER_USER,
    ControllerAccount,
    MosquittoProcess,
    controller_username,
    free_port,
    write_broker_config,
)
from dalaba_ops.provisioning import provision_simulated_county, read_or_create_secret
from firmware_sim.fleet import spawn_fleet_processes

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
) -> PreparedCounty:
    """`two_person_levels` is empty by default so the tests and benchmarks can send a
    county-wide emergency with one token; the demo turns the rule on, as production has
    it by default (see Settings)."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    http_port = http_port or free_port()
    broker_port = broker_port or free_port()
    county = County.for_size(villages)
    controller_password = read_or_create_secret(data_dir / "keys" / "broker-controller.secret")
    replica_password = read_or_create_secret(data_dir / "keys" / "broker-controller-2.secret")
    settings = Settings(
        data_dir=data_dir,
        http_port=http_port,
        broker_url=f"mqtt://127.0.0.1:{broker_port}",
        broker_username=CONTROLLER_USER,
        broker_password=SecretStr(controller_password),
        demo=True,
        speech_backends=speech_backends,
        database_url=database_url,
        two_person_levels=two_person_levels,
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
    signer = Ed25519Signer.load_or_create(settings.signing_key_path)
    broker_dir = data_dir / "broker"
    files = write_broker_config(broker_dir, broker_port)
    provision_simulated_county(
        data_dir,
        county,
        broker_url=settings.broker_url,
        media_url=settings.media_url,
        public_key_pem=signer.public_pem().decode(),
        broker_dir=broker_dir,
        controller_password=controller_password,
        telemetry_interval_s=telemetry_interval_s,
        extra_controllers=(ControllerAccount(controller_username(2), replica_password),),
    )
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


def _console_user_setter(
    name: str, role: Role, township: str | None, password: str
) -> Callable[[Session], object]:
    return lambda session: set_console_password(session, name, role, township, password)


def _demo_console_users(county: County) -> dict[str, tuple[str, str | None, str]]:
    """An admin, two duty officers (the two-person rule needs two) and a clerk of the
    first township, each with a fresh random password written to demo.json."""
    first = county.townships[0].id if county.townships else None
    return {
        name: (role, township, secrets.token_urlsafe(9))
        for name, role, township in (
            ("demo-admin", "admin", None),
            ("duty1", "duty_officer", None),
            ("duty2", "duty_officer", None),
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
            f"mqtt://{CONTROLLER_USER}:{prepared.controller_password}"
            f"@127.0.0.1:{prepared.broker_port}"
        ),
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


async def run_demo(data_dir: Path, villages: int, port: int | None, processes: int) -> None:
    prepared = setup_county(data_dir, villages=villages, http_port=port, two_person_levels=(1, 2))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    fleet: list[subprocess.Popen[bytes]] = []
    controller = ControllerServer(prepared.settings)
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
            f"  broker        : mqtt://127.0.0.1:{prepared.broker_port} (private)\n"
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
