"""Broadcasts: validate, render, record, sign and dispatch; cancel; expire.

A broadcast is one announcement to a set of terminals; each terminal's progress is a
`Delivery` that only the terminal's own reports move forward ("sent" is never shown as
"played"). The controller infers only two endings itself: a delivery never heard of
before the broadcast expired, and one cancelled before it reached the terminal.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import case
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, func, select

from controller import audit
from controller import deliveries as dm
from controller.approvals import (
    ApprovalRequired,
    PendingBroadcast,
    Reach,
    counted,
    new_id,
    officer_reach,
    pending_view,
)
from controller.auth import Principal
from controller.db import Database
from controller.dispatch import Dispatcher
from controller.errors import ApiError, bad_request, forbidden, not_found
from controller.events import ApprovalRequested, BroadcastChanged, DeliveryChanged, Event, EventHub
from controller.media import MediaStore, fits_inline, media_ref, with_inline
from controller.models import AuditEntry, Broadcast, Delivery, Device, Media, Township, User
from controller.prepositioning import media_in_place, staged_everywhere
from controller.reasons import with_code
from controller.settings import Settings
from controller.speech import AnnouncementRenderer, AnnouncementRequest, RenderedAnnouncement
from controller.speech.types import known_category
from controller.targets import TargetsIn, resolve, topics_for
from controller.templates import TEMPLATE_ID_PATTERN, fill_content
from controller.timefmt import iso, parse_instant
from dalaba import protocol as p

log = logging.getLogger(__name__)

MAX_EXPIRY_S = 7 * 24 * 3600
# A live paging session (controller/paging_live.py) is a broadcast with these `voices`;
# when it ends its expiry is set at most this far ahead.
LIVE_PAGING_VOICES = "live"
LIVE_ENDED_EXPIRY_MS = 30_000
MAX_START_AHEAD_MS = 7 * 24 * 3600 * 1000
START_PAST_TOLERANCE_MS = 5_000


Language = Literal["cmn", "yue"]


# Deliveries in one answer of GET /api/broadcasts/{id} (about 650 KB with histories).
DELIVERY_PAGE = 1000
MAX_DELIVERY_PAGE = 5000


def _mandarin_only() -> list[Language]:
    return ["cmn"]


class BroadcastIn(BaseModel):
    """The body of POST /api/broadcasts."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    media_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    # A stored template filled from `params` (controller/templates.py); its defaults
    # (category, priority, level, languages, repeat, title) apply to fields not given.
    template: str | None = Field(default=None, pattern=TEMPLATE_ID_PATTERN)
    # Values are checked against the template's placeholders (strings or numbers).
    params: dict[str, Any] = Field(default_factory=dict, max_length=50)
    title: str = Field(default="", max_length=100)
    # Required unless a template gives them (checked in `templates.fill_content`).
    category: str | None = None
    priority: Literal["emergency", "notice", "routine"] | None = None
    level: int | None = Field(default=None, ge=1, le=4)
    targets: TargetsIn
    start_at: str | int | None = None
    expires_in_s: int | None = Field(default=None, ge=10, le=MAX_EXPIRY_S)
    drill: bool = False
    languages: list[Language] = Field(default_factory=_mandarin_only, min_length=1)
    repeat: int | None = Field(default=None, ge=1, le=10)
    # A correction or update of an earlier broadcast: its id (shown on both boards).
    corrects: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str | None) -> str | None:
        return None if value is None else known_category(value)

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value.strip() if value is not None else None

    @model_validator(mode="after")
    def _consistent(self) -> BroadcastIn:
        if [self.text, self.media_id, self.template].count(None) != 2:
            raise ValueError("give exactly one of text, media_id or template")
        if self.params and self.template is None:
            raise ValueError("params: only with a template")
        if self.template is not None:
            return self  # level rules are checked once the template's defaults apply
        if self.priority == "emergency" and self.level is None:
            raise ValueError("level: required for emergencies (1 = I red ... 4 = IV blue)")
        if self.priority is not None and self.priority != "emergency" and self.level is not None:
            raise ValueError("level: only emergencies have a level")
        return self


def recording_usable_by(session: Session, sha256: str, principal: Principal) -> bool:
    """Least privilege for uploaded recordings: county-wide roles may use any; township
    staff only those uploaded by someone of their own township (the upload's audit entry
    is the record of who brought it in)."""
    if principal.county_wide:
        return True
    uploaders = session.exec(
        select(AuditEntry.actor).where(
            AuditEntry.action == "media.upload", AuditEntry.target == sha256
        )
    ).all()
    if principal.user in uploaders:
        return True
    townships = session.exec(select(User.township_id).where(col(User.name).in_(uploaders))).all()
    return principal.township_id is not None and principal.township_id in townships


class BroadcastService:
    def __init__(
        self,
        db: Database,
        media: MediaStore,
        renderer: AnnouncementRenderer,
        dispatcher: Dispatcher,
        settings: Settings,
        events: EventHub | None = None,
    ) -> None:
        self._db = db
        self._media = media
        self._renderer = renderer
        self._dispatcher = dispatcher
        self._settings = settings
        self._events = events or EventHub()
        self._sweeper: asyncio.Task[None] | None = None

    def _emit(self, *events: Event) -> None:
        for event in events:
            self._events.emit(event)

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_loop())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    # ------------------------------------------------------------------ create

    async def create(
        self,
        principal: Principal,
        body: BroadcastIn,
        *,
        approval: PendingBroadcast | None = None,
    ) -> Broadcast:
        """Send a broadcast; raises `ApprovalRequired` (HTTP 202) when the two-person rule
        holds it back. `approval` is the approved request: its audio is what is sent."""
        principal.require_broadcast()
        if body.text is not None and len(body.text) > self._settings.max_text_chars:
            raise bad_request(
                "text",
                f"longer than {self._settings.max_text_chars} characters",
                "text_too_long",
                {"max": self._settings.max_text_chars},
            )
        t0 = p.now_ms()
        requested_start = None
        if body.start_at is not None:
            requested_start = parse_instant(body.start_at, "start_at")
            if requested_start < t0 - START_PAST_TOLERANCE_MS:
                raise bad_request("start_at", "is in the past", "start_at_past")
            if requested_start > t0 + MAX_START_AHEAD_MS:
                raise bad_request("start_at", "is more than 7 days ahead", "start_at_too_far")

        resolved = await self._db.run(lambda s: resolve(s, body.targets, principal))
        if not resolved.device_ids:
            raise bad_request(
                "targets", "no terminal is installed in the chosen area", "no_terminals_in_area"
            )
        template = body.template
        body = await fill_content(
            self._db, body, resolved.target, max_text_chars=self._settings.max_text_chars
        )
        assert body.category is not None and body.priority is not None
        category, priority = body.category, body.priority

        if approval is None:
            # A warning source's own thresholds (its mode and held levels, applied by
            # controller/warnings/intake.py) stand in for the officers' rule: a source
            # is not an officer whose sends add up across the county.
            if not principal.warning_intake:
                await self._hold_for_second_person(principal, body, resolved)
            media, voices = await self._media_for(body, principal)
        else:
            approved = await self._db.run(lambda s: s.get(Media, approval.media_sha256))
            if approved is None:
                raise bad_request("media_id", "the approved audio is gone", "media_gone")
            media, voices = approved, approval.voices
        ref = media_ref(media, self._settings.media_mirrors)
        # A short emergency's audio travels inside the signed command: a terminal that
        # holds the command holds the audio, so nothing is fetched and no fetch lead is
        # needed (Settings.inline_media_max_bytes). Other audio is fetched (and cached).
        inline = (
            await self._media.read_small(media, self._settings.inline_media_max_bytes)
            if body.priority == "emergency"
            else None
        )
        if inline is not None and fits_inline(with_inline(ref, inline), resolved.target):
            ref, media_is_new = with_inline(ref, inline), False
        elif approval is not None:
            # Staged on the terminals while it waited (controller/prepositioning.py): in
            # place when every targeted terminal online reported holding it.
            media_is_new = not await self._db.run(
                lambda s: staged_everywhere(s, approval.id, media.sha256, resolved.device_ids)
            )
        else:
            media_is_new = (
                media.created_ms >= t0
                # uploaded or previewed audio that no terminal has been sent yet
                or not await self._db.run(
                    lambda s: media_in_place(s, media.sha256, resolved.device_ids)
                )
            )
        now = p.now_ms()
        lead = self._settings.sync_lead_ms + (self._settings.fetch_lead_ms if media_is_new else 0)
        start_at = max(requested_start or 0, now + lead)
        expires_in_s = body.expires_in_s or self._settings.default_expiry_s[body.priority]
        expires_at = start_at + expires_in_s * 1000
        # A recording has no text: its upload title names it on the board and records.
        title = body.title or (body.text or media.text or "")[:40]
        play = p.PlayBody(
            broadcast_id=uuid.uuid4().hex,
            priority=p.Priority(body.priority),
            level=body.level,
            category=body.category,
            drill=body.drill,
            title=title,
            media=ref,
            start_at=start_at,
            volume=100 if body.priority == "emergency" else None,
        )
        command = p.Command.new(play, resolved.target, expires_at)
        approved_by = (
            {"approval": approval.id, "approved_by": approval.decided_by} if approval else {}
        )

        def record(session: Session) -> Broadcast:
            if body.corrects is not None and session.get(Broadcast, body.corrects) is None:
                raise bad_request(
                    "corrects",
                    f"unknown broadcast {body.corrects!r}",
                    "unknown_broadcast",
                    {"id": body.corrects},
                )
            broadcast = Broadcast(
                id=play.broadcast_id,
                created_ms=now,
                created_by=principal.user,
                title=title,
                text=body.text or "",
                media_sha256=media.sha256,
                category=category,
                priority=priority,
                level=body.level,
                drill=body.drill,
                targets=body.targets.model_dump(),
                target=resolved.target.model_dump(mode="json"),
                start_at_ms=start_at,
                expires_at_ms=expires_at,
                command_id=command.id,
                voices=voices,
                device_count=len(resolved.device_ids),
                corrects_id=body.corrects,
                approved_by=approval.decided_by if approval else None,
            )
            session.add(broadcast)
            session.flush()
            add_deliveries(session, broadcast.id, resolved.device_ids, now)
            audit.record(
                session,
                principal,
                "broadcast.create",
                broadcast.id,
                category=body.category,
                priority=body.priority,
                level=body.level,
                drill=body.drill,
                targets=body.targets.model_dump(),
                devices=len(resolved.device_ids),
                text=(body.text or "")[:200],
                template=template,
                **approved_by,
            )
            return broadcast

        broadcast = await self._db.run(record)
        # The sync lead counts from the publish, not from the request: recording
        # thousands of deliveries (or waiting for a busy database) must not eat into
        # the terminals' margin, or they would all start late.
        published_at = p.now_ms()
        if published_at + lead > start_at:
            start_at = published_at + lead
            expires_at = start_at + expires_in_s * 1000
            play = play.model_copy(update={"start_at": start_at})
            command = command.model_copy(
                update={"body": play, "issued_at": published_at, "expires_at": expires_at}
            )
            broadcast.start_at_ms, broadcast.expires_at_ms = start_at, expires_at
        published = await self._dispatcher.send(command, resolved.topics)
        broadcast.dispatch = (
            dm.DispatchStatus.PUBLISHED if published else dm.DispatchStatus.PENDING
        ).value
        await self._db.run(
            lambda s: _set_dispatch(
                s, broadcast.id, broadcast.dispatch, broadcast.start_at_ms, broadcast.expires_at_ms
            )
        )
        log.info(
            "broadcast %s by %s to %d terminals (%s, %s)",
            broadcast.id,
            principal.user,
            len(resolved.device_ids),
            body.priority,
            "drill" if body.drill else "real",
        )
        self._emit(
            BroadcastChanged(
                broadcast_id=broadcast.id,
                change="created",
                status=dm.BroadcastStatus(broadcast.status),
                actor=principal.user,
            )
        )
        return broadcast

    async def _hold_for_second_person(
        self, principal: Principal, body: BroadcastIn, resolved: Any
    ) -> None:
        """Raise `ApprovalRequired` when this request, with the same officer's counted
        sends around its start (controller/approvals.py), reaches the threshold."""
        settings = self._settings
        if not counted(settings, priority=body.priority, level=body.level, drill=body.drill):
            return
        around = parse_instant(body.start_at, "start_at") if body.start_at else p.now_ms()

        def reach(session: Session) -> Reach:
            everyone = sorted(session.exec(select(Township.id)).all())
            if resolved.target.all:
                own = everyone
            else:
                own = list(
                    session.exec(
                        select(Device.township_id)
                        .where(col(Device.id).in_(resolved.device_ids))
                        .distinct()
                    ).all()
                )
            return officer_reach(
                session,
                settings,
                user=principal.user,
                own=own,
                total=len(everyone),
                around_ms=around,
            )

        counted_reach = await self._db.run(reach)
        if not counted_reach.held:
            return
        view = await self.request_approval(
            principal,
            body,
            resolved,
            reaches=list(counted_reach.own),
            why=counted_reach.view(),
            townships=counted_reach.together,
            counted_sends=list(counted_reach.sends),
        )
        log.info("emergency %s by %s waits for a second officer", view["id"], principal.user)
        raise ApprovalRequired(view)

    async def request_approval(
        self,
        principal: Principal,
        body: BroadcastIn,
        resolved: Any,
        *,
        reaches: list[str],
        why: dict[str, Any],
        **audit_detail: Any,
    ) -> dict[str, Any]:
        """Render `body` and put it in the approvals queue (what `why` says is shown to
        the officer). The two-person rule and warnings in review mode come here."""
        settings = self._settings
        media, voices = await self._media_for(body, principal)
        now = p.now_ms()

        def record(session: Session) -> dict[str, Any]:
            row = PendingBroadcast(
                id=new_id(),
                created_ms=now,
                expires_ms=now + settings.approval_timeout_s * 1000,
                requested_by=principal.user,
                requested_role=principal.role.value,
                requested_township=principal.township_id,
                body=body.model_dump(mode="json"),
                media_sha256=media.sha256,
                voices=voices,
                device_count=len(resolved.device_ids),
                townships=reaches,
                why=why,
            )
            session.add(row)
            audit.record(
                session,
                principal,
                "broadcast.request_approval",
                row.id,
                level=body.level,
                category=body.category,
                targets=body.targets.model_dump(),
                devices=len(resolved.device_ids),
                text=(body.text or "")[:200],
                **audit_detail,
            )
            return pending_view(row)

        view = await self._db.run(record)
        self._emit(ApprovalRequested(request_id=view["id"]))
        return view

    async def preview(
        self, body: BroadcastIn, target: p.Target | None, principal: Principal | None = None
    ) -> tuple[BroadcastIn, Media, str]:
        """The audio `create` would send for `body` (to `target`, whose townships decide
        the languages), rendered and stored content-addressed but sent nowhere."""
        body = await fill_content(
            self._db, body, target, max_text_chars=self._settings.max_text_chars
        )
        media, voices = await self._media_for(body, principal)
        return body, media, voices

    async def _media_for(
        self, body: BroadcastIn, principal: Principal | None = None
    ) -> tuple[Media, str]:
        if body.media_id is not None:
            media_id = body.media_id
            row = await self._db.run(lambda s: s.get(Media, media_id))
            if row is None:
                raise bad_request("media_id", "unknown media", "unknown_media")
            # The upper-level platform's audio (controller/upstream) is its programme as
            # it wants it heard: played as sent, not framed again like a local recording.
            if body.priority == "emergency" and row.source != "upstream":
                return await self._recorded_emergency(body, row, principal)
            return row, row.voices
        assert body.text is not None
        assert body.category is not None and body.priority is not None  # fill_content
        try:
            request = AnnouncementRequest(
                text=body.text,
                category=body.category,
                priority=body.priority,
                level=body.level,
                drill=body.drill,
                languages=tuple(body.languages),
                repeat=body.repeat,
            )
        except ValueError as exc:
            field, _, message = str(exc).partition(": ")
            raise bad_request(field if message else "text", message or str(exc)) from None
        return await self._store_rendered(await self._renderer.render(request), body.text)

    async def _store_rendered(self, rendered: RenderedAnnouncement, text: str) -> tuple[Media, str]:
        voices = ",".join(rendered.voices)
        row = await self._media.put(
            rendered.audio,
            mime=rendered.mime,
            duration_ms=rendered.duration_ms,
            source="speech",
            voices=voices,
            text=text,
        )
        return row, voices

    async def _recorded_emergency(
        self, body: BroadcastIn, recording: Media, principal: Principal | None
    ) -> tuple[Media, str]:
        """An emergency in a recorded voice: only an uploaded recording the caller may use,
        composed with the emergency signal and drill framing like a spoken one (the
        recording alone would reach villages with neither)."""
        if recording.source != "upload":
            raise bad_request("media_id", "not an uploaded recording", "media_not_recording")
        if principal is not None and not await self._db.run(
            lambda s: recording_usable_by(s, recording.sha256, principal)
        ):
            raise bad_request(
                "media_id", "a recording uploaded outside your township", "media_not_yours"
            )
        data = await asyncio.to_thread(self._media.path_for(recording.sha256).read_bytes)
        rendered = await self._renderer.render_recording(
            data,
            recording_sha256=recording.sha256,
            priority="emergency",
            level=body.level,
            drill=body.drill,
            languages=body.languages,
            repeat=body.repeat,
        )
        return await self._store_rendered(rendered, recording.text)

    # ------------------------------------------------------------------ read

    async def get(
        self,
        principal: Principal,
        broadcast_id: str,
        *,
        deliveries: bool = True,
        limit: int = DELIVERY_PAGE,
        after: str | None = None,
        state: str | None = None,
    ) -> dict[str, Any]:
        """The broadcast with a count per state and, unless `deliveries` is False (a
        county of thousands of terminals polled for progress), one page of its
        deliveries: `limit` of them by device id after `after` (optionally only those in
        `state`), with `deliveries_next` the cursor for the next page (None at the end).
        At 10,000 terminals every delivery with its history is 6.5 MB: a page is not."""
        scope = principal.township_scope()

        def load(session: Session) -> dict[str, Any]:
            broadcast = session.get(Broadcast, broadcast_id)
            if broadcast is None:
                raise not_found(f"broadcast {broadcast_id}")
            view = counted_view(session, broadcast, scope)
            outside = scope is not None and not view["reach"]["targeted"]
            if outside and broadcast.created_by != principal.user:
                raise forbidden("this broadcast did not reach your township")
            view["corrections"] = [
                {"id": c.id, "title": c.title, "created_at": iso(c.created_ms)}
                for c in session.exec(
                    select(Broadcast)
                    .where(Broadcast.corrects_id == broadcast.id)
                    .order_by(col(Broadcast.created_ms))
                ).all()
            ]
            if not deliveries:
                return view
            query = (
                # Columns, not ORM objects: a page of a thousand, with no JSON parsed.
                sa_select(
                    *(col(c) for c in (Delivery.device_id, Delivery.state, Delivery.reason)),
                    *(col(c) for c in (Delivery.updated_ms, Delivery.attempt)),
                    col(Delivery.state_source),
                    col(Device.village_id),
                    col(Device.township_id),
                )
                .where(col(Delivery.broadcast_id) == broadcast_id)
                .where(col(Delivery.device_id) == col(Device.id))
                .order_by(col(Delivery.device_id))
                .limit(limit + 1)
            )
            if scope is not None:
                query = query.where(col(Device.township_id) == scope)
            if after is not None:
                query = query.where(col(Delivery.device_id) > after)
            if state is not None:
                query = query.where(col(Delivery.state) == state)
            rows = list(session.execute(query).all())
            more = len(rows) > limit
            rows = rows[:limit]
            view["deliveries"] = delivery_views(session, broadcast_id, rows)
            view["deliveries_next"] = rows[-1].device_id if more and rows else None
            return view

        # One snapshot: the counts and the page of deliveries from the same moment.
        return await self._db.run(load, snapshot=True)

    async def list(self, principal: Principal, limit: int = 50) -> list[dict[str, Any]]:
        scope = principal.township_scope()

        def load(session: Session) -> list[dict[str, Any]]:
            query = (
                select(Broadcast)
                .where(Broadcast.status != "scheduled")  # coming schedule occurrences
                .order_by(col(Broadcast.created_ms).desc())
                .limit(limit)
            )
            if scope is not None:
                # Township staff see what they sent and what reached their township.
                reached = (
                    select(Delivery.broadcast_id)
                    .where(Delivery.device_id == Device.id)
                    .where(Device.township_id == scope)
                )
                query = query.where(
                    (col(Broadcast.created_by) == principal.user) | col(Broadcast.id).in_(reached)
                )
            return [broadcast_summary(b) for b in session.exec(query).all()]

        return await self._db.run(load)

    # ------------------------------------------------------------------ cancel

    async def cancel(self, principal: Principal, broadcast_id: str) -> dict[str, Any]:
        principal.require_broadcast()
        scope = principal.township_scope()

        def check(session: Session) -> Broadcast:
            broadcast = session.get(Broadcast, broadcast_id)
            if broadcast is None:
                raise not_found(f"broadcast {broadcast_id}")
            if scope is not None:
                outside = session.exec(
                    select(Delivery.id)
                    .where(Delivery.broadcast_id == broadcast_id)
                    .where(Delivery.device_id == Device.id)
                    .where(Device.township_id != scope)
                ).first()
                if outside is not None:
                    raise forbidden("this broadcast reaches beyond your township")
            if broadcast.status == "cancelled":
                raise ApiError(409, "already_cancelled", "broadcast: already cancelled")
            if broadcast.expires_at_ms <= p.now_ms():
                raise ApiError(409, "expired", "broadcast: already expired")
            return broadcast

        broadcast = await self._db.run(check)
        target = p.Target.model_validate(broadcast.target)
        command = p.Command.new(
            p.CancelBody(broadcast_id=broadcast.id, reason=f"cancelled by {principal.user}"),
            target,
            broadcast.expires_at_ms,
        )
        published = await self._dispatcher.send(command, topics_for(target))
        now = p.now_ms()

        def mark(session: Session) -> list[Event]:
            row = session.get(Broadcast, broadcast_id)
            assert row is not None
            row.status = dm.BroadcastStatus.CANCELLED.value
            row.cancelled_ms = now
            row.cancelled_by = principal.user
            # Terminals that never received it will find the cancel right behind the
            # broadcast in their queue; the ones already on it report for themselves.
            events = _apply_all(
                session,
                select(Delivery)
                .where(Delivery.broadcast_id == broadcast_id)
                .where(col(Delivery.state).in_(dm.NOT_REACHED)),
                p.DeliveryState.CANCELLED,
                dm.Cause.OPERATOR,
                now,
                "cancelled before it reached the terminal",
            )
            audit.record(session, principal, "broadcast.cancel", broadcast_id, published=published)
            return [
                *events,
                BroadcastChanged(
                    broadcast_id=broadcast_id,
                    change="cancelled",
                    status=dm.BroadcastStatus.CANCELLED,
                    actor=principal.user,
                ),
            ]

        self._emit(*await self._db.run(mark))
        return await self.get(principal, broadcast_id)

    # ------------------------------------------------------------------ resend

    async def resend(self, principal: Principal, broadcast_id: str) -> dict[str, Any]:
        """Send the same announcement again, as a new signed command, to the terminals
        it did not reach: deliveries that ended failed, expired or unknown. Within the
        broadcast's expiry; the terminals that played it are not asked again. A
        technician may resend (it reaches only terminals already targeted)."""
        principal.require_terminal_control()
        scope = principal.township_scope()
        now = p.now_ms()

        def load(session: Session) -> tuple[Broadcast, Media, list[str]]:
            broadcast = session.get(Broadcast, broadcast_id)
            if broadcast is None:
                raise not_found(f"broadcast {broadcast_id}")
            if scope is not None and _reaches_outside(session, broadcast_id, scope):
                raise forbidden("this broadcast reaches beyond your township")
            if broadcast.status == dm.BroadcastStatus.CANCELLED.value:
                raise ApiError(409, "cancelled", "broadcast: cancelled, nothing to resend")
            if broadcast.status == dm.BroadcastStatus.SCHEDULED.value:
                raise ApiError(409, "not_sent", "broadcast: not sent yet")
            if broadcast.expires_at_ms <= now + self._settings.sync_lead_ms:
                raise ApiError(409, "expired", "broadcast: already expired")
            devices = sorted(
                session.exec(
                    select(Delivery.device_id)
                    .where(Delivery.broadcast_id == broadcast_id)
                    .where(col(Delivery.state).in_(dm.RESENDABLE))
                ).all()
            )
            if not devices:
                raise ApiError(
                    409, "nothing_to_resend", "broadcast: every terminal played it or is waiting"
                )
            media = session.get(Media, broadcast.media_sha256)
            assert media is not None
            return broadcast, media, devices

        broadcast, media, devices = await self._db.run(load)
        attempt = broadcast.attempt + 1
        start_at = p.now_ms() + self._settings.sync_lead_ms + self._settings.fetch_lead_ms
        play = p.PlayBody(
            broadcast_id=broadcast.id,
            priority=p.Priority(broadcast.priority),
            level=broadcast.level,
            category=broadcast.category,
            drill=broadcast.drill,
            title=broadcast.title,
            media=media_ref(media, self._settings.media_mirrors),
            start_at=start_at,
            volume=100 if broadcast.priority == p.Priority.EMERGENCY.value else None,
            attempt=attempt,
            resend_of=broadcast.command_id or None,
        )
        target = p.Target(devices=tuple(devices))
        command = p.Command.new(play, target, broadcast.expires_at_ms)

        def record(session: Session) -> list[Event]:
            row = session.get(Broadcast, broadcast_id)
            assert row is not None
            row.attempt = attempt
            row.resends = [
                *row.resends,
                {
                    "attempt": attempt,
                    "command_id": command.id,
                    "at": now,
                    "by": principal.user,
                    "devices": len(devices),
                },
            ]
            offline = _offline_devices(session, devices)
            events: list[Event] = []
            for d in session.exec(
                dm.for_update(
                    session,
                    select(Delivery)
                    .where(Delivery.broadcast_id == broadcast_id)
                    .where(col(Delivery.device_id).in_(devices)),
                )
            ):
                applied = dm.apply(
                    d,
                    p.DeliveryState.OFFLINE if d.device_id in offline else p.DeliveryState.SENT,
                    dm.Cause.OPERATOR,
                    now=now,
                    reason=f"resent (attempt {attempt}) by {principal.user}",
                    attempt=attempt,
                )
                if applied is not None:
                    events.append(_delivery_event(session, applied))
            audit.record(
                session,
                principal,
                "broadcast.resend",
                broadcast_id,
                attempt=attempt,
                devices=len(devices),
                command_id=command.id,
            )
            return events

        events = await self._db.run(record)
        published = await self._dispatcher.send(command, topics_for(target))
        log.info(
            "broadcast %s resent (attempt %d) to %d terminals by %s%s",
            broadcast_id,
            attempt,
            len(devices),
            principal.user,
            "" if published else " (broker did not confirm yet)",
        )
        self._emit(
            *events,
            BroadcastChanged(
                broadcast_id=broadcast_id,
                change="resent",
                status=dm.BroadcastStatus(broadcast.status),
                actor=principal.user,
            ),
        )
        return await self.get(principal, broadcast_id, deliveries=False)

    # ------------------------------------------------------------------ expiry

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                events = await self._db.run(
                    lambda s: sweep(s, unknown_after_ms=int(self._settings.unknown_after_s * 1000))
                )
            except Exception:
                log.exception("delivery sweep failed")
                continue
            self._emit(*events)


def sweep(session: Session, *, unknown_after_ms: int, now: int | None = None) -> list[Event]:
    """Time's verdicts: expiry ends what still waits; a play that outlived its audio
    by `unknown_after_ms` without a word from the terminal is `unknown`."""
    now = p.now_ms() if now is None else now
    return sweep_expired(session, now) + sweep_silent_plays(session, now, unknown_after_ms)


def sweep_expired(session: Session, now: int | None = None) -> list[Event]:
    """Deliveries still waiting when their broadcast expired will never play."""
    now = p.now_ms() if now is None else now
    expired = session.exec(
        select(Broadcast)
        .where(
            col(Broadcast.status).in_(
                (dm.BroadcastStatus.ACTIVE.value, dm.BroadcastStatus.CANCELLED.value)
            )
        )
        .where(Broadcast.swept == False)  # noqa: E712 - SQL, not Python truthiness
        .where(col(Broadcast.expires_at_ms) <= now)
    ).all()
    events: list[Event] = []
    for broadcast in expired:
        broadcast.swept = True
        if broadcast.status == dm.BroadcastStatus.ACTIVE.value:
            broadcast.status = dm.BroadcastStatus.FINISHED.value
            events.append(
                BroadcastChanged(
                    broadcast_id=broadcast.id,
                    change="finished",
                    status=dm.BroadcastStatus.FINISHED,
                )
            )
        # An interrupted routine programme is not replayed (its schedule simply goes
        # on), so for routine items "preempted" is where the delivery ends.
        states = (
            dm.WAITING - {p.DeliveryState.PREEMPTED}
            if broadcast.priority == p.Priority.ROUTINE.value
            else dm.WAITING
        )
        # Locked (dm.for_update): a report applied meanwhile by the ingest batch is not
        # overwritten with `expired` decided from the state before it.
        for d in session.exec(
            dm.for_update(
                session,
                select(Delivery)
                .where(Delivery.broadcast_id == broadcast.id)
                .where(col(Delivery.state).in_(states)),
            )
        ):
            reason = (
                NEVER_REACHED
                if d.state in (p.DeliveryState.SENT.value, p.DeliveryState.OFFLINE.value)
                else "not played before expiry"
            )
            applied = dm.apply(d, p.DeliveryState.EXPIRED, dm.Cause.SWEEP, now=now, reason=reason)
            if applied is not None:
                events.append(_delivery_event(session, applied))
    return events


NEVER_REACHED = "never reached: the terminal did not receive it before expiry (offline?)"


def sweep_silent_plays(session: Session, now: int, unknown_after_ms: int) -> list[Event]:
    """`playing` long after the audio must have ended, and nothing from the terminal:
    it may have finished, or died mid-way. Say so (`unknown`), never `done`."""
    rows = session.exec(
        dm.for_update(
            session,
            select(Delivery, Media.duration_ms, Broadcast.voices, Broadcast.expires_at_ms)
            .where(Delivery.state == p.DeliveryState.PLAYING.value)
            .where(Delivery.broadcast_id == Broadcast.id)
            .where(Broadcast.media_sha256 == Media.sha256)
            .where(col(Delivery.updated_ms) < now - unknown_after_ms),
        )
    ).all()
    events: list[Event] = []
    for d, duration_ms, voices, expires_at_ms in rows:
        if d.updated_ms + duration_ms + unknown_after_ms > now:
            continue
        if voices == LIVE_PAGING_VOICES and expires_at_ms > now + LIVE_ENDED_EXPIRY_MS:
            # A live session still being spoken: its length is not known until it ends
            # (then its media is the recording, and its expiry is brought near).
            continue
        applied = dm.apply(
            d,
            p.DeliveryState.UNKNOWN,
            dm.Cause.SWEEP,
            now=now,
            reason="no report from the terminal since it started playing",
        )
        if applied is not None:
            events.append(_delivery_event(session, applied))
    return events


def _apply_all(
    session: Session,
    query: Any,
    to: p.DeliveryState,
    cause: dm.Cause,
    now: int,
    reason: str,
) -> list[Event]:
    events: list[Event] = []
    for d in session.exec(dm.for_update(session, query)):
        applied = dm.apply(d, to, cause, now=now, reason=reason)
        if applied is not None:
            events.append(_delivery_event(session, applied))
    return events


def _delivery_event(session: Session, applied: dm.Applied) -> DeliveryChanged:
    device = session.get(Device, applied.device_id)
    assert device is not None
    return DeliveryChanged(
        broadcast_id=applied.broadcast_id,
        device_id=applied.device_id,
        village_id=device.village_id,
        township_id=device.township_id,
        state=applied.state,
        previous=applied.previous,
        reason=applied.reason,
        at=applied.at,
        cause=applied.cause,
    )


def add_deliveries(session: Session, broadcast_id: str, device_ids: Any, now: int) -> None:
    """A new broadcast's deliveries: `sent`, or `offline` for a terminal known offline.
    Written in bulk (`deliveries.insert_new`): nothing per terminal before the publish
    but its row."""
    offline = _offline_devices(session, device_ids)
    dm.insert_new(
        session,
        broadcast_id,
        (
            (d, p.DeliveryState.OFFLINE if d in offline else p.DeliveryState.SENT)
            for d in device_ids
        ),
        now,
    )


def _offline_devices(session: Session, device_ids: Any) -> set[str]:
    ids = list(device_ids)
    found: set[str] = set()
    if len(ids) > 900:
        # A county or more: every offline terminal in one query (few, and indexed by
        # nothing better than a scan anyway) beats a dozen IN lists of 900.
        wanted = set(ids)
        offline = session.exec(select(Device.id).where(Device.online == False))  # noqa: E712
        return {d for d in offline if d in wanted}
    for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
        found.update(
            session.exec(
                select(Device.id)
                .where(col(Device.id).in_(ids[start : start + 900]))
                .where(Device.online == False)  # noqa: E712
            ).all()
        )
    return found


def _reaches_outside(session: Session, broadcast_id: str, township_id: str) -> bool:
    return (
        session.exec(
            select(Delivery.id)
            .where(Delivery.broadcast_id == broadcast_id)
            .where(Delivery.device_id == Device.id)
            .where(Device.township_id != township_id)
        ).first()
        is not None
    )


def _set_dispatch(
    session: Session,
    broadcast_id: str,
    dispatch: str,
    start_at_ms: int | None = None,
    expires_at_ms: int | None = None,
) -> None:
    row = session.get(Broadcast, broadcast_id)
    if row is not None:
        row.dispatch = dispatch
        if start_at_ms is not None and expires_at_ms is not None:
            row.start_at_ms, row.expires_at_ms = start_at_ms, expires_at_ms


def broadcast_summary(b: Broadcast) -> dict[str, Any]:
    return {
        "id": b.id,
        "title": b.title,
        "text": b.text,
        "category": b.category,
        "priority": b.priority,
        "level": b.level,
        "drill": b.drill,
        "targets": b.targets,
        "created_at": iso(b.created_ms),
        "created_by": b.created_by,
        "start_at": iso(b.start_at_ms),
        "expires_at": iso(b.expires_at_ms),
        "status": b.status,
        "dispatch": b.dispatch,
        "media_id": b.media_sha256,
        "voices": b.voices.split(",") if b.voices else [],
        "device_count": b.device_count,
        "cancelled_at": iso(b.cancelled_ms),
        "cancelled_by": b.cancelled_by,
        "corrects": b.corrects_id,
        "approved_by": b.approved_by,
        # The signed, normalised target: live views use it to tell who it reached.
        "target": b.target,
        "attempt": b.attempt,
        "resends": [{**r, "at": iso(r.get("at"))} for r in b.resends or []],
    }


def counted_view(session: Session, b: Broadcast, scope: str | None = None) -> dict[str, Any]:
    """The broadcast's summary with a count per state and its progress (within one
    township's terminals when `scope` is given): what the board shows without rows.
    The whole broadcast's counts are `BroadcastCount`'s few rows, kept with every
    transition; one township's are counted from its deliveries (a township is small)."""
    if scope is None:
        by_state = dm.counts(session, [b.id])[b.id]
        reached = by_state.pop(dm.REACHED, 0)
    else:
        reached_one = func.sum(case((col(Delivery.last_seq) > 0, 1), else_=0))
        query = (
            select(Delivery.state, func.count(), reached_one)
            .where(Delivery.broadcast_id == b.id)
            .where(Delivery.device_id == Device.id)
            .where(Device.township_id == scope)
            .group_by(col(Delivery.state))
        )
        rows = session.exec(query).all()
        by_state = {state: n for state, n, _ in rows}
        reached = sum(int(r or 0) for _, _, r in rows)
    view = broadcast_summary(b)
    view["summary"] = {st.value: by_state.get(st.value, 0) for st in p.DeliveryState}
    view.update(progress(b, by_state, reached))
    return view


def progress(b: Broadcast, by_state: dict[str, int], reached: int) -> dict[str, Any]:
    """What the board shows beside the counts: has it settled (nothing left to wait for
    but offline terminals), how many terminals answered (reach) and played (done), and
    how many a resend could still try."""
    targeted = sum(by_state.values())
    done = by_state.get(p.DeliveryState.DONE.value, 0)
    open_for_resend = b.status == dm.BroadcastStatus.ACTIVE.value and b.expires_at_ms > p.now_ms()
    return {
        "settled": b.status != dm.BroadcastStatus.SCHEDULED.value and dm.settled(by_state),
        "reach": {
            "targeted": targeted,
            "reached": reached,
            "done": done,
            "rate": round(reached / targeted, 4) if targeted else 0.0,
            "done_rate": round(done / targeted, 4) if targeted else 0.0,
        },
        "resendable": (
            sum(by_state.get(s.value, 0) for s in dm.RESENDABLE) if open_for_resend else 0
        ),
    }


def delivery_views(session: Session, broadcast_id: str, rows: Any) -> list[dict[str, Any]]:
    """Rows of one broadcast's deliveries (their columns and the device's village and
    township) as the API shows them, each with its transitions (one query a page)."""
    rows = list(rows)
    history = dm.history(session, broadcast_id, [d.device_id for d in rows])
    return [
        with_code(
            {
                "device_id": d.device_id,
                "village_id": d.village_id,
                "township_id": d.township_id,
                "state": d.state,
                "reason": d.reason,
                "updated_at": iso(d.updated_ms),
                "source": d.state_source,
                "attempt": d.attempt,
                "transitions": [
                    {**t, "at": iso(t["at"]), "rx": iso(t.get("rx"))}
                    for t in history.get(d.device_id, [])
                ],
            }
        )
        for d in rows
    ]
