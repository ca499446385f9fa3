"""systemd's notify protocol, spoken directly (no dependency): READY=1 once the agent
runs, WATCHDOG=1 while its event loop does, STOPPING=1 on the way out.

Under `Type=notify` with `WatchdogSec=`, systemd sets NOTIFY_SOCKET (a datagram socket,
a path or "@abstract") and WATCHDOG_USEC; without them (a terminal started by hand,
the simulator) every call here does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)


def _address() -> str | None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return None  # unset, or a vsock address this agent does not speak
    return "\0" + address[1:] if address[0] == "@" else address


def notify(state: str) -> bool:
    """Sends one state line; False when there is no one to tell or it failed."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", state.split("\n")[0], exc)
        return False


def watchdog_interval_s() -> float | None:
    """Half the watchdog period systemd asked for (its advice), or None without one.
    WATCHDOG_PID, when set, must be this process or its parent: under systemd the agent
    runs as the child of `dalaba agent-launcher` (edge_agent/launcher.py), which does
    not ping, and the unit's NotifyAccess=all takes the child's pings."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid not in (str(os.getpid()), str(os.getppid()))):
        return None
    try:
        period = int(usec)
    except ValueError:
        return None
    return period / 2 / 1_000_000 if period > 0 else None


async def watchdog_loop(interval_s: float) -> None:
    """Pings from the event loop itself: a loop that hangs stops the pings, and systemd
    restarts the agent."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)
