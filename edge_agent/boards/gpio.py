"""GPIO lines through the Linux GPIO character device, with libgpiod's Python binding
(`gpiod` v2, the `board` extra). Imported only when the device file names a line, so a
board without a relay or status inputs starts without the binding installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_agent.hardware import HardwareFault

CONSUMER = "dalaba-agent"  # what `gpioinfo` shows as the lines' user


def _gpiod() -> Any:
    try:
        import gpiod
    except ImportError as exc:
        raise HardwareFault(
            "GPIO lines are configured but the gpiod binding is not installed "
            "(pip install 'dalaba[agent,board]')"
        ) from exc
    return gpiod


class GpioOutput:
    """One output line held by this process for its lifetime (the relay)."""

    def __init__(self, chip: Path, line: str | int, *, active_low: bool = False) -> None:
        gpiod = _gpiod()
        from gpiod.line import Direction, Value

        self._active, self._inactive = Value.ACTIVE, Value.INACTIVE
        try:
            with gpiod.Chip(str(chip)) as c:
                self.offset = c.line_offset_from_id(line)
            # Requested inactive: a restarted agent never clicks the relay on by itself.
            self._request = gpiod.request_lines(
                str(chip),
                consumer=CONSUMER,
                config={
                    self.offset: gpiod.LineSettings(
                        direction=Direction.OUTPUT,
                        output_value=Value.INACTIVE,
                        active_low=active_low,
                    )
                },
            )
        except (OSError, ValueError) as exc:
            raise HardwareFault(f"GPIO {chip} line {line!r}: {exc}") from exc

    def set(self, active: bool) -> None:
        try:
            self._request.set_value(self.offset, self._active if active else self._inactive)
        except OSError as exc:
            raise HardwareFault(f"GPIO line {self.offset}: {exc}") from exc

    def get(self) -> bool:
        return bool(self._request.get_value(self.offset) == self._active)

    def close(self) -> None:
        self._request.release()


class GpioInputLine:
    """One input line (a status the board wires to the agent)."""

    def __init__(self, chip: Path, line: str | int, *, active_low: bool = False) -> None:
        gpiod = _gpiod()
        from gpiod.line import Direction, Value

        self._active = Value.ACTIVE
        try:
            with gpiod.Chip(str(chip)) as c:
                self.offset = c.line_offset_from_id(line)
            self._request = gpiod.request_lines(
                str(chip),
                consumer=CONSUMER,
                config={
                    self.offset: gpiod.LineSettings(
                        direction=Direction.INPUT, active_low=active_low
                    )
                },
            )
        except (OSError, ValueError) as exc:
            raise HardwareFault(f"GPIO {chip} line {line!r}: {exc}") from exc

    def active(self) -> bool:
        return bool(self._request.get_value(self.offset) == self._active)

    def close(self) -> None:
        self._request.release()
