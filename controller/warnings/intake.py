"""The one intake of warnings from upstream, whatever the protocol.

Protocol front ends (CAP 1.2: controller/warnings/cap.py; the upper-level platform's EBM
packages) parse and validate what they received, refuse malformed input with a 4xx
*before* calling here (nothing is stored then), and hand over an `IncomingWarning`.
`intake(ctx, warning)` then decides, stores the message verbatim with its outcome
(`UpstreamMessage`) and returns an `IntakeOutcome`:

- status draft -> refused; test / system -> recorded, never played; exercise -> a drill;
- msgType ack / error -> recorded; cancel -> the broadcasts of the referenced messages
  are cancelled (a referenced warning still waiting for review is rejected);
- alert / update -> area codes, polygons and circles become villages (none of the
  county's: `no_area`); an update first cancels what it references, then sends anew;
- the source's mode: `automatic` sends at once unless the source's `hold_levels` (its
  own two-person threshold, in place of the officers' rule) holds it for one officer;
  `review` puts every warning in the approvals queue.

A front end calls, e.g.::

    outcome = await intake(IntakeContext.from_app(request.app), IncomingWarning(...))

`warning.source_id` is the upstream user the request authenticated as (role upstream).
`references` are the referenced messages' identifiers (CAP "sender,identifier,sent"
triples are reduced to their identifier by the CAP front end; EBM gives an EBM ID).
Either a `level` (1-4, 1 = I red) or CAP's severity/urgency/certainty is given; the
mapping of the latter is `warning_levels` below (settings `cap_*`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from sqlmodel import Session, col, select

from controller import audit
from controller.approvals import PendingBroadcast
from controller.areas import Circle, Point, smallest_target, villages_by_codes, villages_in_shapes
from controller.auth import Principal, Role
from controller.broadcasts import MAX_EXPIRY_S, BroadcastIn, BroadcastService
from controller.db import Database
from controller.errors import ApiError
from controller.events import ApprovalRequested, EventHub
from controller.models import Broadcast
from controller.settings import Settings
from controller.targets import TargetsIn, resolve
from controller.warnings.models import UpstreamMessage, UpstreamSource
from dalaba.protocol import now_ms

log = logging.getLogger(__name__)

MsgType = Literal["alert", "update", "cancel", "ack", "error"]
Status = Literal["actual", "exercise", "test", "system", "draft"]
Outcome = Literal[
    "played", "review", "recorded", "refused", "no_area", "cancelled", "duplicate", "failed"
]

# Reason codes (the console translates them: web/js/i18n.js "upstream.reason.*").
REASONS = {
    "sent": "sent to the terminals",
    "review_mode": "the source is in review mode: waits for an officer",
    "source_hold_level": "the source holds warnings of this level for an officer",
    "draft": "status Draft is never acted on",
    "test": "status Test: recorded, played nowhere",
    "system": "status System: recorded, played nowhere",
    "ack": "an acknowledgement: recorded",
    "error": "an error report: recorded",
    "no_area": "the area covers none of the county's villages",
    "no_terminal": "no terminal is installed in the area",
    "cancelled": "the referenced broadcasts were cancelled",
    "nothing_to_cancel": "nothing the references name is still playing or waiting",
    "duplicate": "this message was received before",
    "source_unknown": "no such source, or it is disabled",
    "expired": "the warning expired before it arrived",
    "broadcast_refused": "the broadcast was refused (see detail)",
}

# Event words -> the announcement category (its chime and voice; controller/speech).
_CATEGORY_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("typhoon", ("台风", "typhoon", "hurricane", "cyclone")),
    ("earthquake", ("地震", "earthquake", "tsunami", "海啸")),
    ("forest_fire", ("森林火", "山火", "火险", "wildfire", "forest fire", "fire")),
    ("flood", ("暴雨", "洪", "山洪", "内涝", "水位", "flood", "rain", "storm", "泥石流", "滑坡")),
    ("epidemic", ("疫", "epidemic", "disease", "health")),
)


@dataclass
class IncomingWarning:
    source_id: str
    protocol: Literal["cap", "ebm"]
    identifier: str
    sender: str
    sent: str
    msg_type: MsgType
    status: Status
    raw: bytes
    content_type: str
    references: list[str] = field(default_factory=list)
    level: int | None = None  # direct level 1-4 (EBM); else from severity & co
    severity: str | None = None  # CAP words: Extreme Severe Moderate Minor Unknown
    urgency: str | None = None
    certainty: str | None = None
    event: str = ""
    category_hint: str = ""  # CAP <category> (Met, Geo, Fire, Health, ...)
    language: str = ""
    headline: str = ""
    description: str = ""
    instruction: str = ""
    audio_url: str | None = None  # not played yet: spoken from the text (docs/upstream.md)
    # Audio the front end already fetched, checked and stored (the EBM's own recording,
    # controller/upstream): played instead of the spoken text.
    media_id: str | None = None
    area_codes: list[str] = field(default_factory=list)
    polygons: list[list[Point]] = field(default_factory=list)
    circles: list[Circle] = field(default_factory=list)
    area_desc: str = ""
    starts_at_ms: int | None = None
    expires_at_ms: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # shown in the inbox


@dataclass(frozen=True)
class IntakeOutcome:
    message_id: str
    outcome: Outcome
    reason: str
    broadcast_id: str | None = None
    approval_id: str | None = None
    villages: int = 0
    cancelled: tuple[str, ...] = ()
    detail: str = ""

    def view(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "outcome": self.outcome,
            "reason": self.reason,
            "message": REASONS.get(self.reason, self.reason)
            + (f": {self.detail}" if self.detail else ""),
            "broadcast_id": self.broadcast_id,
            "approval_id": self.approval_id,
            "villages": self.villages,
            "cancelled": list(self.cancelled),
        }


@dataclass(frozen=True)
class IntakeContext:
    db: Database
    broadcasts: BroadcastService
    settings: Settings
    events: EventHub

    @classmethod
    def from_app(cls, app: web.Application) -> IntakeContext:
        # Here, not at the top: controller.api imports the front ends, which import this.
        from controller.api import keys

        return cls(app[keys.DB], app[keys.BROADCASTS], app[keys.SETTINGS], app[keys.EVENTS])


def warning_levels(settings: Settings, warning: IncomingWarning) -> tuple[str, int | None]:
    """(priority, level): a direct level wins; else CAP severity by `cap_severity_levels`
    (Extreme 1 red, Severe 2 orange, Moderate 3 yellow, Minor 4 blue, as GB/T 35965
    pairs them), made a notice without level when urgency or certainty is one of
    `cap_notice_urgencies` / `cap_notice_certainties` (Past, Unlikely)."""
    if warning.level is not None:
        return "emergency", warning.level
    level = settings.cap_severity_levels.get(warning.severity or "Unknown")
    if (
        level is None
        or (warning.urgency or "") in settings.cap_notice_urgencies
        or (warning.certainty or "") in settings.cap_notice_certainties
    ):
        return "notice", None
    return "emergency", level


def category_of(warning: IncomingWarning) -> str:
    words = f"{warning.event} {warning.headline} {warning.category_hint}".lower()
    for category, keys_ in _CATEGORY_WORDS:
        if any(k in words for k in keys_):
            return category
    return "other"


def spoken_text(warning: IncomingWarning, max_chars: int) -> str:
    """Headline, description, instruction: each once, the description cut to fit (the
    headline and what to do matter most when the text is too long to speak whole)."""
    head = warning.headline.strip()
    desc = warning.description.strip()
    instr = warning.instruction.strip()
    parts = [x for x in (head, desc, instr) if x]
    if desc.startswith(head) and head:
        parts = [x for x in (desc, instr) if x]  # the description repeats the headline
    text = "\n".join(parts)
    if len(text) > max_chars and desc:
        room = max(0, max_chars - len(head) - len(instr) - 3)
        text = "\n".join(x for x in (head, desc[:room] + "…", instr) if x)
    return text[:max_chars]


def _new_message_id() -> str:
    return "um-" + uuid.uuid4().hex[:16]


async def intake(ctx: IntakeContext, warning: IncomingWarning) -> IntakeOutcome:
    """Decide what `warning` becomes, act, store it verbatim with the outcome."""
    db = ctx.db
    message_id = _new_message_id()
    received = now_ms()
    row = UpstreamMessage(
        id=message_id,
        source_id=warning.source_id,
        protocol=warning.protocol,
        received_ms=received,
        identifier=warning.identifier,
        sender=warning.sender,
        sent=warning.sent,
        msg_type=warning.msg_type,
        status=warning.status,
        references=list(warning.references),
        headline=warning.headline[:200],
        drill=warning.status == "exercise",
        starts_ms=warning.starts_at_ms,
        expires_ms=warning.expires_at_ms,
        content_type=warning.content_type,
        raw=warning.raw,
        detail={**warning.detail, "area_desc": warning.area_desc, "event": warning.event},
    )
    outcome = await _decide(ctx, warning, row)

    def store(session: Session) -> None:
        row.outcome = outcome.outcome
        row.reason = outcome.reason
        row.broadcast_id = outcome.broadcast_id
        row.approval_id = outcome.approval_id
        row.cancelled = list(outcome.cancelled)
        if outcome.detail:
            row.detail = {**row.detail, "error": outcome.detail}
        session.add(row)
        audit.record(
            session,
            warning.source_id,
            f"upstream.{warning.protocol}",
            message_id,
            identifier=warning.identifier,
            msg_type=warning.msg_type,
            status=warning.status,
            outcome=outcome.outcome,
            reason=outcome.reason,
            broadcast=outcome.broadcast_id,
        )

    await db.run(store)
    log.info(
        "upstream %s %s from %s (%s %s): %s (%s)",
        warning.protocol,
        warning.identifier,
        warning.source_id,
        warning.status,
        warning.msg_type,
        outcome.outcome,
        outcome.reason,
    )
    return outcome


async def _decide(
    ctx: IntakeContext, warning: IncomingWarning, row: UpstreamMessage
) -> IntakeOutcome:
    mid = row.id

    def done(outcome: Outcome, reason: str, **kw: Any) -> IntakeOutcome:
        return IntakeOutcome(mid, outcome, reason, **kw)

    source = await ctx.db.run(lambda s: s.get(UpstreamSource, warning.source_id))
    if source is None or not source.enabled:
        return done("refused", "source_unknown")
    row.mode = source.mode
    previous = await ctx.db.run(lambda s: _earlier_copy(s, warning))
    if previous is not None:
        return done(
            "duplicate",
            "duplicate",
            broadcast_id=previous.broadcast_id,
            approval_id=previous.approval_id,
            detail=previous.id,
        )
    if warning.status == "draft":
        return done("refused", "draft")
    if warning.msg_type in ("ack", "error"):
        return done("recorded", warning.msg_type)
    if warning.status in ("test", "system"):
        return done("recorded", warning.status)

    principal = Principal(warning.source_id, Role.UPSTREAM).for_warning_intake()
    cancelled: tuple[str, ...] = ()
    if warning.msg_type in ("update", "cancel"):
        cancelled = await _cancel_referenced(ctx, principal, warning)
        if warning.msg_type == "cancel":
            return done(
                "cancelled" if cancelled else "recorded",
                "cancelled" if cancelled else "nothing_to_cancel",
                cancelled=cancelled,
            )

    if warning.expires_at_ms is not None and warning.expires_at_ms <= now_ms() + 10_000:
        return done("recorded", "expired", cancelled=cancelled)

    village_ids = await ctx.db.run(lambda s: _villages_of(s, warning))
    row.village_ids = sorted(village_ids)
    if not village_ids:
        return done("no_area", "no_area", cancelled=cancelled)
    priority, level = warning_levels(ctx.settings, warning)
    row.priority, row.level = priority, level
    text = spoken_text(warning, ctx.settings.max_text_chars)
    row.text = text
    if not text and warning.media_id is None:
        return done("refused", "broadcast_refused", detail="no text to speak", cancelled=cancelled)
    targets = await ctx.db.run(lambda s: smallest_target(s, village_ids))
    now = now_ms()
    start_at = warning.starts_at_ms if (warning.starts_at_ms or 0) > now + 5_000 else None
    expires_in_s = None
    if warning.expires_at_ms is not None:
        expires_in_s = max(
            10, min(MAX_EXPIRY_S, (warning.expires_at_ms - (start_at or now)) // 1000)
        )
    body = BroadcastIn(
        text=None if warning.media_id else text,
        media_id=warning.media_id,
        title=(warning.headline or text)[:100],
        category=category_of(warning),
        priority=priority,  # type: ignore[arg-type]
        level=level,
        drill=warning.status == "exercise",
        targets=TargetsIn.model_validate(targets),
        start_at=start_at,
        expires_in_s=expires_in_s,
    )
    counts = {"villages": len(village_ids), "cancelled": cancelled}
    held_by = None
    if source.mode == "review":
        held_by = "review_mode"
    elif not body.drill and level is not None and level in (source.hold_levels or []):
        held_by = "source_hold_level"
    try:
        if held_by is not None:
            resolved = await ctx.db.run(lambda s: resolve(s, body.targets, principal))
            if not resolved.device_ids:
                return done("no_area", "no_terminal", **counts)
            townships = sorted(
                {t for t in await ctx.db.run(lambda s: _townships_of(s, village_ids))}
            )
            view = await ctx.broadcasts.request_approval(
                principal,
                body,
                resolved,
                reaches=townships,
                why={
                    "upstream": mid,
                    "source": source.id,
                    "source_name": source.name,
                    "reason": held_by,
                    "message": REASONS[held_by],
                    "identifier": warning.identifier,
                    "sender": warning.sender,
                    "sent": warning.sent,
                    "cap_text": warning.raw.decode("utf-8", "replace")[:20_000]
                    if warning.protocol == "cap"
                    else "",
                    "village_ids": sorted(village_ids),
                },
                upstream=mid,
            )
            return done("review", held_by, approval_id=view["id"], **counts)
        broadcast = await ctx.broadcasts.create(principal, body)
    except ApiError as exc:
        reason = "no_terminal" if "no terminal" in exc.message else "broadcast_refused"
        outcome: Outcome = "no_area" if reason == "no_terminal" else "failed"
        return done(outcome, reason, detail=exc.message[:300], **counts)
    return done("played", "sent", broadcast_id=broadcast.id, **counts)


def _earlier_copy(session: Session, warning: IncomingWarning) -> UpstreamMessage | None:
    """The same message received before (same source, sender, identifier, type), unless
    that one was refused: a sender may resend after fixing a refusal."""
    return session.exec(
        select(UpstreamMessage)
        .where(UpstreamMessage.source_id == warning.source_id)
        .where(UpstreamMessage.identifier == warning.identifier)
        .where(UpstreamMessage.sender == warning.sender)
        .where(UpstreamMessage.msg_type == warning.msg_type)
        .where(col(UpstreamMessage.outcome).not_in(["refused", "failed"]))
        .order_by(col(UpstreamMessage.received_ms).desc())
    ).first()


def _villages_of(session: Session, warning: IncomingWarning) -> set[str]:
    found: set[str] = set()
    for covered in villages_by_codes(session, warning.area_codes).values():
        found |= covered
    return found | villages_in_shapes(session, warning.polygons, warning.circles)


def _townships_of(session: Session, village_ids: Sequence[str] | set[str]) -> list[str]:
    from controller.models import Village

    return list(
        session.exec(
            select(Village.township_id).where(col(Village.id).in_(list(village_ids))).distinct()
        ).all()
    )


async def _cancel_referenced(
    ctx: IntakeContext, principal: Principal, warning: IncomingWarning
) -> tuple[str, ...]:
    """Cancel what the referenced messages of this source started: their broadcasts
    still active, their requests still waiting for review. Returns what was cancelled
    (broadcast ids, and approval ids of rejected requests)."""
    if not warning.references:
        return ()

    def find(session: Session) -> tuple[list[str], list[str]]:
        earlier = session.exec(
            select(UpstreamMessage)
            .where(UpstreamMessage.source_id == warning.source_id)
            .where(col(UpstreamMessage.identifier).in_(warning.references))
        ).all()
        approvals = [m.approval_id for m in earlier if m.approval_id]
        broadcasts = {m.broadcast_id for m in earlier if m.broadcast_id}
        waiting = []
        for req in session.exec(
            select(PendingBroadcast).where(col(PendingBroadcast.id).in_(approvals))
        ):
            if req.broadcast_id:
                broadcasts.add(req.broadcast_id)  # released by an officer since
            elif req.status == "pending":
                req.status = "rejected"
                req.decided_by = warning.source_id
                req.decided_ms = now_ms()
                req.reason = f"superseded by {warning.msg_type} {warning.identifier}"
                session.add(req)
                waiting.append(req.id)
        active = session.exec(
            select(Broadcast.id)
            .where(col(Broadcast.id).in_(sorted(broadcasts)))
            .where(Broadcast.status == "active")
            .where(col(Broadcast.expires_at_ms) > now_ms())
        ).all()
        return list(active), waiting

    active, rejected = await ctx.db.run(find)
    for request_id in rejected:
        ctx.events.emit(ApprovalRequested(request_id=request_id, change="rejected"))
    done = []
    for broadcast_id in active:
        try:
            await ctx.broadcasts.cancel(principal, broadcast_id)
            done.append(broadcast_id)
        except ApiError as exc:  # expired or cancelled meanwhile: nothing left to stop
            log.info("upstream cancel of %s: %s", broadcast_id, exc.message)
    return (*done, *rejected)
