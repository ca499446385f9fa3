"""The terminal's clock offset estimate (edge_agent/clocksync.py) and the simulator's
offset and drift faults."""

from __future__ import annotations

import asyncio
import time

import pytest

from dalaba import protocol as p
from edge_agent.clocksync import (
    ESTIMATE_MAX_AGE_MS,
    MAX_ROUND_TRIP_MS,
    ClockSync,
    ControllerClock,
    TimeSample,
    best_estimate,
    parse_time_answer,
)
from firmware_sim.hardware import SimClock


class ManualClock:
    def __init__(self, now: int) -> None:
        self.now = now

    def now_ms(self) -> int:
        return self.now


def test_the_shortest_round_trip_wins_and_its_midpoint_gives_the_offset() -> None:
    # Terminal 5 s ahead. A slow exchange whose answer waited on the way back would
    # read the offset 40 ms wrong; the fast one reads it within 1 ms.
    slow = TimeSample(sent_ms=105_000, controller_ms=100_010, received_ms=105_100)
    fast = TimeSample(sent_ms=105_200, controller_ms=100_201, received_ms=105_204)
    est = best_estimate([slow, fast])
    assert est is not None
    assert est.round_trip_ms == 4
    assert est.offset_ms == 5_001
    assert slow.offset_ms == 5_040


def test_no_estimate_from_round_trips_too_long_to_bound_the_error() -> None:
    too_slow = TimeSample(0, 10, MAX_ROUND_TRIP_MS + 1)
    backwards = TimeSample(100, 50, 90)  # the terminal's clock stepped back meanwhile
    assert best_estimate([too_slow, backwards]) is None
    assert best_estimate([]) is None


def test_the_controller_clock_converts_both_ways_and_forgets_an_old_estimate() -> None:
    local = ManualClock(1_000_000)
    clock = ControllerClock(local)
    assert clock.now_ms() == 1_000_000 and clock.to_local(5) == 5  # uncorrected
    est = best_estimate([TimeSample(1_000_000, 997_000, 1_000_010)])
    assert est is not None
    clock.update(est)
    assert clock.offset_ms == 3_005
    assert clock.now_ms() == 1_000_000 - 3_005
    assert clock.to_local(clock.now_ms() + 600) == local.now + 600
    local.now += ESTIMATE_MAX_AGE_MS + 11
    assert clock.estimate is None and clock.offset_ms == 0


async def test_clock_sync_estimates_against_a_controller_clock_and_counts_failures() -> None:
    local = SimClock()
    local.offset_ms = -4_200
    controller = SimClock()

    async def ask() -> int:
        await asyncio.sleep(0.002)
        return controller.now_ms()

    sync = ClockSync(ControllerClock(local), ask, samples=4)
    est = await sync.estimate_once()
    assert est is not None and sync.estimated.is_set()
    # The error is bounded by half the round trip (plus 1 ms of clock resolution).
    assert abs(est.offset_ms - (-4_200)) <= est.round_trip_ms // 2 + 1
    assert sync.clock.offset_ms == est.offset_ms

    async def refused() -> int:
        raise ConnectionRefusedError("controller down")

    down = ClockSync(ControllerClock(local), refused, samples=3)
    assert await down.estimate_once() is None
    assert down.failures == 1 and "controller down" in down.last_error
    assert down.clock.estimate is None


def test_time_answer_is_parsed_and_garbage_refused() -> None:
    assert parse_time_answer({"v": 1, "now_ms": 123, "later": "ignored"}) == 123
    for bad in ({"now_ms": -1}, {"now_ms": "soon"}, {}, [1]):
        with pytest.raises(ValueError):
            parse_time_answer(bad)
    assert p.TimeAnswer(now_ms=5).model_dump() == {"v": p.PROTOCOL_VERSION, "now_ms": 5}


def test_sim_clock_drifts_from_its_offset_without_jumping() -> None:
    clock = SimClock()
    clock.offset_ms = 2_000
    before = clock.now_ms() - time.time_ns() // 1_000_000
    clock.drift_ppm = 200_000.0  # absurd, so a short sleep shows it
    time.sleep(0.05)
    drifted = clock.now_ms() - time.time_ns() // 1_000_000
    assert 1_995 <= before <= 2_005
    assert drifted - before >= 5  # 50 ms × 0.2 = 10 ms ahead
    clock.drift_ppm = 0.0  # stops drifting, keeps what it drifted
    kept = clock.now_ms() - time.time_ns() // 1_000_000
    assert kept >= 2_005
