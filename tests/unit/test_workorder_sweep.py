"""The work-order sweep against a real database (SQLite, and PostgreSQL where one
answers): fault episodes in, orders opened, cleared and reopened out, with the clock given
(`now`), so every step is decided by the rows alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controller.db import make_engine, table_metadata
from controller.history import FaultEpisode, WorkOrder
from controller.models import AuditEntry
from controller.workorders import CLOSED, FAULT_CLEARED, OPEN, SweepResult, sweep
from tests.support import throwaway_postgres_url

T0 = 1_780_000_000_000
HOUR = 3_600_000
AFTER = HOUR


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    urls = (
        iter([f"sqlite:///{tmp_path / 'wo.db'}"])
        if request.param == "sqlite"
        else throwaway_postgres_url()
    )
    for url in urls:
        eng = make_engine(url)
        table_metadata().create_all(eng)
        try:
            yield eng
        finally:
            eng.dispose()


def run_sweep(engine: Engine, now: int) -> SweepResult:
    with Session(engine, expire_on_commit=False) as session:
        result = sweep(session, AFTER, now)
        session.commit()
        return result


def add_episode(engine: Engine, device: str, fault: str, start: int) -> int:
    with Session(engine) as session:
        ep = FaultEpisode(
            device_id=device,
            village_id="t01-v01",
            township_id="t01",
            fault=fault,
            start_ms=start,
            detail={"reason": fault},
        )
        session.add(ep)
        session.commit()
        assert ep.id is not None
        return ep.id


def end_episode(engine: Engine, episode_id: int, end: int) -> None:
    with Session(engine) as session:
        ep = session.get(FaultEpisode, episode_id)
        assert ep is not None
        ep.end_ms = end
        session.add(ep)
        session.commit()


def orders(engine: Engine) -> list[WorkOrder]:
    with Session(engine) as session:
        return list(session.exec(select(WorkOrder).order_by(col(WorkOrder.id))))


def audit_actions(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return list(session.exec(select(AuditEntry.action).order_by(col(AuditEntry.id))))


def test_a_lasting_fault_opens_an_order_that_its_end_clears(engine: Engine) -> None:
    ep = add_episode(engine, "t01-v01-d1", "speaker_line", T0)

    young = run_sweep(engine, T0 + AFTER - 1)
    assert young.opened == [] and orders(engine) == []
    assert young.next_due_ms == T0 + AFTER  # the loop wakes exactly then

    due = run_sweep(engine, T0 + AFTER)
    [order] = orders(engine)
    assert due.opened == [order.id]
    assert (order.status, order.episode_id, order.opened_ms) == (OPEN, ep, T0 + AFTER)
    assert (order.device_id, order.fault, order.township_id) == (
        "t01-v01-d1",
        "speaker_line",
        "t01",
    )
    assert due.next_due_ms is None

    again = run_sweep(engine, T0 + AFTER + 5)
    assert (again.opened, again.cleared, again.reopened) == ([], [], [])
    assert len(orders(engine)) == 1

    end_episode(engine, ep, T0 + 2 * AFTER)
    cleared = run_sweep(engine, T0 + 3 * AFTER)
    [order] = orders(engine)
    assert cleared.cleared == [order.id]
    # The time the fault ended, not the time the sweep noticed.
    assert (order.status, order.fault_cleared_ms) == (FAULT_CLEARED, T0 + 2 * AFTER)
    assert audit_actions(engine) == ["workorder.open", "workorder.fault_cleared"]


def test_a_fault_that_ends_before_the_threshold_opens_nothing(engine: Engine) -> None:
    ep = add_episode(engine, "t01-v01-d1", "amplifier", T0)
    end_episode(engine, ep, T0 + AFTER // 2)
    result = run_sweep(engine, T0 + 2 * AFTER)
    assert (result.opened, result.next_due_ms) == ([], None)
    assert orders(engine) == []


def test_a_returning_fault_reopens_the_order_at_once_and_says_so(engine: Engine) -> None:
    first = add_episode(engine, "t01-v01-d1", "speaker_line", T0)
    run_sweep(engine, T0 + AFTER)
    end_episode(engine, first, T0 + AFTER + 10)
    run_sweep(engine, T0 + AFTER + 20)

    # Back a minute later: no new threshold wait, the same order.
    second = add_episode(engine, "t01-v01-d1", "speaker_line", T0 + AFTER + 60_000)
    result = run_sweep(engine, T0 + AFTER + 61_000)
    [order] = orders(engine)
    assert result.reopened == [order.id] and result.opened == []
    assert (order.status, order.episode_id, order.fault_cleared_ms) == (OPEN, second, None)
    [note] = order.notes
    assert (note["by"], note["kind"], note["times"]) == ("system", "reopened", 1)

    # Flapping all day adds to that one note instead of burying the technicians' notes.
    end_episode(engine, second, T0 + AFTER + 62_000)
    run_sweep(engine, T0 + AFTER + 63_000)
    add_episode(engine, "t01-v01-d1", "speaker_line", T0 + AFTER + 64_000)
    run_sweep(engine, T0 + AFTER + 65_000)
    [order] = orders(engine)
    assert order.status == OPEN
    [note] = order.notes
    assert note["times"] == 2 and note["at"] == T0 + AFTER + 65_000
    assert audit_actions(engine).count("workorder.reopen") == 2


def test_an_episode_replaced_between_sweeps_moves_the_open_order_on(engine: Engine) -> None:
    first = add_episode(engine, "t01-v01-d1", "clock", T0)
    run_sweep(engine, T0 + AFTER)
    end_episode(engine, first, T0 + AFTER + 1)
    second = add_episode(engine, "t01-v01-d1", "clock", T0 + AFTER + 2)
    result = run_sweep(engine, T0 + AFTER + 3)  # never saw the gap
    [order] = orders(engine)
    assert result.reopened == [order.id] and result.cleared == []
    assert (order.status, order.episode_id) == (OPEN, second)


def test_kinds_and_terminals_get_their_own_orders_and_closed_ones_stay_closed(
    engine: Engine,
) -> None:
    ep = add_episode(engine, "t01-v01-d1", "speaker_line", T0)
    add_episode(engine, "t01-v01-d1", "amplifier", T0)
    add_episode(engine, "t01-v01-d2", "speaker_line", T0 + HOUR // 2)
    result = run_sweep(engine, T0 + AFTER)
    assert len(result.opened) == 2
    assert result.next_due_ms == T0 + HOUR // 2 + AFTER
    assert len(run_sweep(engine, T0 + 2 * AFTER).opened) == 1
    assert {(o.device_id, o.fault) for o in orders(engine)} == {
        ("t01-v01-d1", "speaker_line"),
        ("t01-v01-d1", "amplifier"),
        ("t01-v01-d2", "speaker_line"),
    }

    # A technician closed the speaker-line order; the fault after that is a new job.
    end_episode(engine, ep, T0 + 2 * AFTER)
    run_sweep(engine, T0 + 2 * AFTER + 1)
    with Session(engine) as session:
        order = session.exec(
            select(WorkOrder)
            .where(WorkOrder.device_id == "t01-v01-d1")
            .where(WorkOrder.fault == "speaker_line")
        ).one()
        assert order.status == FAULT_CLEARED
        order.status = CLOSED
        session.add(order)
        session.commit()
        closed_id = order.id
    add_episode(engine, "t01-v01-d1", "speaker_line", T0 + 3 * AFTER)
    assert run_sweep(engine, T0 + 3 * AFTER + 1).reopened == []
    new = run_sweep(engine, T0 + 4 * AFTER)
    assert len(new.opened) == 1 and closed_id not in new.opened
    by_id = {o.id: o for o in orders(engine)}
    assert by_id[closed_id].status == CLOSED
    assert by_id[new.opened[0]].status == OPEN
