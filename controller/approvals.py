"""The two-person rule: a real emergency that reaches the whole county waits for a second
duty officer (Hawaii, January 2018: one person, one drop-down, one confirmation).

The rule counts what one officer sends, not one request: their real emergencies at the
configured levels within `two_person_window_s` of this one are added up by the townships
they reached, so sending township t01, then t02, ... is still the whole county, and the
request that completes it waits. Schedules count too: a schedule cannot wait for anyone,
so one that would complete the county is refused (controller/schedules/service.py).

The request is rendered before it waits, and the second officer hears that exact audio;
approving sends that audio and nothing else. Which requests wait is a setting
(`two_person_levels`, `two_person_min_townships`, `two_person_window_s`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy import JSON, BigInteger, Column
from sqlmodel import Field, Session, SQLModel, col, select

from controller.errors import ApiError, json_response
from controller.models import Broadcast, Delivery, Device
from controller.schedules.models import Occurrence, Schedule
from controller.settings import Settings
from controller.timefmt import iso

# Schedule occurrences are written as broadcasts up to the schedule horizon ahead of
# their start, and a one-off broadcast may start up to 7 days after it is made: bound
# the search by creation time (indexed) no further back than that.
_CREATED_BEFORE_START_MS = 15 * 24 * 3600 * 1000
_LISTED_SENDS = 20


class PendingBroadcast(SQLModel, table=True):
    id: str = Field(primary_key=True)
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    expires_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    requested_by: str
    requested_role: str
    requested_township: str | None = None
    status: str = Field(default="pending", index=True)  # pending|approved|rejected|expired
    body: dict[str, Any] = Field(sa_column=Column(JSON))  # the BroadcastIn, as sent
    media_sha256: str = Field(foreign_key="media.sha256")
    voices: str = ""
    device_count: int = 0
    townships: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    decided_by: str | None = None
    decided_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    reason: str = ""
    broadcast_id: str | None = None
    # Why it waits (`Reach.view()`): the console says it in the officer's language.
    why: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


def threshold(settings: Settings, townships_total: int) -> int:
    """How many townships one officer's real emergencies may reach before a second
    officer must confirm: the whole county, or `two_person_min_townships` if lower."""
    minimum = settings.two_person_min_townships
    if minimum > 0 and (not townships_total or minimum < townships_total):
        return minimum
    return townships_total


def needs_second_person(
    settings: Settings,
    *,
    priority: str,
    level: int | None,
    drill: bool,
    townships_reached: int,
    townships_total: int,
) -> bool:
    """`townships_reached`: by this request together with the officer's other counted
    sends (see `officer_reach`)."""
    if not counted(settings, priority=priority, level=level, drill=drill):
        return False
    limit = threshold(settings, townships_total)
    return limit > 0 and townships_reached >= limit


def counted(settings: Settings, *, priority: str | None, level: int | None, drill: bool) -> bool:
    """Whether a send of this kind counts towards the rule at all."""
    return not drill and priority == "emergency" and level in settings.two_person_levels


@dataclass(frozen=True)
class Reach:
    """What a request reaches, with the same officer's counted sends around it."""

    own: tuple[str, ...]  # the townships this request reaches
    earlier: tuple[str, ...]  # ... and those the officer's other counted sends reached
    total: int  # townships in the county
    threshold: int
    window_s: int
    sends: tuple[str, ...]  # the broadcasts counted (at most _LISTED_SENDS, newest first)
    schedules: tuple[str, ...]  # the officer's other schedules counted

    @property
    def together(self) -> int:
        return len(set(self.own) | set(self.earlier))

    @property
    def held(self) -> bool:
        return self.threshold > 0 and self.together >= self.threshold

    def message(self) -> str:
        """One sentence, in English (the console words it from `view()`)."""
        minutes = max(1, round(self.window_s / 60))
        parts = []
        if self.sends:
            parts.append(f"your sends within {minutes} minutes")
        if self.schedules:
            parts.append("your other real emergency schedules")
        lead = f"with {' and '.join(parts)} " if parts else ""
        whole = " (the whole county)" if self.together >= self.total else ""
        return (
            f"{lead}this reaches {self.together} of {self.total} townships{whole}; "
            f"from {self.threshold} a second officer must confirm"
        )

    def view(self) -> dict[str, Any]:
        return {
            "townships": self.together,
            "of": self.total,
            "threshold": self.threshold,
            "window_s": self.window_s,
            "own": list(self.own),
            "earlier": sorted(set(self.earlier) - set(self.own)),
            "sends": list(self.sends),
            "schedules": list(self.schedules),
            "message": self.message(),
        }


def officer_reach(
    session: Session,
    settings: Settings,
    *,
    user: str,
    own: Iterable[str],
    total: int,
    around_ms: int,
    with_schedules: bool = False,
    except_schedule: str | None = None,
) -> Reach:
    """The townships `own` reaches together with `user`'s counted sends: real
    emergencies at the configured levels that start within `two_person_window_s` of
    `around_ms` (including their own schedules' occurrences due then). A send a second
    officer approved does not count again: it had its second person. With
    `with_schedules`, their other live real-emergency schedules count too whatever
    their times, since schedules repeat."""
    window_ms = settings.two_person_window_s * 1000
    levels = list(settings.two_person_levels)
    earlier: set[str] = set()
    sends: list[str] = []
    if window_ms > 0 and levels:
        approved = select(PendingBroadcast.broadcast_id).where(
            PendingBroadcast.status == "approved",
            col(PendingBroadcast.broadcast_id).is_not(None),
        )
        lo, hi = around_ms - window_ms, around_ms + window_ms
        counted_sends = (
            select(Broadcast.id)
            .where(Broadcast.created_by == user)
            .where(col(Broadcast.created_ms) >= lo - _CREATED_BEFORE_START_MS)
            .where(Broadcast.priority == "emergency")
            .where(col(Broadcast.drill).is_(False))
            .where(col(Broadcast.level).in_(levels))
            .where(col(Broadcast.start_at_ms) >= lo)
            .where(col(Broadcast.start_at_ms) <= hi)
            # A planned occurrence cancelled before it fired never went out; a
            # broadcast cancelled after it was sent did.
            .where((Broadcast.status != "cancelled") | (Broadcast.command_id != ""))
            .where(col(Broadcast.id).not_in(approved))
        )
        if except_schedule is not None:
            # The occurrences of the schedule being edited are replaced by the edit.
            counted_sends = counted_sends.where(
                col(Broadcast.id).not_in(
                    select(Occurrence.broadcast_id).where(
                        Occurrence.schedule_id == except_schedule,
                        col(Occurrence.broadcast_id).is_not(None),
                    )
                )
            )
        sends = list(
            session.exec(
                counted_sends.order_by(col(Broadcast.start_at_ms).desc()).limit(_LISTED_SENDS)
            ).all()
        )
        if sends:
            earlier.update(
                session.exec(
                    select(Device.township_id)
                    .join(Delivery, col(Delivery.device_id) == col(Device.id))
                    .where(col(Delivery.broadcast_id).in_(counted_sends))
                    .distinct()
                ).all()
            )
    schedules: list[str] = []
    if with_schedules and levels:
        for row in session.exec(
            select(Schedule)
            .where(Schedule.status != "deleted")
            .where((Schedule.created_by == user) | (Schedule.updated_by == user))
            .where(Schedule.priority == "emergency")
            .where(col(Schedule.drill).is_(False))
            .where(col(Schedule.level).in_(levels))
        ):
            if row.id != except_schedule:
                schedules.append(row.id)
                earlier.update(row.township_ids)
    return Reach(
        own=tuple(sorted(set(own))),
        earlier=tuple(sorted(earlier)),
        total=total,
        threshold=threshold(settings, total),
        window_s=settings.two_person_window_s,
        sends=tuple(sends),
        schedules=tuple(schedules),
    )


class TwoPersonRefused(ApiError):
    """A schedule that would need a second officer: a 403 that says why, with the
    numbers the console needs to say it in the user's language."""

    def __init__(self, reach: Reach) -> None:
        super().__init__(
            403,
            "two_person_rule",
            f"priority: {reach.message()}; a schedule cannot wait for that approval: "
            "send it as a broadcast, or schedule it as a drill",
            "priority",
        )
        self.reach = reach

    def response(self) -> web.Response:
        response = super().response()
        body = json.loads(response.text or "{}")
        body["error"]["why"] = self.reach.view()
        return json_response(body, status=self.status)


def new_id() -> str:
    return "req-" + uuid.uuid4().hex[:12]


def pending_view(row: PendingBroadcast) -> dict[str, Any]:
    body = row.body
    return {
        "id": row.id,
        "status": row.status,
        "created_at": iso(row.created_ms),
        "expires_at": iso(row.expires_ms),
        "requested_by": row.requested_by,
        "title": body.get("title") or (body.get("text") or "")[:40],
        "text": body.get("text") or "",
        "category": body.get("category"),
        "priority": body.get("priority"),
        "level": body.get("level"),
        "drill": bool(body.get("drill")),
        "targets": body.get("targets"),
        "townships": row.townships,
        "device_count": row.device_count,
        "media_id": row.media_sha256,
        "media_url": f"/media/{row.media_sha256}",
        "decided_by": row.decided_by,
        "decided_at": iso(row.decided_ms),
        "reason": row.reason,
        "broadcast_id": row.broadcast_id,
        "why": row.why or {},
    }


class ApprovalRequired(web.HTTPAccepted):
    """Raised by `BroadcastService.create` instead of sending.

    An HTTP 202 on purpose: whichever entry point asked for the broadcast (the API, a
    template, anything added later) answers "accepted, waiting for a second officer"
    without having to know about the rule, and none of them can send around it.
    """

    def __init__(self, view: dict[str, Any]) -> None:
        self.view = view
        why = view.get("why") or {}
        super().__init__(
            text=json.dumps(
                {
                    "status": "pending_approval",
                    "approval_id": view["id"],
                    "message": why.get("message", ""),
                    "why": why,
                    "approval": view,
                },
                ensure_ascii=False,
            ),
            content_type="application/json",
        )
