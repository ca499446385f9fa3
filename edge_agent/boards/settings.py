"""What the device file says about the board (`board` in device.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# A GPIO line: its name as the board's device tree labels it ("AMP_EN"), or its offset
# on the chip.
GpioLine = str | int


class SimBoard(BaseModel):
    """Simulated hardware (firmware_sim): demos, tests, benchmarks."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["sim"] = "sim"


class GpioInput(BaseModel):
    """A status input: `line` reads active when the condition named holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    line: GpioLine
    active_low: bool = False


class LinuxBoard(BaseModel):
    """A small Linux board: ALSA audio, a relay on a GPIO line, sysfs sensors, and
    ModemManager and chrony when it has them. Everything but `kind` has a default that
    suits a Raspberry Pi class board with its audio on the default ALSA device."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["linux"]
    # ALSA PCM the announcements go to ("default", "hw:1,0", "plughw:CARD=DAC", or a name
    # defined in asound.conf) and the format it is fed; `plug` converts if needed.
    pcm: str = "default"
    sample_rate: int = Field(default=48_000, ge=8_000, le=192_000)
    channels: Literal[1, 2] = 1
    # The ALSA mixer control the volume is set on (`amixer -c CARD sset CONTROL N%`).
    # Unset: the samples are scaled in software instead (a DAC without a mixer).
    mixer_card: str = "0"
    mixer_control: str | None = None
    # The GPIO chip the lines below are on, and the lines. Unset lines are absent: an
    # amplifier without a relay is always powered, a status nobody wired is not watched.
    gpio_chip: Path = Path("/dev/gpiochip0")
    amplifier_relay: GpioLine | None = None
    amplifier_relay_active_low: bool = False
    amplifier_warmup_ms: int = Field(default=300, ge=0, le=10_000)
    amplifier_fault: GpioInput | None = None  # active: the amplifier reports a fault
    speaker_line_ok: GpioInput | None = None  # active: a load is on the speaker line
    # Temperature: a hwmon chip by its `name` (e.g. "lm75", "cpu_thermal"), else a
    # thermal zone ("thermal_zone0"); neither: the first thermal zone, if any.
    hwmon_sensor: str | None = None
    thermal_zone: str | None = None
    # Where /sys is mounted: "/" on a board, a built tree in tests.
    sysfs_root: Path = Path("/")
    # How often ModemManager and chrony are asked (each answer is cached that long).
    slow_sensor_interval_s: float = Field(default=30.0, ge=1.0, le=3600.0)

    @field_validator("pcm", "mixer_card", "mixer_control")
    @classmethod
    def _no_option_injection(cls, value: str | None) -> str | None:
        # Passed to aplay/amixer as an argument: a leading "-" would be read as an option.
        if value is not None and (not value or value.startswith("-") or "\n" in value):
            raise ValueError("must not be empty, start with '-' or hold a newline")
        return value


Board = SimBoard | LinuxBoard
