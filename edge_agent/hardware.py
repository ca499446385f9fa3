"""The hardware a terminal's agent drives, as an interface.

A real board implements it over GPIO, ALSA and its modem; `firmware_sim` implements it
in software for tests, demos and benchmarks. The agent never knows which it has.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
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

    async def play_stream(
        self, chunks: AsyncIterable[tuple[int, bytes]], *, broadcast_id: str
    ) -> PlayOutcome:
        """Play live audio: each chunk is (instant on the terminal clock, 16 kHz mono
        16-bit PCM), sounding at that instant (at once if it has passed); a gap between
        chunks is silence. Returns when the chunks end. Cancelling stops the sound at
        once; raises HardwareFault as `play` does."""
        ...


class OutputMonitor(Protocol):
    """Proof that sound came out: a current sense on the speaker line (or a loopback
    capture of the amplifier's output), read independently of what the DAC was told."""

    def carrying(self) -> bool:
        """While a play sounds: does the speaker line really carry it now? False when
        the amplifier or the line has failed although the DAC is still playing."""
        ...

    def last_clip(self, max_ms: int) -> bytes | None:
        """The first `max_ms` of what the last play really put on the line, as the
        loopback captured it (16 kHz mono 16-bit PCM; silence where nothing came out),
        or None if nothing has played since power-on."""
        ...


class Modem(Protocol):
    """A mobile modem for phone-call broadcast (电话广播): one call at a time."""

    async def next_ring(self) -> str:
        """Wait for an incoming call; its caller id ("" when withheld)."""
        ...

    async def answer(self) -> None: ...

    async def reject(self) -> None:
        """Refuse the ringing call without answering it (the caller hears busy)."""
        ...

    async def hang_up(self) -> None: ...

    async def wait_hang_up(self) -> None:
        """Return when the caller of the answered call hangs up."""
        ...

    async def read_dtmf(self, digits: int, timeout_s: float) -> str:
        """Keys the caller presses, until `digits` of them, `#`, the caller hanging up
        or `timeout_s`; what was pressed (without `#`)."""
        ...

    def call_audio(self) -> AsyncIterator[bytes]:
        """The answered call's downlink audio, 16 kHz mono 16-bit PCM frames as they
        arrive; ends when the caller hangs up."""
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
    @property
    def output_monitor(self) -> OutputMonitor: ...
    @property
    def modem(self) -> Modem | None: ...  # None: a terminal without phone-call broadcast
