"""A terminal's mobile modem in software, for phone-call broadcast tests and demos.

The test side (`ring`) plays the caller: it rings with a caller id, and once answered
feeds call audio and DTMF keys and hangs up; it can read what the terminal did with the
call (`SimCall.answered`, `.rejected`, `.ended_by`). The agent side is
`edge_agent.hardware.Modem`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from edge_agent.hardware import HardwareFault

_HANG_UP = None  # end of the caller's audio


@dataclass
class SimCall:
    """One call, as the caller sees it."""

    caller: str
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    rejected: bool = False
    ended_by: str | None = None  # "caller" or "terminal"
    _audio: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    _keys: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    def say(self, pcm: bytes) -> None:
        """Call audio from the caller (16 kHz mono 16-bit PCM)."""
        if not self.ended.is_set():
            self._audio.put_nowait(pcm)

    def press(self, keys: str) -> None:
        for key in keys:
            self._keys.put_nowait(key)

    def hang_up(self) -> None:
        if not self.ended.is_set():
            self.ended_by = "caller"
            self.ended.set()
            self._audio.put_nowait(_HANG_UP)


class SimModem:
    def __init__(self) -> None:
        self._ringing: asyncio.Queue[SimCall] = asyncio.Queue()
        self._call: SimCall | None = None
        self.calls: list[SimCall] = []

    # ------------------------------------------------------------ the caller's side

    def ring(self, caller: str) -> SimCall:
        """Fault/test control: a call comes in from `caller`."""
        call = SimCall(caller)
        self.calls.append(call)
        self._ringing.put_nowait(call)
        return call

    # ------------------------------------------------------------ the agent's side

    async def next_ring(self) -> str:
        while True:
            call = await self._ringing.get()
            if not call.ended.is_set():  # a caller who gave up before we looked
                self._call = call
                return call.caller

    def _current(self) -> SimCall:
        if self._call is None:
            raise HardwareFault("no call")
        return self._call

    async def answer(self) -> None:
        call = self._current()
        if call.ended.is_set():
            raise HardwareFault("the caller hung up")
        call.answered.set()

    async def reject(self) -> None:
        call = self._current()
        call.rejected = True
        self._end(call)

    async def hang_up(self) -> None:
        if self._call is not None:
            self._end(self._call)

    async def wait_hang_up(self) -> None:
        await self._current().ended.wait()

    def _end(self, call: SimCall) -> None:
        if not call.ended.is_set():
            call.ended_by = "terminal"
            call.ended.set()
            call._audio.put_nowait(_HANG_UP)
        self._call = None

    async def read_dtmf(self, digits: int, timeout_s: float) -> str:
        call = self._current()
        pressed = ""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(pressed) < digits and not call.ended.is_set():
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                key = await asyncio.wait_for(call._keys.get(), left)
            except TimeoutError:
                break
            if key == "#":
                break
            pressed += key
        return pressed

    async def call_audio(self) -> AsyncIterator[bytes]:
        call = self._current()
        while True:
            pcm = await call._audio.get()
            if pcm is None:
                return
            yield pcm
