"""The hardware a terminal's agent drives, as an interface.

A real board implements it over GPIO, ALSA and its modem; `firmware_sim` implements it
in software for tests, demos and benchmarks. The agent never knows which it has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol


class HardwareFault(Exception):
    """The hardware cannot do what was asked; the message is the reason reported."""


@dataclass(frozen=True)
class PreparedAudio:
    """Audio decoded and ready to start without delay."""

    sha256: str
    duration_ms: int
    handle: object  # implementation-specific (PCM buffer, ALSA handle, ...)


@dataclass(frozen=True)
class PlayOutcome:
    played_ms: int
    completed: bool


class Amplifier(Protocol):
    warmup_ms: int  # from power-on until it passes sound without cutting the first word

    @property
    def on(self) -> bool:
        """Powered and warm: it passes sound now (False while still warming up)."""
        ...

    @property
    def ok(self) -> bool: ...

    async def power_on(self) -> None:
        """Power on and return once warm (at once if it already is). Calls made while
        it warms up share that one warm-up. Raises HardwareFault when it does not come
        up, or is switched off or fails before it is warm."""
        ...

    async def power_off(self) -> None: ...


class Speaker(Protocol):
    @property
    def line_ok(self) -> bool: ...
    @property
    def volume(self) -> int: ...
    def set_volume(self, volume: int) -> None: ...
    async def prepare(self, media_path: Path, sha256: str) -> PreparedAudio: ...

    async def play(
        self,
        audio: PreparedAudio,
        *,
        start_at_ms: int,
        broadcast_id: str,
        on_started: Callable[[], None],
        attempt: int = 0,
    ) -> PlayOutcome:
        """Start at `start_at_ms` on the terminal clock (at once if that has passed) and
        return when done; `on_started` is called at the first sample. The amplifier
        must be warm by then (the caller powers it on first). Cancelling the awaiting
        task stops the sound at once. Raises HardwareFault when the speaker line is cut
        or the amplifier is not warm or fails, before or during the play."""
        ...


# A board that has no such sensor (no battery, no modem, no thermometer) says None:
# reported absent, never as zero.
class PowerSupply(Protocol):
    @property
    def source(self) -> Literal["mains", "battery"] | None: ...
    @property
    def battery_pct(self) -> int | None: ...


class Sensors(Protocol):
    @property
    def temperature_c(self) -> float | None: ...
    @property
    def signal_dbm(self) -> int | None: ...
    @property
    def operator(self) -> str | None: ...  # the mobile network's name


class Clock(Protocol):
    def now_ms(self) -> int: ...  # the terminal's wall clock, epoch ms (NTP-synced on a real board)


class NetworkLink(Protocol):
    @property
    def up(self) -> bool: ...
    @property
    def bind_address(self) -> str: ...  # local address to connect from ("" = any)
    async def transfer_delay(self, nbytes: int) -> None: ...  # a slow 4G link's cost


class Hardware(Protocol):
    # Read-only members, so an implementation may hold more specific types.
    @property
    def amplifier(self) -> Amplifier: ...
    @property
    def speaker(self) -> Speaker: ...
    @property
    def power(self) -> PowerSupply: ...
    @property
    def sensors(self) -> Sensors: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def network(self) -> NetworkLink: ...
