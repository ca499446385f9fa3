"""Terminal identities: broker accounts, ACLs and each terminal's config file.

On a real deployment the device config is flashed onto the board; in the demo and the
tests it is written into the simulated terminal's folder under DATA_DIR/sim/.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import SecretStr

from controller.county import County
from dalaba_ops.broker import ControllerAccount, DeviceAccount, write_acl, write_password_file
from edge_agent.config import DeviceConfig
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
            ).save(path)
            accounts.append(DeviceAccount(device_id, village.id, village.township_id, password))
    broker_dir.mkdir(parents=True, exist_ok=True)
    write_password_file(
        broker_dir / "passwd", controller_password, accounts, extra_controllers=extra_controllers
    )
    write_acl(broker_dir / "acl", accounts, extra_controllers=extra_controllers)
    return accounts
