"""A terminal's provisioned identity and settings (one JSON file, mode 0600)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urljoin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from dalaba import __version__
from dalaba.mqtt import BrokerAddress
from dalaba.protocol import TIME_PATH, check_id
from edge_agent.boards.settings import Board, SimBoard

# The version a terminal reports (status, telemetry): the running release's, which an
# over-the-air update changes (edge_agent/updater.py).
FIRMWARE_VERSION = f"dalaba-agent/{__version__}"

ClockSource = Literal["system", "controller"]


class DeviceConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: str
    village_id: str
    township_id: str
    # mqtts://host:port (MQTT over TLS, port 8883 by default) or mqtt://host:port on a
    # network nobody else can read; no credentials here (those are below).
    broker_url: str
    mqtt_username: str
    # Empty with certificate identity: the broker takes the account from cert_file.
    mqtt_password: SecretStr = SecretStr("")
    # TLS (mqtts:// only). The CA that signed the broker's certificate, the terminal's
    # pinned trust; unset, the system's trusted CAs. The broker's host name is checked.
    ca_file: Path | None = None
    # This terminal's own certificate (common name = device id) and its key, mode 0600:
    # certificate identity, on a broker that requires client certificates.
    cert_file: Path | None = None
    key_file: Path | None = None
    media_base_url: str  # the controller's /media/ endpoint
    # PEM, each an Ed25519 or SM2 public key or a certificate for one (whatever the
    # county signs with); several while a key is being rotated.
    controller_public_keys: list[str]
    state_dir: Path  # cache, replay memory; survives restarts
    cache_max_bytes: int = 64 * 1024 * 1024
    telemetry_interval_s: float = 60.0
    emergency_volume: int = Field(default=100, ge=0, le=100)
    normal_volume: int = Field(default=70, ge=0, le=100)
    # Stay powered this long after the last play, so back-to-back items do not click.
    amplifier_hold_s: float = 2.0
    # A play's audio is fetched (with backoff, from the URL and its mirrors) until the
    # broadcast's start instant plus this grace, or the moment the command arrived plus
    # this grace if that is later (a terminal back from an outage), never past expiry.
    fetch_grace_s: float = Field(default=20.0, ge=0, le=3600)
    # Reports and events waiting on flash for the broker (see edge_agent/outbox.py).
    outbox_max_entries: int = Field(default=5000, ge=10)
    outbox_max_bytes: int = Field(default=2 * 1024 * 1024, ge=64 * 1024)
    # fsync the outbox and the play journal after every record. Off by default: the
    # simulator's crashes are killed processes, whose writes the kernel keeps, and it
    # runs 10,000 agents per machine. A real board without a hold-up capacitor should
    # turn it on, or a power cut loses up to the filesystem's commit interval.
    fsync_flash_writes: bool = False
    # The hardware: {"kind": "sim"} (the default) or {"kind": "linux", ...} on a real
    # board (edge_agent/boards/settings.py says what can be set).
    board: Board = Field(default_factory=SimBoard, discriminator="kind")
    # Whose clock a broadcast's start instant is read on. "system": the board's own,
    # kept by NTP (chrony). "controller": the agent estimates its offset from the
    # controller (edge_agent/clocksync.py) and corrects every start by it; until it has
    # an estimate it plays on receipt and says so. `time_url` is where it asks
    # (default: /api/time on the host of `media_base_url`).
    clock_source: ClockSource = "system"
    time_url: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_retired_settings(cls, data: Any) -> Any:
        # `fetch_attempts` (a fixed number of fetch tries) gave way to `fetch_grace_s`;
        # device.json files written before still carry it.
        if isinstance(data, dict) and "fetch_attempts" in data:
            data = {k: v for k, v in data.items() if k != "fetch_attempts"}
        return data

    def model_post_init(self, _ctx: object) -> None:
        for value in (self.device_id, self.village_id, self.township_id):
            check_id(value)

    @model_validator(mode="after")
    def _broker_settings_agree(self) -> DeviceConfig:
        self._broker_url()  # a plain URL with TLS files, half a client cert: refused
        return self

    def _broker_url(self) -> BrokerAddress:
        return BrokerAddress.from_url(
            self.broker_url, ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file
        )

    def broker_address(self) -> BrokerAddress:
        """The broker as this terminal reaches it: URL, TLS files and its account. A
        terminal with neither a password nor a certificate is refused here, at start,
        rather than by the broker on every reconnect."""
        password = self.mqtt_password.get_secret_value()
        if not password and self.cert_file is None:
            raise ValueError("mqtt_password: empty, and no cert_file to log in with instead")
        return self._broker_url().with_credentials(self.mqtt_username, password)

    def controller_time_url(self) -> str:
        return self.time_url or urljoin(self.media_base_url, TIME_PATH)

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
