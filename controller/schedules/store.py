"""Schedules in the database: planned occurrences become occurrence, broadcast and
delivery rows; outcomes are recorded here. Every function takes a Session and runs in
`Database.run`, so each is one transaction.

An occurrence that will play on some terminal has a `Broadcast` row (id = occurrence
id, status "scheduled") with one `Delivery` per terminal in state "scheduled" from the
moment it is planned, before any terminal is told of it: a terminal's report on it
(from its local schedule, perhaps while the controller is down) always finds its row.
Rows are never deleted; a withdrawn occurrence is "cancelled" with the reason, and a
terminal that plays it anyway (it was offline when told) still has its report recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from controller import deliveries as dm
from controller.media import media_ref, mirror_urls
from controller.models import Broadcast, Delivery, Device, Media, Township, Village
from controller.schedules.models import Occurrence, Schedule, SchedulerHeartbeat, TerminalSchedule
from controller.schedules.plan import (
    PlannedOccurrence,
    ScheduleSpec,
    Topology,
    local_label,
    narrow_target,
    parse_quiet,
    plan,
)
from controller.schedules.rules import recurrence_from_dict
from dalaba import protocol as p

SCHEDULED = "scheduled"
FIRED = "fired"
SUPPRESSED = "suppressed"
MISSED = "missed"
PLAYED_OFFLINE = "played_offline"
CANCELLED = "cancelled"
OUTCOMES = (SCHEDULED, FIRED, SUPPRESSED, MISSED, PLAYED_OFFLINE, CANCELLED)
# Outcomes that are history: nothing re-plans them.
SETTLED = frozenset({FIRED, MISSED, PLAYED_OFFLINE})

HEARTBEAT_ID = "scheduler"
# A controller down for longer gets its downtime recorded for this much (a week of
# "missed" rows for every schedule is plenty to see what went unplayed).
MAX_DOWNTIME_MS = 7 * 24 * 3600_000

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- loading


def load_topology(session: Session) -> Topology:
    devices = session.exec(select(Device.id, Device.village_id, Device.township_id)).all()
    villages = session.exec(select(Village.id, Village.township_id)).all()
    townships = session.exec(select(Township).order_by(col(Township.id))).all()
    quiet = {}
    for t in townships:
        q = parse_quiet(t.quiet_start, t.quiet_end)
        if q is not None:
            quiet[t.id] = q
    return Topology(
        device_village={d: v for d, v, _ in devices},
        device_township={d: t for d, _, t in devices},
        village_township=dict(villages),
        townships=tuple(t.id for t in townships),
        quiet=quiet,
    )


def spec_of(s: Schedule) -> ScheduleSpec:
    return ScheduleSpec(
        id=s.id,
        rule=recurrence_from_dict(s.recurrence),
        priority=s.priority,
        target=p.Target.model_validate(s.target),
        expires_in_s=s.expires_in_s,
        version=s.version,
    )


# ------------------------------------------------------------------------ reconcile


@dataclass
class Changes:
    """What a reconcile did, for the runner: jobs to (re)schedule or drop, and the
    terminals whose local schedule must be pushed again."""

    jobs: list[tuple[str, int, int]] = field(default_factory=list)  # (id, due_ms, grace_s)
    unjobs: list[str] = field(default_factory=list)
    devices: set[str] = field(default_factory=set)
    inserted: int = 0
    updated: int = 0
    cancelled: int = 0

    def merge(self, other: Changes) -> None:
        self.jobs += other.jobs
        self.unjobs += other.unjobs
        self.devices |= other.devices
        self.inserted += other.inserted
        self.updated += other.updated
        self.cancelled += other.cancelled


def _transition(d: Delivery, state: str, reason: str | None, now: int) -> None:
    """The schedule's own moves (planned, withdrawn, planned again), through the one
    delivery state machine; a delivery that has moved on is left as it is."""
    dm.apply(d, p.DeliveryState(state), dm.Cause.SCHEDULE, now=now, reason=reason)


def _broadcast_fields(s: Schedule, po: PlannedOccurrence, topology: Topology) -> dict[str, Any]:
    quiet = (t for t, _ in po.suppressed)
    target = narrow_target(p.Target.model_validate(s.target), quiet, topology)
    return {
        "title": s.title or s.name,
        "text": s.text,
        "media_sha256": s.media_sha256,
        "category": s.category,
        "priority": s.priority,
        "level": s.level,
        "drill": s.drill,
        "targets": s.targets,
        "target": target.model_dump(mode="json"),
        "start_at_ms": po.due_ms,
        "expires_at_ms": po.expires_at_ms,
        "voices": s.voices,
        "device_count": len(po.device_ids),
    }


def _suppressed_reason(po: PlannedOccurrence) -> str | None:
    if po.outcome == SUPPRESSED:
        return "; ".join(r for _, r in po.suppressed)
    return None


class _Inserter:
    """Collects new rows and writes them in bulk: a first start with a thousand
    schedules plans tens of thousands of deliveries."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.broadcasts: list[dict[str, Any]] = []
        self.deliveries: dict[str, list[str]] = {}  # broadcast id -> its terminals
        self.occurrences: list[Occurrence] = []

    def add(
        self,
        s: Schedule,
        po: PlannedOccurrence,
        topology: Topology,
        *,
        outcome: str | None = None,
        reason: str | None = None,
    ) -> None:
        now = self.now
        outcome = outcome or po.outcome
        has_broadcast = bool(po.device_ids) and outcome == SCHEDULED
        self.occurrences.append(
            Occurrence(
                id=po.id,
                schedule_id=po.schedule_id,
                due_ms=po.due_ms,
                expires_at_ms=po.expires_at_ms,
                outcome=outcome,
                reason=reason or _suppressed_reason(po),
                schedule_version=po.schedule_version,
                devices_digest=po.devices_digest,
                device_count=len(po.device_ids),
                suppressed=dict(po.suppressed),
                broadcast_id=po.id if has_broadcast else None,
                created_ms=now,
                updated_ms=now,
            )
        )
        if not has_broadcast:
            return
        self.broadcasts.append(
            {
                "id": po.id,
                "created_ms": now,
                "created_by": s.created_by,
                **_broadcast_fields(s, po, topology),
                "status": SCHEDULED,
                "dispatch": "pending",
                "command_id": "",
                "cancelled_ms": None,
                "cancelled_by": None,
                # A bulk insert skips the model's defaults: write them out.
                "attempt": 0,
                "resends": [],
            }
        )
        self.deliveries[po.id] = list(po.device_ids)

    def write(self, session: Session) -> None:
        if self.broadcasts:
            session.execute(insert(Broadcast), self.broadcasts)
        dm.insert_many(
            session,
            (
                (broadcast_id, d, p.DeliveryState.SCHEDULED)
                for broadcast_id, device_ids in self.deliveries.items()
                for d in device_ids
            ),
            self.now,
        )
        session.add_all(self.occurrences)


def reconcile(
    session: Session,
    schedules: Sequence[Schedule],
    topology: Topology,
    *,
    start_ms: int,
    end_ms: int,
    guard_ms: int,
    now: int,
    timezone: str,
) -> Changes:
    """Make the recorded occurrences of `schedules` in [start_ms, end_ms) match their
    rules, targets, content and the quiet hours now.

    Occurrences already fired, missed or played are history and never touched; so are
    those due within `guard_ms` (about to fire, or being claimed by terminals). New
    ones are recorded; changed ones updated in place (same id); ones the schedule no
    longer has (paused, deleted, rule edited) cancelled with the reason.
    """
    changes = Changes()
    by_id = {s.id: s for s in schedules}
    active = [spec_of(s) for s in schedules if s.status == "active"]
    planned = plan(active, topology, start_ms, end_ms, timezone)
    existing = {
        (o.schedule_id, o.due_ms): o
        for o in session.exec(
            select(Occurrence)
            .where(col(Occurrence.schedule_id).in_(list(by_id)))
            .where(col(Occurrence.due_ms) >= start_ms)
            .where(col(Occurrence.due_ms) < end_ms)
        )
    }
    inserter = _Inserter(now)
    for po in planned:
        s = by_id[po.schedule_id]
        row = existing.pop((po.schedule_id, po.due_ms), None)
        if row is None:
            inserter.add(s, po, topology)
            changes.inserted += 1
            if po.outcome == SCHEDULED:
                changes.jobs.append((po.id, po.due_ms, s.misfire_grace_s))
                changes.devices.update(po.device_ids)
            continue
        if row.outcome in SETTLED or row.due_ms < now + guard_ms:
            continue
        _update(session, row, s, po, topology, now, changes)
    for row in existing.values():
        if row.outcome in SETTLED or row.outcome == CANCELLED or row.due_ms < now + guard_ms:
            continue
        s = by_id[row.schedule_id]
        if s.status == "active":
            reason = f"no longer in the schedule after the edit by {s.updated_by} (v{s.version})"
        else:
            reason = f"schedule {s.status} by {s.updated_by}"
        _cancel(session, row, reason, s.updated_by, now, changes)
    inserter.write(session)
    return changes


def _deliveries(session: Session, broadcast_id: str, *, lock: bool = False) -> list[Delivery]:
    """A broadcast's deliveries; `lock` for a caller that moves them (dm.for_update:
    on PostgreSQL a report or the sweep may be moving them at the same time)."""
    query = select(Delivery).where(Delivery.broadcast_id == broadcast_id)
    return list(session.exec(dm.for_update(session, query) if lock else query))


def _update(
    session: Session,
    row: Occurrence,
    s: Schedule,
    po: PlannedOccurrence,
    topology: Topology,
    now: int,
    changes: Changes,
) -> None:
    same = (
        row.outcome == po.outcome
        and row.schedule_version == po.schedule_version
        and row.devices_digest == po.devices_digest
        and row.suppressed == dict(po.suppressed)
        and row.expires_at_ms == po.expires_at_ms
    )
    if same:
        if row.outcome == SCHEDULED:
            changes.jobs.append((row.id, row.due_ms, s.misfire_grace_s))
        return
    changes.updated += 1
    row.outcome = po.outcome
    row.reason = _suppressed_reason(po)
    row.schedule_version = po.schedule_version
    row.devices_digest = po.devices_digest
    row.device_count = len(po.device_ids)
    row.suppressed = dict(po.suppressed)
    row.expires_at_ms = po.expires_at_ms
    row.updated_ms = now
    broadcast = session.get(Broadcast, row.broadcast_id) if row.broadcast_id else None
    deliveries = _deliveries(session, row.id, lock=True) if broadcast is not None else []
    changes.devices.update(d.device_id for d in deliveries if d.state != CANCELLED)
    wanted = set(po.device_ids)
    if not wanted:
        changes.unjobs.append(row.id)
        if broadcast is not None:
            broadcast.status = CANCELLED
            broadcast.cancelled_ms = now
            broadcast.cancelled_by = "quiet hours"
            for d in deliveries:
                if d.state != CANCELLED:
                    _transition(d, CANCELLED, row.reason, now)
        return
    changes.jobs.append((row.id, row.due_ms, s.misfire_grace_s))
    changes.devices |= wanted
    fields = _broadcast_fields(s, po, topology)
    if broadcast is None:
        broadcast = Broadcast(
            id=row.id,
            created_ms=now,
            created_by=s.created_by,
            status=SCHEDULED,
            **fields,
        )
        session.add(broadcast)
        session.flush()
        row.broadcast_id = row.id
    else:
        for key, value in fields.items():
            setattr(broadcast, key, value)
        broadcast.status = SCHEDULED
        broadcast.cancelled_ms = None
        broadcast.cancelled_by = None
    have = {d.device_id: d for d in deliveries}
    for d in deliveries:
        if d.device_id not in wanted and d.state != CANCELLED:
            reason = (
                "quiet hours"
                if dict(po.suppressed).get(topology.device_township.get(d.device_id, ""))
                else "no longer targeted by the schedule"
            )
            _transition(d, CANCELLED, reason, now)
        elif d.device_id in wanted and d.state == CANCELLED:
            _transition(d, SCHEDULED, None, now)
    for device_id in sorted(wanted - have.keys()):
        session.add(
            dm.new_delivery(row.id, device_id, p.DeliveryState.SCHEDULED, now, session=session)
        )


def _cancel(
    session: Session, row: Occurrence, reason: str, actor: str, now: int, changes: Changes
) -> None:
    changes.cancelled += 1
    changes.unjobs.append(row.id)
    row.outcome = CANCELLED
    row.reason = reason
    row.updated_ms = now
    if row.broadcast_id is None:
        return
    broadcast = session.get(Broadcast, row.broadcast_id)
    if broadcast is not None:
        broadcast.status = CANCELLED
        broadcast.cancelled_ms = now
        broadcast.cancelled_by = actor
    for d in _deliveries(session, row.broadcast_id, lock=True):
        if d.state != CANCELLED:
            changes.devices.add(d.device_id)
            _transition(d, CANCELLED, reason, now)


# ------------------------------------------------------------------------- recovery


def record_downtime(
    session: Session,
    schedules: Sequence[Schedule],
    topology: Topology,
    *,
    down_since_ms: int,
    now: int,
    timezone: str,
) -> Changes:
    """Account for every due time since the runner was last known running that has no
    row (it was never planned ahead, e.g. the controller was down longer than the
    horizon): within its grace it is recorded to fire now; past it, recorded missed."""
    changes = Changes()
    inserter = _Inserter(now)
    if now - down_since_ms > MAX_DOWNTIME_MS:
        log.warning(
            "the controller was down since %s; due times before %s are not recorded",
            local_label(down_since_ms, timezone),
            local_label(now - MAX_DOWNTIME_MS, timezone),
        )
    for s in schedules:
        if s.status != "active":
            continue
        since = max(down_since_ms, s.created_ms, now - MAX_DOWNTIME_MS)
        if since >= now:
            continue
        planned = plan([spec_of(s)], topology, since, now, timezone)
        if not planned:
            continue
        have = set(
            session.exec(
                select(Occurrence.due_ms)
                .where(Occurrence.schedule_id == s.id)
                .where(col(Occurrence.due_ms) >= since)
                .where(col(Occurrence.due_ms) < now)
            ).all()
        )
        for po in planned:
            if po.due_ms in have:
                continue
            changes.inserted += 1
            if po.outcome != SCHEDULED:
                inserter.add(s, po, topology)
            elif now - po.due_ms <= s.misfire_grace_s * 1000:
                inserter.add(s, po, topology)
                changes.jobs.append((po.id, po.due_ms, s.misfire_grace_s))
                changes.devices.update(po.device_ids)
            else:
                reason = downtime_reason(
                    po.due_ms, s.misfire_grace_s, down_since_ms, now, timezone, planned=False
                )
                inserter.add(s, po, topology, outcome=MISSED, reason=reason)
    inserter.write(session)
    return changes


def downtime_reason(
    due_ms: int,
    grace_s: int,
    down_since_ms: int,
    back_ms: int,
    timezone: str,
    *,
    planned: bool = True,
) -> str:
    reason = (
        f"the controller was not running at {local_label(due_ms, timezone)} "
        f"(down from {local_label(down_since_ms, timezone)} to "
        f"{local_label(back_ms, timezone)}) and the grace of {grace_s} s had passed"
    )
    if not planned:
        reason += "; no terminal had it in its local schedule"
    return reason


def scheduled_rows(session: Session) -> list[tuple[str, int, int]]:
    """Every occurrence still waiting to fire, with its schedule's grace."""
    rows = session.exec(
        select(Occurrence.id, Occurrence.due_ms, Schedule.misfire_grace_s)
        .where(Occurrence.schedule_id == Schedule.id)
        .where(Occurrence.outcome == SCHEDULED)
    ).all()
    return [(i, due, grace) for i, due, grace in rows]


def claim_for_fire(session: Session, occurrence_id: str) -> bool:
    """Lock an occurrence still waiting to fire, for the rest of `session`'s transaction;
    False when it is not waiting or another controller replica holds it (it is being
    fired there). What the firing records commits with the lock, so an occurrence fires
    once; a replica that dies mid-fire leaves it waiting for the next leader. SQLite has
    no row locks, and needs none: one controller process per database."""
    row = session.exec(
        select(Occurrence.id)
        .where(Occurrence.id == occurrence_id)
        .where(Occurrence.outcome == SCHEDULED)
        .with_for_update(skip_locked=True)
    ).first()
    return row is not None


def read_heartbeat(session: Session) -> SchedulerHeartbeat | None:
    return session.get(SchedulerHeartbeat, HEARTBEAT_ID)


def write_heartbeat(session: Session, now: int, *, started: bool = False) -> None:
    row = session.get(SchedulerHeartbeat, HEARTBEAT_ID)
    if row is None:
        session.add(SchedulerHeartbeat(id=HEARTBEAT_ID, started_ms=now, heartbeat_ms=now))
        return
    row.heartbeat_ms = now
    if started:
        row.started_ms = now


# --------------------------------------------------------------------------- firing


@dataclass(frozen=True)
class FirePlan:
    occurrence_id: str
    schedule_id: str
    due_ms: int
    expires_at_ms: int
    grace_s: int
    body: p.PlayBody  # start_at = due; the runner moves it when late
    target: p.Target
    cancelled_by: str | None = None  # its broadcast was cancelled: do not fire


def load_fire_plan(
    session: Session, occurrence_id: str, mirrors: tuple[str, ...] = ()
) -> FirePlan | None:
    """The play command of an occurrence still waiting to fire; None when there is
    nothing to fire (already fired, suppressed, gone). Reads only, so the runner can
    read beside the write queue and a long write never delays a fire."""
    occ = session.get(Occurrence, occurrence_id)
    if occ is None or occ.outcome != SCHEDULED or occ.broadcast_id is None:
        return None
    b = session.get(Broadcast, occ.broadcast_id)
    schedule = session.get(Schedule, occ.schedule_id)
    media = session.get(Media, b.media_sha256) if b is not None else None
    if b is None or schedule is None or media is None:
        return None
    emergency = b.priority == p.Priority.EMERGENCY.value
    body = p.PlayBody(
        broadcast_id=b.id,
        priority=p.Priority(b.priority),
        level=b.level if emergency else None,
        category=b.category,
        drill=b.drill,
        title=b.title,
        media=media_ref(media, mirrors),
        start_at=occ.due_ms,
        volume=100 if emergency else None,
    )
    return FirePlan(
        occurrence_id=occ.id,
        schedule_id=occ.schedule_id,
        due_ms=occ.due_ms,
        expires_at_ms=b.expires_at_ms,
        grace_s=schedule.misfire_grace_s,
        body=body,
        target=p.Target.model_validate(b.target),
        cancelled_by=(b.cancelled_by or "?") if b.status == CANCELLED else None,
    )


def record_cancelled(session: Session, occurrence_id: str, reason: str) -> None:
    occ = session.get(Occurrence, occurrence_id)
    if occ is not None and occ.outcome == SCHEDULED:
        occ.outcome = CANCELLED
        occ.reason = reason
        occ.updated_ms = p.now_ms()


def withdraw(session: Session, occurrence_id: str, reason: str) -> list[str]:
    """Its broadcast was cancelled (e.g. by a duty officer, before it fired): record it,
    end the deliveries still waiting to be fired, and return every terminal that holds
    it, whose local schedule must lose it."""
    record_cancelled(session, occurrence_id, reason)
    now = p.now_ms()
    devices = []
    for d in _deliveries(session, occurrence_id, lock=True):
        devices.append(d.device_id)
        if d.state == SCHEDULED:
            _transition(d, CANCELLED, reason, now)
    return devices


def record_fired(
    session: Session,
    occurrence_id: str,
    *,
    fired_ms: int,
    start_at_ms: int,
    command_id: str,
    published: bool,
    note: str | None,
) -> None:
    occ = session.get(Occurrence, occurrence_id)
    if occ is None:
        return
    occ.outcome = FIRED
    occ.fired_ms = fired_ms
    occ.start_at_ms = start_at_ms
    occ.dispatch = "published" if published else "failed"
    occ.updated_ms = p.now_ms()
    reasons = [note] if note else []
    if not published:
        reasons.append(
            "the broker did not confirm the play command (it stays queued until the broker "
            "is back); terminals play it from their local schedule"
        )
    occ.reason = "; ".join(reasons) or None
    b = session.get(Broadcast, occurrence_id)
    if b is None:
        return
    b.status = "active"  # from here the broadcast sweeper expires what never played
    b.command_id = command_id
    b.start_at_ms = start_at_ms
    b.dispatch = "published" if published else "pending"
    offline = set(
        session.exec(
            select(Delivery.device_id)
            .where(Delivery.broadcast_id == occurrence_id)
            .where(Delivery.device_id == Device.id)
            .where(Device.online == False)  # noqa: E712
        ).all()
    )
    for d in session.exec(
        dm.for_update(
            session,
            select(Delivery)
            .where(Delivery.broadcast_id == occurrence_id)
            .where(Delivery.state == SCHEDULED),
        )
    ):
        fired_to = p.DeliveryState.OFFLINE if d.device_id in offline else p.DeliveryState.SENT
        reason = dm.OFFLINE_AT_SEND if fired_to is p.DeliveryState.OFFLINE else None
        dm.apply(d, fired_to, dm.Cause.DISPATCH, now=fired_ms, reason=reason)
    if not published:
        settle_played_offline(session, [occurrence_id])


def record_missed(session: Session, occurrence_id: str, reason: str) -> bool:
    occ = session.get(Occurrence, occurrence_id)
    if occ is None or occ.outcome != SCHEDULED:
        return False
    occ.outcome = MISSED
    occ.reason = reason
    occ.updated_ms = p.now_ms()
    b = session.get(Broadcast, occurrence_id)
    if b is not None:
        # Terminals holding it in their local schedule may well have played it; their
        # reports move its deliveries, and the sweeper expires the rest at expiry.
        b.status = "active"
        b.dispatch = "failed"
    settle_played_offline(session, [occurrence_id])
    return True


def settle_played_offline(session: Session, occurrence_ids: Iterable[str]) -> list[str]:
    """Occurrences the controller could not dispatch (missed, or the broker was down)
    that terminals played from their local schedule anyway become "played_offline"."""
    ids = list(occurrence_ids)
    if not ids:
        return []
    settled = []
    for occ in session.exec(select(Occurrence).where(col(Occurrence.id).in_(ids))):
        undispatched = occ.outcome == MISSED or (occ.outcome == FIRED and occ.dispatch == "failed")
        if not undispatched or occ.broadcast_id is None:
            continue
        played = sum(1 for d in _deliveries(session, occ.broadcast_id) if dm.played(session, d))
        if not played:
            continue
        why = occ.reason or "the controller could not dispatch it"
        occ.reason = f"{why}; {played} terminal(s) played it from their local schedule"
        occ.outcome = PLAYED_OFFLINE
        occ.updated_ms = p.now_ms()
        settled.append(occ.id)
    return settled


# ------------------------------------------------------------------------- pushing


def items_for_devices(
    session: Session,
    device_ids: Iterable[str],
    now: int,
    horizon_until: int,
    mirrors: tuple[str, ...] = (),
) -> dict[str, list[p.ScheduledItem]]:
    """Each terminal's coming occurrences (not yet expired, up to the horizon), as the
    items of its local schedule."""
    devices = sorted(set(device_ids))
    result: dict[str, list[p.ScheduledItem]] = {d: [] for d in devices}
    if not devices:
        return result
    columns: list[Any] = [
        Occurrence.id,
        Occurrence.schedule_id,
        Occurrence.due_ms,
        Broadcast.priority,
        Broadcast.level,
        Broadcast.category,
        Broadcast.title,
        Broadcast.drill,
        Broadcast.expires_at_ms,
        Media.sha256,
        Media.size,
        Media.duration_ms,
        Media.mime,
        Delivery.device_id,
    ]
    rows = session.execute(
        sa_select(*columns)
        .where(col(Occurrence.broadcast_id) == col(Broadcast.id))
        .where(col(Media.sha256) == col(Broadcast.media_sha256))
        .where(col(Delivery.broadcast_id) == col(Broadcast.id))
        .where(col(Occurrence.outcome).in_((SCHEDULED, FIRED)))
        .where(col(Broadcast.status).in_((SCHEDULED, "active")))
        .where(col(Broadcast.expires_at_ms) > now)
        .where(col(Occurrence.due_ms) < horizon_until)
        .where(col(Delivery.state) != CANCELLED)
        .where(col(Delivery.device_id).in_(devices))
    ).all()
    made: dict[str, p.ScheduledItem] = {}
    for occ_id, sid, due, prio, level, cat, title, drill, exp, sha, size, dur, mime, dev in rows:
        item = made.get(occ_id)
        if item is None:
            emergency = prio == p.Priority.EMERGENCY.value
            item = made[occ_id] = p.ScheduledItem(
                occurrence_id=occ_id,
                schedule_id=sid,
                priority=p.Priority(prio),
                level=level if emergency else None,
                category=cat,
                title=title,
                drill=drill,
                media=p.MediaRef(
                    sha256=sha,
                    url=sha,
                    size=size,
                    duration_ms=dur,
                    mime=mime,
                    mirrors=mirror_urls(sha, mirrors),
                ),
                start_at=due,
                expires_at=exp,
                volume=100 if emergency else None,
            )
        result[dev].append(item)
    for items in result.values():
        items.sort(key=lambda i: (i.start_at, i.occurrence_id))
    return result


def terminal_schedules(session: Session, device_ids: Iterable[str]) -> dict[str, TerminalSchedule]:
    ids = list(device_ids)
    query = select(TerminalSchedule).where(col(TerminalSchedule.device_id).in_(ids))
    return {t.device_id: t for t in session.exec(query)}


def save_terminal_schedules(session: Session, rows: Sequence[TerminalSchedule]) -> None:
    for row in rows:
        session.merge(row)
