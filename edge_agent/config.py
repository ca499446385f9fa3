"""A terminal's provisioned identity and settings (one JSON file, mode 0600)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from dalaba.protocol import check_id

FIRMWARE_VERSION = "dalaba-agent/0.1.0"


class DeviceConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: str
    village_id: str
    township_id: str
    broker_url: str  # mqtt://host:port, no credentials (those are below)
    mqtt_username: str
    mqtt_password: SecretStr
    media_base_url: str  # the controller's /media/ endpoint
    controller_public_keys: list[str]  # PEM; several while a key is being rotated
    state_dir: Path  # cache, replay memory; survives restarts
    cache_max_bytes: int = 64 * 1024 * 1024
    telemetry_interval_s: float = 60.0
    emergency_volume: int = Field(default=100, ge=0, le=100)
    normal_volume: int = Field(default=70, ge=0, le=100)
    # Stay powered this long after the last play, so back-to-back items do not click.
    amplifier_hold_s: float = 2.0
    fetch_attempts: int = 5

    def model_post_init(self, _ctx: object) -> None:
        for value in (self.device_id, self.village_id, self.township_id):
            check_id(value)

    @classmethod
    def load(cls, path: Path) -> DeviceConfig:
        return cls.model_validate(json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        data = self.model_dump(mode="json")
        data["mqtt_password"] = self.mqtt_password.get_secret_value()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
