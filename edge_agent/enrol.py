"""A board enrols itself: it presents its one-time code to the controller once, over
HTTPS, and keeps what it gets back, readable by nobody else.

    STATE_DIR/               mode 0700
    STATE_DIR/device.json    mode 0600: identity, broker password, trusted keys
    STATE_DIR/broker-ca.pem  mode 0600: the broker's CA, when the county runs its own
    STATE_DIR/state/         the agent's flash (cache, journals)

Plain http:// is refused (the answer holds the broker password) unless `insecure_http`
is given, for tests on one machine.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from pydantic import SecretStr

from edge_agent.config import DeviceConfig

ENROL_PATH = "/api/enrol"


class EnrolRefused(Exception):
    """The controller said no, or could not be asked safely; the message says why."""


async def enrol(
    controller_url: str,
    code: str,
    state_dir: Path,
    *,
    insecure_http: bool = False,
    controller_ca: Path | None = None,
) -> Path:
    """Enrol with `code`; returns the device file written."""
    scheme = urlsplit(controller_url).scheme
    if scheme != "https" and not (scheme == "http" and insecure_http):
        raise EnrolRefused(
            f"--controller {controller_url}: must be https:// (the answer is a secret)"
        )
    ssl_context: ssl.SSLContext | bool = True
    if controller_ca is not None:
        ssl_context = ssl.create_default_context(cafile=str(controller_ca))
    url = controller_url.rstrip("/") + ENROL_PATH
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(url, json={"code": code}, ssl=ssl_context) as resp,
    ):
        body: Any = await resp.json(content_type=None)
        if resp.status != 200:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise EnrolRefused(
                f"controller answered {resp.status}: {error.get('message', 'no reason given')}"
            )
    return write_enrolment(body, state_dir)


def write_enrolment(answer: dict[str, Any], state_dir: Path) -> Path:
    state_dir = state_dir.resolve()
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)  # an existing folder too
    ca_file: Path | None = None
    if answer.get("broker_ca_pem"):
        ca_file = state_dir / "broker-ca.pem"
        _write_private(ca_file, answer["broker_ca_pem"])
    config = DeviceConfig(
        device_id=answer["device_id"],
        village_id=answer["village_id"],
        township_id=answer["township_id"],
        broker_url=answer["broker_url"],
        mqtt_username=answer["mqtt_username"],
        mqtt_password=SecretStr(answer["mqtt_password"]),
        ca_file=ca_file,
        media_base_url=answer["media_base_url"],
        controller_public_keys=answer["controller_public_keys"],
        state_dir=state_dir / "state",
        fsync_flash_writes=True,  # a real board
        clock_source="controller",
    )
    path = state_dir / "device.json"
    config.save(path)  # mode 0600, atomically
    return path


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
