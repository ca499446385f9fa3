"""Priority arbitration on the terminal: what plays now, what waits, what is dropped."""

from __future__ import annotations

from dalaba.protocol import Priority, priority_rank
from edge_agent.arbiter import Arbiter, Decision, Item

T0 = 1_760_000_000_000
LEAD = 1_500  # amplifier warm-up

EMERGENCY_I = priority_rank(Priority.EMERGENCY, 1)
EMERGENCY_II = priority_rank(Priority.EMERGENCY, 2)
EMERGENCY_III = priority_rank(Priority.EMERGENCY, 3)
PAGING = priority_rank(Priority.PAGING)
NOTICE = priority_rank(Priority.NOTICE)
ROUTINE = priority_rank(Priority.ROUTINE)


def item(
    broadcast_id: str,
    rank: int = NOTICE,
    *,
    start: int = T0,
    expires: int = T0 + 3_600_000,
    replay: bool | None = None,
) -> Item:
    return Item(
        broadcast_id=broadcast_id,
        command_id=f"cmd-{broadcast_id}",
        rank=rank,
        start_at_ms=start,
        expires_at_ms=expires,
        replay_after_preemption=rank != ROUTINE if replay is None else replay,
    )


def ids(items: tuple[Item, ...]) -> list[str]:
    return [i.broadcast_id for i in items]


def test_empty_arbiter_decides_nothing() -> None:
    arb = Arbiter()
    assert arb.decide(T0) == Decision()
    assert arb.current is None
    assert arb.next_wakeup_ms() is None


def test_nothing_is_due_before_start_minus_lead() -> None:
    arb = Arbiter()
    notice = item("n", start=T0 + 10_000)
    arb.offer(notice)

    assert arb.decide(T0 + 10_000 - LEAD - 1, lead_ms=LEAD).play is None
    assert arb.current is None
    assert ids(arb.queued) == ["n"]

    decision = arb.decide(T0 + 10_000 - LEAD, lead_ms=LEAD)
    assert decision.play is notice
    assert decision.preempted is None
    assert arb.current is notice
    assert arb.queued == ()


def test_without_lead_an_item_is_due_at_its_start() -> None:
    arb = Arbiter()
    arb.offer(item("n", start=T0))
    assert arb.decide(T0 - 1).play is None
    assert arb.decide(T0).play is not None


def test_higher_rank_preempts_and_the_interrupted_one_is_requeued() -> None:
    arb = Arbiter()
    notice = item("notice", NOTICE)
    arb.offer(notice)
    assert arb.decide(T0).play is notice

    flood = item("flood", EMERGENCY_II, start=T0 + 5_000)
    arb.offer(flood)
    assert arb.decide(T0 + 1_000).play is None  # not yet due: the notice goes on
    assert arb.current is notice

    decision = arb.decide(T0 + 5_000)
    assert decision.play is flood
    assert decision.preempted is notice
    assert arb.current is flood
    assert arb.queued == (notice,)


def test_preempted_routine_programme_is_dropped_not_requeued() -> None:
    arb = Arbiter()
    programme = item("news", ROUTINE)
    arb.offer(programme)
    arb.decide(T0)

    paging = item("paging", PAGING, start=T0 + 100)
    arb.offer(paging)
    decision = arb.decide(T0 + 100)
    assert decision.play is paging
    assert decision.preempted is programme
    assert arb.queued == ()

    arb.finished(paging)
    assert arb.decide(T0 + 200) == Decision()
    assert arb.current is None


def test_equal_rank_does_not_preempt_and_queues_in_arrival_order() -> None:
    arb = Arbiter()
    first, second, third = item("a"), item("b"), item("c")
    arb.offer(first)
    assert arb.decide(T0).play is first

    arb.offer(second)
    arb.offer(third)
    decision = arb.decide(T0 + 10)
    assert decision.play is None
    assert decision.preempted is None
    assert arb.current is first
    assert ids(arb.queued) == ["b", "c"]

    arb.finished(first)
    assert arb.decide(T0 + 20).play is second
    arb.finished(second)
    assert arb.decide(T0 + 30).play is third


def test_equal_rank_items_offered_together_play_in_arrival_order_not_start_order() -> None:
    arb = Arbiter()
    # Both are due; the one that arrived first plays first even if it starts later.
    arb.offer(item("late-start", start=T0 + 50))
    arb.offer(item("early-start", start=T0))
    played = []
    for now in (T0 + 100, T0 + 200):
        decision = arb.decide(now)
        assert decision.play is not None
        played.append(decision.play.broadcast_id)
        arb.finished(decision.play)
    assert played == ["late-start", "early-start"]


def test_lower_rank_waits_behind_current() -> None:
    arb = Arbiter()
    alarm = item("alarm", EMERGENCY_I)
    arb.offer(alarm)
    arb.decide(T0)
    arb.offer(item("notice", NOTICE))
    decision = arb.decide(T0 + 10)
    assert decision.play is None
    assert arb.current is alarm
    assert ids(arb.queued) == ["notice"]


def test_highest_due_rank_wins_among_queued() -> None:
    arb = Arbiter()
    arb.offer(item("routine", ROUTINE))
    arb.offer(item("notice", NOTICE))
    arb.offer(item("paging", PAGING))
    arb.offer(item("later-emergency", EMERGENCY_I, start=T0 + 60_000))
    decision = arb.decide(T0)
    assert decision.play is not None and decision.play.broadcast_id == "paging"
    assert ids(arb.queued) == ["routine", "notice", "later-emergency"]


def test_expired_items_are_returned_and_dropped() -> None:
    arb = Arbiter()
    stale = item("stale", EMERGENCY_I, start=T0 + 1_000, expires=T0 + 2_000)
    fresh = item("fresh", NOTICE, start=T0 + 1_000)
    arb.offer(stale)
    arb.offer(fresh)

    decision = arb.decide(T0 + 2_000)  # expiry is exclusive: at expires_at it is over
    assert decision.expired == (stale,)
    assert decision.play is fresh
    assert arb.queued == ()

    assert arb.decide(T0 + 3_000).expired == ()  # reported once


def test_expired_items_are_reported_even_when_nothing_plays() -> None:
    arb = Arbiter()
    a = item("a", expires=T0 + 10)
    b = item("b", start=T0 + 5_000, expires=T0 + 20)  # expires before it is ever due
    arb.offer(a)
    arb.offer(b)
    decision = arb.decide(T0 + 20)
    assert decision.play is None
    assert ids(decision.expired) == ["a", "b"]
    assert arb.queued == ()


def test_remove_a_queued_item() -> None:
    arb = Arbiter()
    playing, waiting = item("playing"), item("waiting")
    arb.offer(playing)
    arb.decide(T0)
    arb.offer(waiting)

    assert arb.remove("waiting") is waiting
    assert arb.queued == ()
    assert arb.current is playing
    assert arb.remove("waiting") is None


def test_remove_the_current_item() -> None:
    arb = Arbiter()
    playing = item("playing")
    arb.offer(playing)
    arb.decide(T0)

    assert arb.remove("playing") is playing
    assert arb.current is None
    assert arb.remove("unknown") is None


def test_remove_frees_the_speaker_for_the_next_item() -> None:
    arb = Arbiter()
    first, second = item("first"), item("second")
    arb.offer(first)
    arb.offer(second)
    arb.decide(T0)
    arb.remove("first")
    assert arb.decide(T0 + 1).play is second


def test_finished_only_clears_the_item_that_is_current() -> None:
    arb = Arbiter()
    notice = item("notice")
    arb.offer(notice)
    arb.decide(T0)
    alarm = item("alarm", EMERGENCY_I, start=T0 + 10)
    arb.offer(alarm)
    arb.decide(T0 + 10)

    # The interrupted player finishes late; it must not clear the emergency.
    arb.finished(notice)
    assert arb.current is alarm
    arb.finished(alarm)
    assert arb.current is None


def test_next_wakeup_is_the_earliest_due_or_expiry_time() -> None:
    arb = Arbiter()
    arb.offer(item("a", start=T0 + 10_000, expires=T0 + 60_000))
    assert arb.next_wakeup_ms() == T0 + 10_000
    assert arb.next_wakeup_ms(lead_ms=LEAD) == T0 + 10_000 - LEAD

    arb.offer(item("b", start=T0 + 30_000, expires=T0 + 5_000))  # expires first
    assert arb.next_wakeup_ms(lead_ms=LEAD) == T0 + 5_000

    arb.offer(item("c", start=T0 + 8_000))
    assert arb.next_wakeup_ms(lead_ms=LEAD) == T0 + 5_000
    arb.remove("b")
    assert arb.next_wakeup_ms(lead_ms=LEAD) == T0 + 8_000 - LEAD


def test_next_wakeup_ignores_the_current_item() -> None:
    arb = Arbiter()
    arb.offer(item("a"))
    arb.decide(T0)
    assert arb.next_wakeup_ms() is None


def test_next_wakeup_is_not_in_the_past_while_a_due_item_waits_behind_current() -> None:
    arb = Arbiter()
    arb.offer(item("notice", NOTICE, start=T0))
    arb.decide(T0)
    arb.offer(item("alarm", EMERGENCY_I, start=T0 + 1_000))
    now = T0 + 1_000
    assert arb.decide(now).preempted is not None  # the notice is requeued, already due

    later = now + 5_000
    assert arb.decide(later).play is None
    wake = arb.next_wakeup_ms()
    assert wake is not None
    assert wake > later


def test_preempted_item_plays_again_at_once_after_the_interruption() -> None:
    arb = Arbiter()
    notice = item("notice", NOTICE, start=T0, expires=T0 + 600_000)
    arb.offer(notice)
    arb.decide(T0)
    alarm = item("alarm", EMERGENCY_III, start=T0 + 20_000)
    arb.offer(alarm)
    assert arb.decide(T0 + 20_000).preempted is notice

    arb.finished(alarm)
    # Its start time is long past, so it is due the moment the speaker is free.
    decision = arb.decide(T0 + 80_000, lead_ms=LEAD)
    assert decision.play is notice
    assert decision.preempted is None
    assert arb.current is notice


def test_preempted_item_that_expired_meanwhile_is_dropped_not_replayed() -> None:
    arb = Arbiter()
    notice = item("notice", NOTICE, start=T0, expires=T0 + 30_000)
    arb.offer(notice)
    arb.decide(T0)
    alarm = item("alarm", EMERGENCY_I, start=T0 + 10_000)
    arb.offer(alarm)
    arb.decide(T0 + 10_000)
    arb.finished(alarm)

    decision = arb.decide(T0 + 30_000)
    assert decision.play is None
    assert decision.expired == (notice,)
    assert arb.current is None


def test_requeued_item_keeps_its_place_ahead_of_later_equal_ranks() -> None:
    arb = Arbiter()
    first = item("first", NOTICE)
    arb.offer(first)
    arb.decide(T0)
    alarm = item("alarm", EMERGENCY_I, start=T0 + 10)
    arb.offer(alarm)
    arb.decide(T0 + 10)
    later = item("later", NOTICE, start=T0 + 20)
    arb.offer(later)

    arb.finished(alarm)
    assert arb.decide(T0 + 30).play is first


def test_three_emergency_levels_arriving_during_a_notice() -> None:
    arb = Arbiter()
    notice = item("notice", NOTICE, start=T0)
    arb.offer(notice)
    assert arb.decide(T0, lead_ms=LEAD).play is notice

    level3 = item("level-III", EMERGENCY_III, start=T0 + 10_000)
    arb.offer(level3)
    d = arb.decide(T0 + 10_000 - LEAD, lead_ms=LEAD)
    assert (d.play, d.preempted) == (level3, notice)

    level2 = item("level-II", EMERGENCY_II, start=T0 + 20_000)
    arb.offer(level2)
    d = arb.decide(T0 + 20_000 - LEAD, lead_ms=LEAD)
    assert (d.play, d.preempted) == (level2, level3)

    # A level I while II plays, and a further level III that must wait its turn.
    level1 = item("level-I", EMERGENCY_I, start=T0 + 30_000)
    late3 = item("late-III", EMERGENCY_III, start=T0 + 30_000)
    arb.offer(late3)
    arb.offer(level1)
    d = arb.decide(T0 + 30_000 - LEAD, lead_ms=LEAD)
    assert (d.play, d.preempted) == (level1, level2)
    assert set(ids(arb.queued)) == {"notice", "level-III", "level-II", "late-III"}

    # Each lower level plays again, highest first, equal ranks by first arrival;
    # nothing preempts anything on the way down, and the notice comes last.
    order = []
    now = T0 + 40_000
    current: Item | None = level1
    while current is not None:
        arb.finished(current)
        now += 10_000
        d = arb.decide(now, lead_ms=LEAD)
        assert d.preempted is None
        current = d.play
        if current is not None:
            order.append(current.broadcast_id)
    assert order == ["level-II", "level-III", "late-III", "notice"]
    assert arb.queued == ()
