"""Phone-call broadcast (电话广播): a whitelisted caller speaks live through the terminal.

The terminal's modem rings; the caller id is checked against the terminal's phone book
(numbers for this terminal, its village and its township, delivered by the controller
as a signed `PhoneBookBody` on the terminal's own topic and kept on flash). Others are
refused without answering. A whitelisted caller is answered, keys in the PIN when the
book asks for one, and then waits for the speaker at paging rank: the agent's arbiter
plays the call as it would a live paging session (an emergency interrupts it; it
interrupts notices, which play again afterwards). Every call, answered or not, is
reported as a `call` event with the caller, the outcome and how long it sounded.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from dalaba import protocol as p
from edge_agent.arbiter import Item
from edge_agent.hardware import HardwareFault, Modem

log = logging.getLogger(__name__)

# How long an answered caller may wait for the speaker (behind an emergency) before
# the terminal gives up and hangs up (`busy`; `abandoned` if the caller hangs up first).
CALL_WAIT_S = 30.0
# How long the caller has to key in the PIN.
PIN_TIMEOUT_S = 15.0
# Call audio plays this long after it arrives: a jitter buffer for the mobile network.
CALL_JITTER_MS = 200
# A call's longest turn on the speaker (a phone left off the hook must not hold it).
CALL_MAX_MS = 30 * 60_000


@dataclass
class CallSession:
    """One answered call waiting for, or holding, the speaker (the arbiter item's payload)."""

    caller: str
    audio: Callable[[], AsyncIterator[bytes]]
    started: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Future[tuple[p.CallOutcome, int]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    async def chunks(self, now_ms: Callable[[], int]) -> AsyncIterator[tuple[int, bytes]]:
        """The call audio as the speaker's live chunks: each frame at its arrival plus
        the jitter buffer."""
        async for pcm in self.audio():
            yield now_ms() + CALL_JITTER_MS, pcm

    def finish(self, outcome: p.CallOutcome, played_ms: int) -> None:
        if not self.finished.done():
            self.finished.set_result((outcome, played_ms))


class PhoneLine:
    """Answers the modem. `offer` hands an item to the agent's arbiter, `withdraw`
    takes it back, `report` publishes the call's event detail."""

    def __init__(
        self,
        modem: Modem,
        state_dir: Path,
        *,
        offer: Callable[[Item], None],
        withdraw: Callable[[str], None],
        report: Callable[[dict[str, object]], None],
        now_ms: Callable[[], int],
    ) -> None:
        self._modem = modem
        self._path = state_dir / "phone-book.json"
        self._offer = offer
        self._withdraw = withdraw
        self._report = report
        self._now_ms = now_ms
        self.book: p.PhoneBookBody | None = None
        self._numbers: frozenset[str] = frozenset()

    def load(self) -> None:
        try:
            self._set(p.PhoneBookBody.model_validate_json(self._path.read_bytes()))
        except FileNotFoundError:
            pass
        except (OSError, ValidationError) as exc:  # damaged flash: no book, refuse all
            log.warning("phone book unreadable, every call refused until a new one: %s", exc)

    def apply(self, body: p.PhoneBookBody) -> bool:
        """Keep `body` if newer than the book held; True if kept."""
        if self.book is not None and body.version <= self.book.version:
            return False
        tmp = self._path.with_suffix(".tmp")
        tmp.write_bytes(body.to_bytes())
        os.replace(tmp, self._path)
        self._set(body)
        return True

    def _set(self, body: p.PhoneBookBody) -> None:
        self.book = body
        self._numbers = frozenset(p.normalise_phone(n) for n in body.numbers)

    def allowed(self, caller: str) -> bool:
        return bool(caller) and p.normalise_phone(caller) in self._numbers

    async def run(self) -> None:
        while True:
            caller = await self._modem.next_ring()
            rang_at = self._now_ms()
            try:
                outcome, played_ms = await self._take(caller)
            except HardwareFault as exc:
                log.warning("call from %s: modem: %s", caller, exc)
                outcome, played_ms = p.CallOutcome.FAILED, 0
            self._report(
                {
                    "caller": caller[:32],
                    "outcome": outcome.value,
                    "rang_at": rang_at,
                    "ended_at": self._now_ms(),
                    "played_ms": played_ms,
                    "book_version": self.book.version if self.book else 0,
                }
            )

    async def _take(self, caller: str) -> tuple[p.CallOutcome, int]:
        if not self.allowed(caller):
            await self._modem.reject()
            return p.CallOutcome.REJECTED, 0
        await self._modem.answer()
        book = self.book
        assert book is not None
        if book.pin_sha256 is not None and book.pin_salt is not None:
            keyed = await self._modem.read_dtmf(book.pin_length or 8, PIN_TIMEOUT_S)
            digest = p.phone_pin_digest(book.pin_salt, keyed)
            if not hmac.compare_digest(digest, book.pin_sha256):
                await self._modem.hang_up()
                return p.CallOutcome.WRONG_PIN, 0
        session = CallSession(caller, self._modem.call_audio)
        now = self._now_ms()
        item = Item(
            broadcast_id=f"call-{uuid.uuid4().hex[:16]}",
            command_id="phone",
            rank=p.priority_rank(p.Priority.PAGING),
            start_at_ms=now,
            expires_at_ms=now + CALL_MAX_MS,
            # A live voice interrupted is not played again later: it would be stale.
            replay_after_preemption=False,
            payload=session,
        )
        self._offer(item)
        started = asyncio.ensure_future(session.started.wait())
        gone = asyncio.ensure_future(self._modem.wait_hang_up())
        done, _ = await asyncio.wait(
            {started, gone}, timeout=CALL_WAIT_S, return_when=asyncio.FIRST_COMPLETED
        )
        started.cancel()
        gone.cancel()
        if not session.started.is_set():
            # Still queued: the caller gave up, or the speaker stayed taken too long.
            self._withdraw(item.broadcast_id)
            await self._modem.hang_up()
            return (p.CallOutcome.ABANDONED if gone in done else p.CallOutcome.BUSY), 0
        outcome, played_ms = await session.finished
        await self._modem.hang_up()
        return outcome, played_ms
