"""The broker accounts the controller changes while it runs: a terminal's new password
at enrolment, its account removed at revocation (controller/enrolment.py).

Mosquitto's own password and ACL files stay the one record (the same files
`dalaba provision` merges into); after each change the broker is told to reload them
(SIGHUP). On reload Mosquitto checks every connected client against the new files and
disconnects those whose account is gone, so a revoked terminal is dropped at once and
cannot log in again (tests/integration/test_enrolment.py proves it on a real broker).
Chosen over the dynamic-security plugin because every county's broker already runs
from these files and their ACL patterns; the plugin would be a second source of truth.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

from dalaba_ops.broker import DeviceAccount
from dalaba_ops.provisioning import (
    _acl_blocks,
    _write_private,
    merge_broker_files,
    read_password_file,
)


def reload_by_pid_file(pid_file: Path) -> Callable[[], None]:
    """SIGHUP to the broker whose `pid_file` is given (Mosquitto's `pid_file` option,
    /run/mosquitto/mosquitto.pid on Debian); the controller must run as a user allowed
    to signal it (see docs/operations.md)."""

    def reload() -> None:
        os.kill(int(pid_file.read_text().strip()), signal.SIGHUP)

    return reload


class MosquittoFileAccounts:
    """Satisfies `controller.enrolment.BrokerAccounts`."""

    def __init__(self, broker_dir: Path, reload: Callable[[], None]) -> None:
        self._dir = broker_dir
        self._reload = reload
        self._lock = asyncio.Lock()  # one writer of the files at a time

    async def set_password(
        self, device_id: str, village_id: str, township_id: str, password: str
    ) -> None:
        account = DeviceAccount(device_id, village_id, township_id, password)
        async with self._lock:
            await asyncio.to_thread(
                merge_broker_files, self._dir, [account], controller_password=None
            )
            self._reload()

    async def disable(self, device_id: str) -> None:
        async with self._lock:
            await asyncio.to_thread(remove_account, self._dir, device_id)
            self._reload()


def remove_account(broker_dir: Path, username: str) -> bool:
    """Drop `username`'s password line and ACL block; False if it had neither."""
    passwd, acl = broker_dir / "passwd", broker_dir / "acl"
    hashes = read_password_file(passwd)
    found = hashes.pop(username, None) is not None
    _write_private(passwd, "".join(f"{user}:{digest}\n" for user, digest in hashes.items()))
    if acl.exists():
        header, blocks = _acl_blocks(acl.read_text())
        found = blocks.pop(username, None) is not None or found
        text = "\n".join(header) + "\n"
        for lines in blocks.values():
            text += "\n" + "\n".join(lines) + "\n"
        _write_private(acl, text)
    return found
