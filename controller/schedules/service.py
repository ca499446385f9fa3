"""Township schedules: create, read, edit, pause, resume, delete; their occurrences,
the next fire times, a township's day as a timeline, and quiet hours.

A schedule's content is exactly a broadcast's (text, an uploaded recording, or a
template with params; category, priority, level, languages, repeat, drill) and is
validated, filled and rendered by the same code as a broadcast's, once, when the
schedule is saved: the audio is ready long before the first occurrence, and terminals
fetch it ahead with their local schedule. Occurrences are planned, fired and accounted
for by `ScheduleRunner`; this module is what the API talks to.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func
from sqlmodel import Session, col, select

from controller import audit
from controller.approvals import Reach, TwoPersonRefused, counted, officer_reach
from controller.auth import Principal
from controller.broadcasts import BroadcastIn, BroadcastService
from controller.db import Database
from controller.dispatch import Dispatcher
from controller.errors import (
    ApiError,
    bad_request,
    forbidden,
    not_found,
    parse_body,
)
from controller.events import EventHub
from controller.models import Delivery, Device, Media, Township
from controller.reasons import reason_code, with_code
from controller.schedules import store
from controller.schedules.models import Occurrence, Schedule, TerminalSchedule
from controller.schedules.plan import (
    Slot,
    conflicts,
    describe_quiet,
    from_ms,
    local_label,
    occurrence_id,
    parse_quiet,
    to_ms,
)
from controller.schedules.push import TerminalPusher
from controller.schedules.rules import (
    Recurrence,
    next_occurrences,
    occurrences,
    recurrence_from_dict,
    recurrence_to_dict,
    suppressed_by_quiet_hours,
)
from controller.schedules.runner import ScheduleRunner
from controller.settings import Settings
from controller.speech.service import SpeechUnavailable
from controller.targets import Resolved, resolve
from controller.timefmt import iso
from dalaba import protocol as p

log = logging.getLogger(__name__)

# Keys of a schedule body that are the schedule's own; everything else is the content
# and targets, validated as a broadcast body is.
SCHEDULE_KEYS = frozenset({"name", "recurrence", "expires_in_s", "misfire_grace_s"})
SOURCE_KEYS = ("text", "media_id", "template")
MAX_NEXT = 200
MAX_OCCURRENCES = 500
_HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"


NEXT_IN_VIEW = 5  # fire times a schedule's view lists under `next`
# How many fire times per listed one are looked at for one that is heard: a daily 07:00
# inside quiet hours in every township is never heard, and must not loop forever.
NEXT_LOOKAHEAD = 20


class ScheduleFields(BaseModel):
    """The schedule's own part of POST /api/schedules (the rest is a broadcast's content
    and targets)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    recurrence: dict[str, Any]
    # How long after its due time an occurrence may still play (a terminal that was
    # busy with an emergency, or came back online): per priority by default.
    expires_in_s: int | None = Field(default=None, ge=60, le=24 * 3600)
    # How late the controller may still fire it (e.g. just restarted); later, "missed".
    misfire_grace_s: int | None = Field(default=None, ge=0, le=3600)

    @field_validator("name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()


class QuietHoursIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str | None = Field(default=None, pattern=_HHMM)
    end: str | None = Field(default=None, pattern=_HHMM)


@dataclass(frozen=True)
class _Prepared:
    fields: ScheduleFields
    rule: Recurrence
    content: BroadcastIn  # filled in: template applied, defaults set
    template: str | None  # as asked for (the filled-in content no longer names it)
    params: dict[str, Any]
    media: Media
    voices: str
    resolved: Resolved
    township_ids: list[str]
    expires_in_s: int
    misfire_grace_s: int


class ScheduleService:
    def __init__(
        self,
        db: Database,
        broadcasts: BroadcastService,
        dispatcher: Dispatcher,
        settings: Settings,
    ) -> None:
        self._db = db
        self._broadcasts = broadcasts
        self._settings = settings
        self.pusher = TerminalPusher(db, dispatcher, settings)
        self.runner = ScheduleRunner(db, dispatcher, self.pusher, settings)

    async def start(self) -> None:
        await self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()

    def listen(self, events: EventHub) -> None:
        self.runner.listen(events)

    @property
    def timezone(self) -> str:
        return self._settings.timezone

    # ------------------------------------------------------------------ validation

    async def _prepare(
        self, principal: Principal, data: dict[str, Any], schedule_id: str | None = None
    ) -> _Prepared:
        """Everything a schedule body must pass before it is stored; 400 naming the
        field, 403 outside the caller's reach (`schedule_id`: the one being edited)."""
        own = {k: v for k, v in data.items() if k in SCHEDULE_KEYS}
        rest = {k: v for k, v in data.items() if k not in SCHEDULE_KEYS}
        if "start_at" in rest:
            raise bad_request("start_at", "unknown field (a schedule's times are its recurrence)")
        fields = parse_body(ScheduleFields, own)
        content = parse_body(BroadcastIn, rest)

        recurrence = dict(fields.recurrence)
        recurrence.setdefault("timezone", self.timezone)
        try:
            rule = recurrence_from_dict(recurrence)
        except ValueError as exc:
            field, _, message = str(exc).partition(": ")
            raise bad_request(field if message else "recurrence", message or str(exc)) from None
        now = p.now_ms()
        if not next_occurrences(rule, from_ms(now), 1):
            raise bad_request(
                "recurrence", "never fires after now (its times are all in the past)", "never_fires"
            )

        resolved = await self._db.run(lambda s: resolve(s, content.targets, principal))
        if not resolved.device_ids:
            raise bad_request(
                "targets", "no terminal is installed in the chosen area", "no_terminals_in_area"
            )
        if content.text is not None and len(content.text) > self._settings.max_text_chars:
            raise bad_request(
                "text",
                f"longer than {self._settings.max_text_chars} characters",
                "text_too_long",
                {"max": self._settings.max_text_chars},
            )
        try:
            filled, media, voices = await self._broadcasts.preview(
                content, resolved.target, principal
            )
        except SpeechUnavailable as exc:
            message = f"text: could not be spoken ({exc})"
            raise ApiError(503, "speech_unavailable", message, "text") from None
        assert filled.priority is not None and filled.category is not None

        def reach(session: Session) -> tuple[list[str], Reach | None]:
            townships = sorted(
                session.exec(
                    select(Device.township_id)
                    .where(col(Device.id).in_(resolved.device_ids))
                    .distinct()
                ).all()
            )
            if not counted(
                self._settings, priority=filled.priority, level=filled.level, drill=filled.drill
            ):
                return townships, None
            # The two-person rule counts what one officer sends: this schedule with their
            # other real-emergency schedules and their sends around now. A schedule cannot
            # wait for a second officer, so one that would need one is refused.
            return townships, officer_reach(
                session,
                self._settings,
                user=principal.user,
                own=townships,
                total=len(session.exec(select(Township.id)).all()),
                around_ms=now,
                with_schedules=True,
                except_schedule=schedule_id,
            )

        township_ids, counted_reach = await self._db.run(reach)
        if counted_reach is not None and counted_reach.held:
            raise TwoPersonRefused(counted_reach)
        expires_in_s = fields.expires_in_s or self._settings.schedule_expiry_s[filled.priority]
        grace = fields.misfire_grace_s
        return _Prepared(
            fields=fields,
            rule=rule,
            content=filled,
            template=content.template,
            params=dict(content.params),
            media=media,
            voices=voices,
            resolved=resolved,
            township_ids=township_ids,
            expires_in_s=expires_in_s,
            misfire_grace_s=self._settings.schedule_misfire_grace_s if grace is None else grace,
        )

    @staticmethod
    def _apply(row: Schedule, prep: _Prepared, request: dict[str, Any]) -> None:
        c = prep.content
        assert c.category is not None and c.priority is not None
        row.name = prep.fields.name
        row.request = request
        row.recurrence = recurrence_to_dict(prep.rule)
        row.township_ids = prep.township_ids
        row.text = c.text or ""
        row.media_sha256 = prep.media.sha256
        row.voices = prep.voices
        row.template_id = prep.template
        row.params = prep.params
        row.title = c.title or prep.fields.name
        row.category = c.category
        row.priority = c.priority
        row.level = c.level
        row.drill = c.drill
        row.languages = list(c.languages)
        row.repeat = c.repeat
        row.targets = c.targets.model_dump()
        row.target = prep.resolved.target.model_dump(mode="json")
        row.expires_in_s = prep.expires_in_s
        row.misfire_grace_s = prep.misfire_grace_s

    # ------------------------------------------------------------------ create/edit

    async def create(self, principal: Principal, data: dict[str, Any]) -> dict[str, Any]:
        principal.require_broadcast()
        prep = await self._prepare(principal, data)
        now = p.now_ms()
        row = Schedule(
            id="sch-" + uuid.uuid4().hex[:12],
            name=prep.fields.name,
            created_ms=now,
            created_by=principal.user,
            updated_ms=now,
            updated_by=principal.user,
            recurrence={},
            media_sha256=prep.media.sha256,
            category="",
            priority="",
            targets={},
            target={},
            expires_in_s=0,
            misfire_grace_s=0,
        )
        self._apply(row, prep, data)

        def record(session: Session) -> None:
            session.add(row)
            audit.record(
                session,
                principal,
                "schedule.create",
                row.id,
                name=row.name,
                recurrence=row.recurrence,
                category=row.category,
                priority=row.priority,
                level=row.level,
                drill=row.drill,
                targets=row.targets,
                devices=len(prep.resolved.device_ids),
                text=row.text[:200],
                template=row.template_id,
            )

        await self._db.run(record)
        await self.runner.reconcile([row.id])
        log.info("schedule %s (%s) created by %s", row.id, row.name, principal.user)
        return await self.get(principal, row.id)

    async def update(
        self, principal: Principal, schedule_id: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        principal.require_broadcast()
        row = await self._editable(principal, schedule_id)
        if not patch:
            raise bad_request("body", "nothing to change")
        base = dict(row.request)
        if any(k in patch for k in SOURCE_KEYS):
            # A new text replaces a recording or template, and so on; what the template
            # gave (category, priority, level) stays unless the patch changes it too.
            if base.get("template") is not None and "template" not in patch:
                base.setdefault("category", row.category)
                base.setdefault("priority", row.priority)
                if row.level is not None:
                    base.setdefault("level", row.level)
            for k in SOURCE_KEYS:
                base.pop(k, None)
            if "template" not in patch:
                base.pop("params", None)
        request = {k: v for k, v in {**base, **patch}.items() if v is not None}
        prep = await self._prepare(principal, request, schedule_id)
        before = _comparable(row)
        self._apply(row, prep, request)
        changed = sorted(k for k, v in _comparable(row).items() if before[k] != v)
        if not changed:
            return await self.get(principal, schedule_id)
        now = p.now_ms()

        def record(session: Session) -> None:
            stored = session.get(Schedule, schedule_id)
            assert stored is not None
            if stored.status == "deleted":
                raise ApiError(409, "deleted", f"schedule {schedule_id}: deleted meanwhile")
            self._apply(stored, prep, request)
            stored.version += 1
            stored.updated_ms = now
            stored.updated_by = principal.user
            audit.record(
                session, principal, "schedule.update", schedule_id, changed=changed, patch=patch
            )

        await self._db.run(record)
        await self.runner.reconcile([schedule_id])
        return await self.get(principal, schedule_id)

    async def set_status(
        self, principal: Principal, schedule_id: str, action: str
    ) -> dict[str, Any]:
        """pause | resume | delete."""
        principal.require_broadcast()
        row = await self._editable(principal, schedule_id)
        target = {"pause": "paused", "resume": "active", "delete": "deleted"}[action]
        if action == "pause" and row.status != "active":
            raise ApiError(409, "not_active", f"schedule {schedule_id}: is {row.status}")
        if action == "resume":
            if row.status != "paused":
                raise ApiError(409, "not_paused", f"schedule {schedule_id}: is {row.status}")
            rule = recurrence_from_dict(row.recurrence)
            if not next_occurrences(rule, from_ms(p.now_ms()), 1):
                raise bad_request(
                    "recurrence", "never fires after now; nothing to resume", "never_fires"
                )
        now = p.now_ms()

        def record(session: Session) -> None:
            stored = session.get(Schedule, schedule_id)
            assert stored is not None
            stored.status = target
            stored.updated_ms = now
            stored.updated_by = principal.user
            audit.record(session, principal, f"schedule.{action}", schedule_id, name=stored.name)

        await self._db.run(record)
        changes = await self.runner.reconcile([schedule_id])
        log.info(
            "schedule %s %s by %s (%d coming occurrences cancelled)",
            schedule_id,
            target,
            principal.user,
            changes.cancelled,
        )
        return await self.get(principal, schedule_id)

    async def _editable(self, principal: Principal, schedule_id: str) -> Schedule:
        row = await self._db.run(lambda s: s.get(Schedule, schedule_id))
        if row is None:
            raise not_found(f"schedule {schedule_id}")
        if not _may_edit(principal, row):
            raise forbidden(f"schedule {schedule_id} plays beyond your township")
        if row.status == "deleted":
            raise ApiError(409, "deleted", f"schedule {schedule_id}: deleted")
        return row

    # ------------------------------------------------------------------ read

    async def get(self, principal: Principal, schedule_id: str) -> dict[str, Any]:
        scope = principal.township_scope()

        def load(session: Session) -> dict[str, Any]:
            row = session.get(Schedule, schedule_id)
            if row is None:
                raise not_found(f"schedule {schedule_id}")
            if scope is not None and scope not in row.township_ids:
                raise forbidden(f"schedule {schedule_id} does not play in your township")
            counts = Counter(
                dict(
                    session.exec(
                        select(Occurrence.outcome, func.count())
                        .where(Occurrence.schedule_id == schedule_id)
                        .group_by(col(Occurrence.outcome))
                    ).all()
                )
            )
            return self._view(row, principal, counts, _quiet_hours(session))

        return await self._db.run(load)

    async def list(
        self, principal: Principal, *, township: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        scope = principal.township_scope()

        def load(session: Session) -> list[dict[str, Any]]:
            query = select(Schedule).order_by(col(Schedule.created_ms))
            if status:
                query = query.where(Schedule.status == status)
            else:
                query = query.where(Schedule.status != "deleted")
            rows = [
                r
                for r in session.exec(query)
                if (scope is None or scope in r.township_ids)
                and (township is None or township in r.township_ids)
            ]
            quiet = _quiet_hours(session)
            return [self._view(r, principal, None, quiet) for r in rows]

        return await self._db.run(load)

    def _view(
        self,
        row: Schedule,
        principal: Principal,
        counts: Counter[str] | None,
        quiet: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": row.id,
            "name": row.name,
            "status": row.status,
            "version": row.version,
            "recurrence": row.recurrence,
            "township_ids": row.township_ids,
            "text": row.text,
            "media_id": row.media_sha256,
            "voices": row.voices.split(",") if row.voices else [],
            "template": row.template_id,
            "params": row.params,
            "title": row.title,
            "category": row.category,
            "priority": row.priority,
            "level": row.level,
            "drill": row.drill,
            "languages": row.languages,
            "repeat": row.repeat,
            "targets": row.targets,
            "expires_in_s": row.expires_in_s,
            "misfire_grace_s": row.misfire_grace_s,
            "created_at": iso(row.created_ms),
            "created_by": row.created_by,
            "updated_at": iso(row.updated_ms),
            "updated_by": row.updated_by,
            "editable": _may_edit(principal, row) and row.status != "deleted",
            "next": [],
        }
        if row.status == "active":
            rule = recurrence_from_dict(row.recurrence)
            view["next"] = [
                iso(to_ms(t)) for t in self._next_heard(row, rule, quiet or {}, NEXT_IN_VIEW)
            ]
        if counts is not None:
            view["occurrences"] = {o: counts.get(o, 0) for o in store.OUTCOMES}
        return view

    def _next_heard(
        self, row: Schedule, rule: Any, quiet: dict[str, Any], count: int
    ) -> tuple[datetime.datetime, ...]:
        """The next `count` times the schedule is heard somewhere: a time that quiet
        hours silence in every township it reaches is skipped (下次 never shows a time
        nobody will hear). Looks ahead a bounded number of fire times."""
        heard: tuple[datetime.datetime, ...] = ()
        after = from_ms(p.now_ms())
        # In batches of `count`: with no quiet hours in the way (the usual case) this
        # expands the rule exactly as far as before.
        for _ in range(NEXT_LOOKAHEAD):
            batch = next_occurrences(rule, after, count)
            for instant in batch:
                silent = all(
                    (q := quiet.get(t)) is not None
                    and suppressed_by_quiet_hours(row.priority, q, instant, self.timezone)
                    for t in row.township_ids
                )
                if not silent:
                    heard += (instant,)
                    if len(heard) == count:
                        return heard
            if len(batch) < count:
                break  # the rule ends
            after = batch[-1]
        return heard

    async def next(self, principal: Principal, schedule_id: str, count: int) -> dict[str, Any]:
        """The next `count` fire times for the console's calendar, each with the
        townships where quiet hours keep it silent."""
        view = await self.get(principal, schedule_id)
        if not 1 <= count <= MAX_NEXT:
            raise bad_request("count", f"must be 1..{MAX_NEXT}")

        def load(session: Session) -> tuple[Schedule, dict[str, Any], dict[int, Occurrence]]:
            row = session.get(Schedule, schedule_id)
            assert row is not None
            quiet = {
                t.id: q
                for t in session.exec(
                    select(Township).where(col(Township.id).in_(row.township_ids))
                )
                if (q := parse_quiet(t.quiet_start, t.quiet_end)) is not None
            }
            recorded = {
                o.due_ms: o
                for o in session.exec(
                    select(Occurrence)
                    .where(Occurrence.schedule_id == schedule_id)
                    .where(col(Occurrence.due_ms) >= p.now_ms())
                )
            }
            return row, quiet, recorded

        row, quiet, recorded = await self._db.run(load)
        items = []
        if row.status == "active":
            rule = recurrence_from_dict(row.recurrence)
            for instant in next_occurrences(rule, from_ms(p.now_ms()), count):
                due = to_ms(instant)
                silent = [
                    describe_quiet(t, q)
                    for t, q in sorted(quiet.items())
                    if suppressed_by_quiet_hours(row.priority, q, instant, self.timezone)
                ]
                occ = recorded.get(due)
                items.append(
                    {
                        "at": iso(due),
                        "local": local_label(due, self.timezone),
                        "occurrence_id": occurrence_id(row.id, due),
                        "outcome": occ.outcome if occ is not None else "planned",
                        "plays": len(silent) < len(row.township_ids),
                        "suppressed": silent,
                    }
                )
        return {"schedule_id": schedule_id, "status": view["status"], "next": items}

    async def occurrences(
        self, principal: Principal, schedule_id: str, limit: int = 100
    ) -> dict[str, Any]:
        await self.get(principal, schedule_id)  # existence and reach
        if not 1 <= limit <= MAX_OCCURRENCES:
            raise bad_request("limit", f"must be 1..{MAX_OCCURRENCES}")
        scope = principal.township_scope()

        def load(session: Session) -> list[dict[str, Any]]:
            rows = list(
                session.exec(
                    select(Occurrence)
                    .where(Occurrence.schedule_id == schedule_id)
                    .order_by(col(Occurrence.due_ms).desc())
                    .limit(limit)
                )
            )
            summaries = _delivery_summaries(session, [o.id for o in rows], scope)
            return [occurrence_view(o, summaries.get(o.id), self.timezone) for o in rows]

        return {"schedule_id": schedule_id, "occurrences": await self._db.run(load)}

    # ------------------------------------------------------------------ timeline

    async def timeline(
        self, principal: Principal, township_id: str, date: str | None
    ) -> dict[str, Any]:
        """A township's day: every occurrence of every schedule that plays there, with
        its outcome (recorded) or its plan (beyond what is recorded yet), skip dates,
        quiet hours, and which occurrences overlap on the loudspeakers."""
        scope = principal.township_scope()
        if scope is not None and township_id != scope:
            raise forbidden(f"township {township_id} is not yours")
        zone = ZoneInfo(self.timezone)
        if date is None:
            day = datetime.datetime.now(zone).date()
        else:
            try:
                day = datetime.date.fromisoformat(date)
            except ValueError:
                raise bad_request("date", f"{date!r} is not a date YYYY-MM-DD") from None
        start = datetime.datetime.combine(day, datetime.time(), tzinfo=zone)
        end = start + datetime.timedelta(days=1)
        start_ms, end_ms = to_ms(start), to_ms(end)
        now_ms = p.now_ms()

        def load(
            session: Session,
        ) -> tuple[Township, list[Schedule], list[Occurrence], dict[str, Any], dict[str, int]]:
            township = session.get(Township, township_id)
            if township is None:
                raise not_found(f"township {township_id}")
            schedules = [s for s in session.exec(select(Schedule)) if township_id in s.township_ids]
            if not schedules:
                return township, [], [], {}, {}
            rows = list(
                session.exec(
                    select(Occurrence)
                    .where(col(Occurrence.schedule_id).in_([s.id for s in schedules]))
                    .where(col(Occurrence.due_ms) >= start_ms)
                    .where(col(Occurrence.due_ms) < end_ms)
                )
            )
            summaries = _delivery_summaries(session, [o.id for o in rows], township_id)
            shas = sorted({s.media_sha256 for s in schedules})
            durations = dict(
                session.exec(
                    select(Media.sha256, Media.duration_ms).where(col(Media.sha256).in_(shas))
                ).all()
            )
            return township, schedules, rows, summaries, durations

        township, schedules, rows, summaries, durations = await self._db.run(load)
        quiet = parse_quiet(township.quiet_start, township.quiet_end)
        by_id = {s.id: s for s in schedules}
        recorded = {(o.schedule_id, o.due_ms): o for o in rows}
        entries: list[dict[str, Any]] = []

        def entry(s: Schedule, due: int, outcome: str, reason: str | None) -> dict[str, Any]:
            duration = durations.get(s.media_sha256, 0)
            return {
                "occurrence_id": occurrence_id(s.id, due),
                "at": iso(due),
                "local_time": from_ms(due).astimezone(zone).strftime("%H:%M:%S"),
                "end_at": iso(due + duration),
                "duration_ms": duration,
                "schedule_id": s.id,
                "schedule_name": s.name,
                "schedule_status": s.status,
                "title": s.title,
                "category": s.category,
                "priority": s.priority,
                "level": s.level,
                "drill": s.drill,
                "rank": p.priority_rank(s.priority, s.level),
                "outcome": outcome,
                "reason": reason,
                "_due": due,
            }

        for o in rows:
            s = by_id[o.schedule_id]
            e = entry(s, o.due_ms, o.outcome, o.reason)
            here = o.suppressed.get(township_id)
            if here is not None and o.outcome != store.SUPPRESSED:
                # Played elsewhere, kept silent here.
                e["outcome"], e["reason"] = store.SUPPRESSED, here
            e["fired_at"] = iso(o.fired_ms)
            e["start_at"] = iso(o.start_at_ms)
            e["deliveries"] = summaries.get(o.id, {})
            entries.append(e)
        for s in schedules:
            rule = recurrence_from_dict(s.recurrence)
            if s.status == "active":
                for instant in occurrences(rule, start, end):
                    due = to_ms(instant)
                    # Before the schedule existed, or past and never recorded: not its.
                    if (s.id, due) in recorded or due < max(now_ms, s.created_ms):
                        continue
                    silent = quiet is not None and suppressed_by_quiet_hours(
                        s.priority, quiet, instant, self.timezone
                    )
                    entries.append(
                        entry(
                            s,
                            due,
                            store.SUPPRESSED if silent else "planned",
                            describe_quiet(township_id, quiet) if silent and quiet else None,
                        )
                    )
            if rule.skip_dates and day in rule.skip_dates and s.status != "deleted":
                unskipped = dataclasses.replace(rule, skip_dates=frozenset())
                for instant in occurrences(unskipped, start, end):
                    entries.append(entry(s, to_ms(instant), "skipped", "skip date"))
        entries.sort(key=lambda e: (e["at"], -e["rank"], e["schedule_id"]))
        playing = [
            Slot(e["occurrence_id"], e["_due"], e["_due"] + max(e["duration_ms"], 1), e["rank"])
            for e in entries
            if e["outcome"] in ("planned", "scheduled", "fired", "played_offline")
        ]
        overlaps = conflicts(playing)
        for e in entries:
            e["conflicts_with"] = overlaps.get(e["occurrence_id"], [])
            del e["_due"]
            with_code(e)
        return {
            "township_id": township_id,
            "date": day.isoformat(),
            "timezone": self.timezone,
            "quiet_hours": {"start": township.quiet_start, "end": township.quiet_end}
            if quiet is not None
            else None,
            "entries": entries,
        }

    # ------------------------------------------------------------------ quiet hours

    async def quiet_hours(self, principal: Principal, township_id: str) -> dict[str, Any]:
        scope = principal.township_scope()
        if scope is not None and township_id != scope:
            raise forbidden(f"township {township_id} is not yours")
        township = await self._db.run(lambda s: s.get(Township, township_id))
        if township is None:
            raise not_found(f"township {township_id}")
        return _quiet_view(township)

    async def set_quiet_hours(
        self, principal: Principal, township_id: str, data: dict[str, Any]
    ) -> dict[str, Any]:
        principal.require_broadcast()
        scope = principal.township_scope()
        if scope is not None and township_id != scope:
            raise forbidden(f"township {township_id} is not yours")
        body = parse_body(QuietHoursIn, data)
        if (body.start is None) != (body.end is None):
            raise bad_request(
                "end" if body.end is None else "start",
                "give both start and end, or neither to clear quiet hours",
            )
        if body.start is not None and body.start == body.end:
            raise bad_request(
                "end", "equal to start would mean no quiet hours; send nulls", "quiet_hours_empty"
            )

        def record(session: Session) -> Township:
            township = session.get(Township, township_id)
            if township is None:
                raise not_found(f"township {township_id}")
            before = {"start": township.quiet_start, "end": township.quiet_end}
            township.quiet_start, township.quiet_end = body.start, body.end
            audit.record(
                session,
                principal,
                "township.quiet_hours",
                township_id,
                before=before,
                after={"start": body.start, "end": body.end},
            )
            return township

        township = await self._db.run(record)
        # Occurrences that now fall in (or out of) quiet hours, in this township.
        affected = await self._db.run(
            lambda s: [x.id for x in s.exec(select(Schedule)) if township_id in x.township_ids]
        )
        if affected:
            await self.runner.reconcile(affected)
        return _quiet_view(township)

    # ------------------------------------------------------------------ terminals

    async def terminal_schedule(self, principal: Principal, device_id: str) -> dict[str, Any]:
        """What a terminal was last given as its local schedule."""
        scope = principal.township_scope()

        def load(session: Session) -> tuple[Device | None, TerminalSchedule | None]:
            return session.get(Device, device_id), session.get(TerminalSchedule, device_id)

        device, row = await self._db.run(load)
        if device is None:
            raise not_found(f"device {device_id}")
        if scope is not None and device.township_id != scope:
            raise forbidden(f"device {device_id} is outside your township")
        if row is None:
            return {"device_id": device_id, "pushed_at": None}
        return {
            "device_id": device_id,
            "version": row.version,
            "items": row.items,
            "bytes": row.bytes,
            "dropped": row.dropped,
            "horizon_until": iso(row.horizon_until_ms),
            "pushed_at": iso(row.pushed_ms),
            "published": row.published,
        }


# --------------------------------------------------------------------------- helpers


def _may_edit(principal: Principal, row: Schedule) -> bool:
    if not principal.can_broadcast:
        return False
    if principal.county_wide:
        return True
    return bool(row.township_ids) and set(row.township_ids) <= {principal.township_id}


def _comparable(row: Schedule) -> dict[str, Any]:
    return {k: getattr(row, k) for k in _COMPARED}


_COMPARED = (
    "name",
    "recurrence",
    "text",
    "media_sha256",
    "template_id",
    "params",
    "title",
    "category",
    "priority",
    "level",
    "drill",
    "languages",
    "repeat",
    "target",
    "expires_in_s",
    "misfire_grace_s",
)


def _quiet_hours(session: Session) -> dict[str, Any]:
    """Each township's parsed quiet hours, for those that have them."""
    return {
        t.id: q
        for t in session.exec(select(Township))
        if (q := parse_quiet(t.quiet_start, t.quiet_end)) is not None
    }


def _quiet_view(t: Township) -> dict[str, Any]:
    return {"township_id": t.id, "start": t.quiet_start, "end": t.quiet_end}


def _delivery_summaries(
    session: Session, broadcast_ids: list[str], township_id: str | None
) -> dict[str, dict[str, int]]:
    if not broadcast_ids:
        return {}
    query = (
        select(Delivery.broadcast_id, Delivery.state, func.count())
        .where(col(Delivery.broadcast_id).in_(broadcast_ids))
        .group_by(col(Delivery.broadcast_id), col(Delivery.state))
    )
    if township_id is not None:
        query = query.where(Delivery.device_id == Device.id).where(
            Device.township_id == township_id
        )
    result: dict[str, dict[str, int]] = defaultdict(dict)
    for bid, state, n in session.exec(query).all():
        result[bid][state] = n
    return dict(result)


def occurrence_view(
    o: Occurrence, deliveries: dict[str, int] | None, timezone: str
) -> dict[str, Any]:
    return {
        "id": o.id,
        "schedule_id": o.schedule_id,
        "due_at": iso(o.due_ms),
        "local": local_label(o.due_ms, timezone),
        "expires_at": iso(o.expires_at_ms),
        "outcome": o.outcome,
        "reason": o.reason,
        **dict(zip(("reason_code", "reason_params"), reason_code(o.reason), strict=True)),
        "suppressed": o.suppressed,
        "broadcast_id": o.broadcast_id,
        "device_count": o.device_count,
        "schedule_version": o.schedule_version,
        "fired_at": iso(o.fired_ms),
        "start_at": iso(o.start_at_ms),
        "late_ms": None if o.start_at_ms is None else o.start_at_ms - o.due_ms,
        "dispatch": o.dispatch,
        "deliveries": deliveries or {},
    }
