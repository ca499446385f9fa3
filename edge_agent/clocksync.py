"""The terminal's estimate of its clock's offset from the controller's, NTP-style.

A broadcast's `start_at` is an instant on the controller's clock. A board whose NTP is
broken (no route to a pool behind a 4G operator's NAT, an RTC battery gone flat) can be
seconds off, and terminals that are seconds apart echo. So the agent measures its offset
from the controller itself: it asks the controller's time over HTTP (`GET /api/time`),
several times, and keeps the exchange with the shortest round trip (its answer is the
least delayed, so the best bound: the error is at most half that round trip). It does so
again every `CLOCK_RESYNC_S`, which also follows a drifting crystal.

`ControllerClock` is the agent's view of time: the terminal's clock corrected by the
estimate. Everything the agent compares with a signed instant (start, expiry) uses it,
and only the speaker, which counts on the terminal's own clock, is handed the instant
converted back (`to_local`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from dalaba import protocol as p
from edge_agent.hardware import Clock

log = logging.getLogger(__name__)

# Terminals that cover one place start within this of each other when each has the
# audio in time: the design's sync target (an echo between two loudspeakers is heard as
# one voice below a few tens of ms, and is plainly an echo above ~100 ms).
SYNC_TARGET_MS = 100
# One exchange: samples taken, spaced so a burst of load does not spoil all of them.
SAMPLES_PER_ESTIMATE = 8
SAMPLE_SPACING_S = 0.05
# An exchange slower than this is not used: its error bound is half of it. A 4G link's
# round trip is 50-300 ms, and the error is in practice the link's asymmetry, far less
# than the bound; a bound of 500 ms still beats a board seconds off by far.
MAX_ROUND_TRIP_MS = 1_000
# Re-estimate this often; a crystal 50 ppm off drifts 15 ms in 5 minutes.
CLOCK_RESYNC_S = 300.0
# After a failed estimate, try again sooner.
CLOCK_RETRY_S = 15.0
# An estimate older than this is forgotten: drift makes it worthless.
ESTIMATE_MAX_AGE_MS = 6 * 3600 * 1000


@dataclass(frozen=True)
class TimeSample:
    """One request/answer: sent and received on the terminal's clock, the controller's
    time when it answered."""

    sent_ms: int
    controller_ms: int
    received_ms: int

    @property
    def round_trip_ms(self) -> int:
        return self.received_ms - self.sent_ms

    @property
    def offset_ms(self) -> int:
        """Terminal clock minus the controller's, assuming the answer was taken half way."""
        return round((self.sent_ms + self.received_ms) / 2 - self.controller_ms)


@dataclass(frozen=True)
class OffsetEstimate:
    offset_ms: int  # terminal clock minus the controller's
    round_trip_ms: int  # of the sample it came from; the error is at most half of it
    at_ms: int  # terminal clock when it was made


def best_estimate(samples: Sequence[TimeSample]) -> OffsetEstimate | None:
    """The sample with the shortest round trip, if any is short enough to trust."""
    usable = [s for s in samples if 0 <= s.round_trip_ms <= MAX_ROUND_TRIP_MS]
    if not usable:
        return None
    best = min(usable, key=lambda s: s.round_trip_ms)
    return OffsetEstimate(best.offset_ms, best.round_trip_ms, best.received_ms)


class ControllerClock:
    """The terminal's clock corrected by the latest estimate (uncorrected without one).
    Satisfies `edge_agent.hardware.Clock`."""

    def __init__(self, local: Clock) -> None:
        self.local = local
        self._estimate: OffsetEstimate | None = None

    def now_ms(self) -> int:
        return self.local.now_ms() - self.offset_ms

    def to_local(self, controller_ms: int) -> int:
        """An instant on the controller's clock, on the terminal's."""
        return controller_ms + self.offset_ms

    @property
    def estimate(self) -> OffsetEstimate | None:
        est = self._estimate
        if est is not None and self.local.now_ms() - est.at_ms > ESTIMATE_MAX_AGE_MS:
            self._estimate = est = None
        return est

    @property
    def offset_ms(self) -> int:
        est = self.estimate
        return est.offset_ms if est is not None else 0

    def update(self, estimate: OffsetEstimate) -> None:
        self._estimate = estimate


# Asks the controller its time once; returns its epoch ms. Raises on any failure.
AskTime = Callable[[], Awaitable[int]]


class ClockSync:
    """Keeps a `ControllerClock` estimated: at start, then every `resync_s`."""

    def __init__(
        self,
        clock: ControllerClock,
        ask: AskTime,
        *,
        samples: int = SAMPLES_PER_ESTIMATE,
        resync_s: float = CLOCK_RESYNC_S,
        retry_s: float = CLOCK_RETRY_S,
    ) -> None:
        self.clock = clock
        self._ask = ask
        self._samples = samples
        self._resync_s = resync_s
        self._retry_s = retry_s
        self.failures = 0  # consecutive estimates that failed
        self.last_error = ""
        self.estimated = asyncio.Event()  # set once the first estimate is in

    async def estimate_once(self) -> OffsetEstimate | None:
        samples: list[TimeSample] = []
        local = self.clock.local
        for i in range(self._samples):
            if i:
                await asyncio.sleep(SAMPLE_SPACING_S)
            sent = local.now_ms()
            try:
                controller_ms = await self._ask()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                continue
            samples.append(TimeSample(sent, controller_ms, local.now_ms()))
        estimate = best_estimate(samples)
        if estimate is None:
            self.failures += 1
            if samples:
                shortest = min(s.round_trip_ms for s in samples)
                self.last_error = f"no round trip under {MAX_ROUND_TRIP_MS} ms (best {shortest})"
            return None
        self.failures = 0
        self.clock.update(estimate)
        self.estimated.set()
        return estimate

    async def run(self) -> None:
        while True:
            estimate = await self.estimate_once()
            if estimate is None:
                log.warning("clock offset not estimated: %s", self.last_error)
            await asyncio.sleep(self._resync_s if estimate is not None else self._retry_s)


def parse_time_answer(body: object) -> int:
    """The controller's answer to `GET /api/time` (see `dalaba.protocol.TimeAnswer`)."""
    return p.TimeAnswer.model_validate(body).now_ms
