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


def _request(chip: Path, line: str | int, output: bool, active_low: bool) -> tuple[Any, int]:
    """Claims one line of `chip` for this process: (the request, the line's offset).
    An output is claimed inactive, so a restarted agent never clicks the relay on."""
    gpiod = _gpiod()
    from gpiod.line import Direction, Value

    settings = gpiod.LineSettings(
        direction=Direction.OUTPUT if output else Direction.INPUT,
        output_value=Value.INACTIVE,
        active_low=active_low,
    )
    try:
        with gpiod.Chip(str(chip)) as c:
            offset = c.line_offset_from_id(line)
        request = gpiod.request_lines(str(chip), consumer=CONSUMER, config={offset: settings})
    except (OSError, ValueError) as exc:
        raise HardwareFault(f"GPIO {chip} line {line!r}: {exc}") from exc
    return request, offset


class GpioInputLine:
    """One input line (a status the board wires to the agent)."""

    def __init__(self, chip: Path, line: str | int, *, active_low: bool = False) -> None:
        self._request, self.offset = _request(chip, line, False, active_low)

    def active(self) -> bool:
        from gpiod.line import Value

        return bool(self._request.get_value(self.offset) == Value.ACTIVE)

    def close(self) -> None:
        self._request.release()


class GpioOutput(GpioInputLine):
    """One output line held by this process for its lifetime (the relay)."""

    def __init__(self, chip: Path, line: str | int, *, active_low: bool = False) -> None:
        self._request, self.offset = _request(chip, line, True, active_low)

    def set(self, active: bool) -> None:
        from gpiod.line import Value

        try:
            self._request.set_value(self.offset, Value.ACTIVE if active else Value.INACTIVE)
        except OSError as exc:
            raise HardwareFault(f"GPIO line {self.offset}: {exc}") from exc
