"""What a Linux board knows about itself: temperature and power from sysfs, signal and
operator from ModemManager (`mmcli`), clock offset from chrony (`chronyc tracking`).

Every reading is None when the board has no such thing (no battery, no modem, no
chrony): absent, never zero. sysfs reads are cheap and done when asked; the tools are
run in the background at most every `interval_s`, and the last answer is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
TOOL_TIMEOUT_S = 10.0


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _milli_celsius(text: str | None) -> float | None:
    try:
        return None if text is None else round(int(text) / 1000, 1)
    except ValueError:
        return None


def read_temperature(sys_root: Path, *, hwmon: str | None, zone: str | None) -> float | None:
    """°C from the hwmon chip named `hwmon`, else thermal zone `zone`, else the first
    thermal zone; None when the one named (or any) is not there or unreadable."""
    if hwmon is not None:
        for chip in sorted((sys_root / "sys/class/hwmon").glob("hwmon*")):
            if _read(chip / "name") == hwmon:
                return _milli_celsius(_read(chip / "temp1_input"))
        return None
    zones = sys_root / "sys/class/thermal"
    if zone is not None:
        return _milli_celsius(_read(zones / zone / "temp"))
    for path in sorted(zones.glob("thermal_zone*")):
        return _milli_celsius(_read(path / "temp"))
    return None


@dataclass(frozen=True)
class PowerReading:
    source: Literal["mains", "battery"] | None
    battery_pct: int | None


def read_power(sys_root: Path) -> PowerReading:
    """Power source and battery charge from /sys/class/power_supply. On mains when an
    external supply (Mains, USB) is online; on battery when a battery exists and none
    is; without any external supply listed, the battery's own status decides. A board
    that lists nothing reports both absent."""
    external: list[bool] = []
    batteries: list[Path] = []
    for supply in sorted((sys_root / "sys/class/power_supply").glob("*")):
        kind = _read(supply / "type")
        if kind in ("Mains", "USB", "UPS"):
            external.append(_read(supply / "online") == "1")
        elif kind == "Battery" and _read(supply / "present") != "0":
            batteries.append(supply)
    pct: int | None = None
    if batteries:
        with contextlib.suppress(TypeError, ValueError):
            pct = max(0, min(100, int(_read(batteries[0] / "capacity") or "")))
    source: Literal["mains", "battery"] | None
    if any(external):
        source = "mains"
    elif batteries:
        discharging = _read(batteries[0] / "status") == "Discharging"
        source = "battery" if external or discharging else "mains"
    else:
        source = "mains" if external else None  # a listed but offline supply and no battery
    return PowerReading(source=source, battery_pct=pct)


# ------------------------------------------------------------------ tools, in the background


async def run_tool(*argv: str) -> str | None:
    """A tool's stdout, or None when it is not installed, fails or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError:
        return None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TOOL_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.warning("%s did not answer in %.0f s", argv[0], TOOL_TIMEOUT_S)
        return None
    if proc.returncode != 0:
        log.info("%s: exit %s: %s", " ".join(argv[:3]), proc.returncode, err.decode()[:200])
        return None
    return out.decode(errors="replace")


class Refreshed(Generic[T]):
    """A value fetched by `fetch` in the background at most every `interval_s`; the
    last value is served meanwhile (the default until the first answer)."""

    def __init__(self, fetch: Callable[[], Awaitable[T]], default: T, interval_s: float) -> None:
        self._fetch, self.value, self.interval_s = fetch, default, interval_s
        self._fetched_at = -interval_s
        self._task: asyncio.Task[None] | None = None

    def get(self) -> T:
        stale = time.monotonic() - self._fetched_at >= self.interval_s
        if stale and self._task is None:
            with contextlib.suppress(RuntimeError):  # no running loop: serve what we have
                self._task = asyncio.get_running_loop().create_task(self._refresh())
        return self.value

    async def refresh(self) -> T:
        await self._refresh()
        return self.value

    async def _refresh(self) -> None:
        try:
            self.value = await self._fetch()
        except Exception:  # a tool's odd output must not end the agent
            log.exception("reading failed")
        finally:
            self._fetched_at = time.monotonic()
            self._task = None

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _key_values(text: str) -> dict[str, str]:
    """`mmcli -K` output: "key : value" lines; "--" is ModemManager's "none"."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        value = value.strip()
        if sep and value and value != "--":
            out[key.strip()] = value
    return out


@dataclass(frozen=True)
class ModemReading:
    signal_dbm: int | None = None
    operator: str | None = None


# The access technologies' received power, best first (LTE RSRP is what a 4G technician
# reads; RSSI is what every technology has).
_SIGNAL_KEYS = (
    "modem.signal.5g.rsrp",
    "modem.signal.lte.rsrp",
    "modem.signal.lte.rssi",
    "modem.signal.umts.rssi",
    "modem.signal.gsm.rssi",
    "modem.signal.cdma1x.rssi",
)


async def read_modem() -> ModemReading:
    """Signal and operator of the first modem ModemManager knows; absent without one."""
    status = await run_tool("mmcli", "-m", "any", "-K")
    if status is None:
        return ModemReading()
    operator = _key_values(status).get("modem.3gpp.operator-name")
    signal = await run_tool("mmcli", "-m", "any", "--signal-get", "-K")
    dbm = None
    values = _key_values(signal or "")
    for key in _SIGNAL_KEYS:
        with contextlib.suppress(KeyError, ValueError):
            dbm = round(float(values[key]))
            break
    if dbm is not None and not -200 <= dbm <= 50:
        dbm = None
    return ModemReading(signal_dbm=dbm, operator=operator[:64] if operator else None)


async def setup_modem_signal(rate_s: int) -> None:
    """ModemManager reports dBm only after extended signal polling is switched on."""
    await run_tool("mmcli", "-m", "any", f"--signal-setup={rate_s}")


_SYSTEM_TIME = re.compile(r"^System time\s*:\s*([0-9.]+) seconds (fast|slow) of NTP time", re.M)
_LEAP = re.compile(r"^Leap status\s*:\s*(.+)$", re.M)


def parse_chronyc_tracking(text: str) -> int | None:
    """The system clock's offset from NTP time in ms (positive: this clock is ahead),
    from `chronyc tracking`; None while chrony is not synchronised."""
    leap = _LEAP.search(text)
    if leap is None or leap.group(1).strip() == "Not synchronised":
        return None
    match = _SYSTEM_TIME.search(text)
    if match is None:
        return None
    seconds = float(match.group(1))
    return round(seconds * 1000 * (1 if match.group(2) == "fast" else -1))


async def read_chrony_offset() -> int | None:
    text = await run_tool("chronyc", "-n", "tracking")
    return None if text is None else parse_chronyc_tracking(text)
