"""Pre-positioned emergency audio: rendered ahead of need and pinned on the terminals, so
an emergency that uses it starts without any download (DESIGN.md §6).

What is worth pre-positioning. A terminal plays one media file per broadcast, and the
file is identified by its hash, so only audio that is byte for byte what a future
broadcast will send is any use. That rules out a template with a required parameter
(nobody knows today which hamlets the flood will reach) and it rules out pieces (tones,
fixed framing) that the terminal would have to splice: the wire contract has no
splicing, and a splice would be a second code path at the worst moment. So we push
whole announcements: every emergency template whose placeholders are all given (by
default or in the request), rendered for each emergency level, because the level
changes the alert tone and the `{level_colour}` words. Each is rendered through the
very same path as a broadcast (`BroadcastService.preview`), with the languages of the
townships targeted, so a later broadcast of the same template, parameters and level to
those terminals is a cache hit on the controller and on the terminal.

The built-in set is written so that the emergency templates that can be meant
county-wide (earthquake, heavy rain, typhoon, forest fire, epidemic, the false-alarm
correction) are complete with their defaults; flood evacuation, which must name a
place and a shelter, is rendered when it is used. A preposition request can give
parameters (e.g. a township's own place name) to pre-position those too.

Terminals report `preloaded` events ({fetched, failed}); the latest per terminal is kept
in `DevicePreload` and shown against the latest preposition that reached it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import JSON, BigInteger, Column
from sqlmodel import Field as SQLField
from sqlmodel import Session, SQLModel, col, select

from controller import audit
from controller.approvals import PendingBroadcast
from controller.auth import Principal, Role
from controller.db import Database
from controller.dispatch import Dispatcher
from controller.errors import ApiError, bad_request, forbidden
from controller.events import ApprovalRequested, EventHub
from controller.media import media_ref
from controller.models import Broadcast, Device, Media
from controller.settings import Settings
from controller.targets import TargetsIn, resolve
from controller.templates import TEMPLATE_ID_PATTERN, Template
from controller.timefmt import iso
from dalaba import protocol as p

if TYPE_CHECKING:
    from controller.broadcasts import BroadcastService

log = logging.getLogger(__name__)

LEVELS = (1, 2, 3, 4)
MAX_ITEMS = 120  # a PreloadBody of this many refs stays far below MAX_COMMAND_BYTES
DEFAULT_EXPIRY_S = 24 * 3600  # terminals offline longer get the next preposition
RENDER_CONCURRENCY = 3
HISTORY = 50  # prepositions looked at when deciding whether audio is already in place
# Audio staged for a request waiting for a second officer is recorded as a Preposition
# row with this id prefix and the request's id (see `Stager`).
STAGED_PREFIX = "stage-"
STAGED_PURPOSE = "staged"


def _ms_column(nullable: bool = False) -> Any:
    return SQLField(sa_column=Column(BigInteger, nullable=nullable))


class Preposition(SQLModel, table=True):
    __tablename__ = "preposition"

    id: str = SQLField(primary_key=True)
    created_ms: int = _ms_column()
    created_by: str
    command_id: str
    targets: dict[str, Any] = SQLField(sa_column=Column(JSON))  # as requested
    target: dict[str, Any] = SQLField(sa_column=Column(JSON))  # normalised, as signed
    device_ids: list[str] = SQLField(default_factory=list, sa_column=Column(JSON))
    # [{template, version, level, languages, media_id, duration_ms, size, voices}]
    items: list[dict[str, Any]] = SQLField(default_factory=list, sa_column=Column(JSON))
    skipped: list[dict[str, Any]] = SQLField(default_factory=list, sa_column=Column(JSON))
    expires_at_ms: int = _ms_column()
    dispatch: str = "pending"  # pending | published


class DevicePreload(SQLModel, table=True):
    """A terminal's latest report of fetching pre-positioned audio."""

    __tablename__ = "device_preload"

    device_id: str = SQLField(primary_key=True, foreign_key="device.id")
    reported_ms: int = _ms_column()
    status: str  # ok | incomplete
    fetched: int = 0
    failed: int = 0
    command_id: str | None = None


class PrepositionIn(BaseModel):
    """POST /api/templates/preposition."""

    model_config = ConfigDict(extra="forbid")

    # Default: every enabled emergency template.
    templates: list[Annotated[str, Field(pattern=TEMPLATE_ID_PATTERN)]] | None = Field(
        default=None, max_length=50
    )
    levels: list[Annotated[int, Field(ge=1, le=4)]] = Field(
        default_factory=lambda: list(LEVELS), min_length=1, max_length=4
    )
    # Per template id: parameters to fill (over the template's defaults).
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    targets: TargetsIn = Field(default_factory=lambda: TargetsIn(all=True))
    expires_in_s: int = Field(default=DEFAULT_EXPIRY_S, ge=60, le=7 * 24 * 3600)


# --------------------------------------------------------------------------- hooks


def media_in_place(session: Session, sha256: str, device_ids: tuple[str, ...] | list[str]) -> bool:
    """Whether terminals are known to have had this audio sent to them already: an
    earlier broadcast used it, or a preposition covering all of `device_ids` held it.
    Audio that was only uploaded or previewed is not in place: it must be fetched."""
    used = session.exec(select(Broadcast.id).where(Broadcast.media_sha256 == sha256)).first()
    if used is not None:
        return True
    covered: set[str] = set()
    recent = session.exec(_prepositions().limit(HISTORY))
    for row in recent:
        if any(item["media_id"] == sha256 for item in row.items):
            covered.update(row.device_ids)
    return bool(covered) and set(device_ids) <= covered


def _prepositions() -> Any:
    """Prepositions proper, newest first: not audio staged for a waiting request."""
    return (
        select(Preposition)
        .where(col(Preposition.id).not_like(STAGED_PREFIX + "%"))
        .order_by(col(Preposition.created_ms).desc())
    )


def staged_id(approval_id: str) -> str:
    return STAGED_PREFIX + approval_id


def staged_counts(session: Session, approval_id: str) -> tuple[int, int] | None:
    """(terminals whose latest preload report says they hold the audio staged for this
    request, terminals it was staged on), or None if nothing was staged."""
    row = session.get(Preposition, staged_id(approval_id))
    if row is None:
        return None
    return len(_holding(session, row, row.device_ids)), len(row.device_ids)


def staged_everywhere(
    session: Session, approval_id: str, sha256: str, device_ids: tuple[str, ...] | list[str]
) -> bool:
    """Whether every terminal of `device_ids` that is online holds the audio staged
    while the request waited: its latest preload report is for the staging command,
    with nothing failed. Offline terminals fetch whatever happens when they are back;
    a terminal that reported anything else since (or nothing) counts as not holding it."""
    row = session.get(Preposition, staged_id(approval_id))
    if row is None or all(item["media_id"] != sha256 for item in row.items):
        return False
    online = set(
        _in_chunks(
            session,
            device_ids,
            lambda chunk: (
                select(Device.id)
                .where(col(Device.id).in_(chunk))
                .where(col(Device.online).is_(True))
            ),
        )
    )
    return online <= _holding(session, row, online)


def _holding(session: Session, row: Preposition, device_ids: Any) -> set[str]:
    return set(
        _in_chunks(
            session,
            device_ids,
            lambda chunk: (
                select(DevicePreload.device_id)
                .where(col(DevicePreload.device_id).in_(chunk))
                .where(DevicePreload.command_id == row.command_id)
                .where(DevicePreload.status == "ok")
                .where(DevicePreload.failed == 0)
            ),
        )
    )


def _in_chunks(session: Session, ids: Any, query: Any) -> list[str]:
    ids = list(ids)
    found: list[str] = []
    for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
        found.extend(session.exec(query(ids[start : start + 900])).all())
    return found


def record_preload_report(session: Session, device_id: str, event: p.DeviceEvent, rx: int) -> None:
    """Called by the ingestor for each `preloaded` event."""
    detail = event.detail or {}
    row = session.get(DevicePreload, device_id)
    if row is None:
        row = DevicePreload(device_id=device_id, reported_ms=rx, status="ok")
        session.add(row)
    row.reported_ms = rx
    row.status = event.reason or "ok"
    row.fetched = int(detail.get("fetched") or 0)
    row.failed = int(detail.get("failed") or 0)
    row.command_id = event.command_id


# --------------------------------------------------------------------------- service


def preposition_view(row: Preposition) -> dict[str, Any]:
    return {
        "id": row.id,
        "created_at": iso(row.created_ms),
        "created_by": row.created_by,
        "command_id": row.command_id,
        "targets": row.targets,
        "device_count": len(row.device_ids),
        "items": row.items,
        "skipped": row.skipped,
        "expires_at": iso(row.expires_at_ms),
        "dispatch": row.dispatch,
    }


class Prepositioner:
    def __init__(
        self,
        db: Database,
        broadcasts: BroadcastService,
        dispatcher: Dispatcher,
        settings: Settings,
    ) -> None:
        self._db = db
        self._broadcasts = broadcasts
        self._dispatcher = dispatcher
        self._settings = settings
        self._staging: set[asyncio.Task[Any]] = set()

    async def preposition(self, principal: Principal, body: PrepositionIn) -> dict[str, Any]:
        if principal.role not in (Role.ADMIN, Role.DUTY_OFFICER):
            raise forbidden("only duty officers and admins pre-position emergency audio")
        resolved = await self._db.run(lambda s: resolve(s, body.targets, principal))
        if not resolved.device_ids:
            raise bad_request("targets", "no terminal is installed in the chosen area")
        templates = await self._db.run(lambda s: _chosen_templates(s, body))

        jobs = [(t, level) for t in templates for level in sorted(set(body.levels))]
        skipped: list[dict[str, Any]] = []
        gate = asyncio.Semaphore(RENDER_CONCURRENCY)

        async def render(template: Template, level: int) -> dict[str, Any] | None:
            # Imported here: broadcasts imports this module for `media_in_place`.
            from controller.broadcasts import BroadcastIn

            draft = BroadcastIn(
                template=template.id,
                params=body.params.get(template.id, {}),
                level=level,
                targets=body.targets,
            )
            try:
                async with gate:
                    filled, media, voices = await self._broadcasts.preview(draft, resolved.target)
            except ApiError as exc:
                if exc.status != 400:
                    raise
                skipped.append({"template": template.id, "level": level, "reason": exc.message})
                return None
            return {
                "template": template.id,
                "version": template.version,
                "name": template.name,
                "level": level,
                "languages": filled.languages,
                "media_id": media.sha256,
                "duration_ms": media.duration_ms,
                "size": media.size,
                "voices": voices.split(",") if voices else [],
            }

        results = await asyncio.gather(*(render(t, level) for t, level in jobs))
        items = [r for r in results if r is not None]
        # One line per template, not per level, when a whole template could not be done.
        skipped = _merge_skipped(skipped)
        if not items:
            raise bad_request(
                "templates",
                "nothing could be pre-positioned: "
                + "; ".join(f"{s['template']}: {s['reason']}" for s in skipped),
            )
        if len(items) > MAX_ITEMS:
            raise bad_request("templates", f"more than {MAX_ITEMS} recordings at once")

        refs = {
            item["media_id"]: p.MediaRef(
                sha256=item["media_id"],
                url=item["media_id"],  # relative to the terminal's media base URL
                size=item["size"],
                duration_ms=item["duration_ms"],
            )
            for item in items
        }
        now = p.now_ms()
        expires_at = now + body.expires_in_s * 1000
        # A terminal keeps exactly the latest set per purpose and releases the rest, so
        # the default "all emergency templates" push replaces its predecessor, and a push
        # of chosen templates is its own set that does not evict the full one.
        purpose = (
            "emergency_templates"
            if body.templates is None
            else "templates:" + ",".join(sorted(set(body.templates)))
        )
        command = p.Command.new(
            p.PreloadBody(media=tuple(refs.values()), purpose=purpose[:200]),
            resolved.target,
            expires_at,
        )
        row = Preposition(
            id=uuid.uuid4().hex,
            created_ms=now,
            created_by=principal.user,
            command_id=command.id,
            targets=body.targets.model_dump(),
            target=resolved.target.model_dump(mode="json"),
            device_ids=list(resolved.device_ids),
            items=items,
            skipped=skipped,
            expires_at_ms=expires_at,
        )

        def record(session: Session) -> None:
            session.add(row)
            audit.record(
                session,
                principal,
                "template.preposition",
                row.id,
                templates=sorted({i["template"] for i in items}),
                levels=sorted(set(body.levels)),
                recordings=len(refs),
                skipped=[s["template"] for s in skipped],
                targets=row.targets,
                devices=len(row.device_ids),
            )

        await self._db.run(record)
        published = await self._dispatcher.send(command, resolved.topics)
        row.dispatch = "published" if published else "pending"
        await self._db.run(lambda s: _set_dispatch(s, row.id, row.dispatch))
        log.info(
            "pre-positioned %d recordings of %d templates on %d terminals (by %s)",
            len(refs),
            len({i["template"] for i in items}),
            len(row.device_ids),
            principal.user,
        )
        return preposition_view(row)

    # ------------------------------------------------------------------ staging

    def listen(self, events: EventHub) -> None:
        """Stage the audio of each request that starts waiting for a second officer.
        Only on the replica where it was made (`relayed=False`): one push per request."""
        events.on(ApprovalRequested, self._on_approval, owner="prepositioning", relayed=False)

    def _on_approval(self, event: ApprovalRequested) -> None:
        if event.change != "waiting":
            return
        task = asyncio.create_task(self.stage(event.request_id))
        self._staging.add(task)
        task.add_done_callback(self._staging.discard)

    async def stage(self, approval_id: str) -> dict[str, Any] | None:
        """Push a waiting request's audio to the terminals it targets, to fetch and
        verify but not play, so that approving it needs no fetch lead (issue 15). The
        push is a preload that does not pin (`PreloadBody.keep`): if the request is
        rejected or expires, the audio is evicted like any unpinned cache entry. Each
        terminal's `preloaded` report (DevicePreload, the latest per terminal) tells
        `staged_everywhere` who holds it."""
        settings = self._settings

        def prepare(session: Session) -> tuple[Preposition, p.Command, tuple[str, ...]] | None:
            request = session.get(PendingBroadcast, approval_id)
            if request is None or request.status != "pending":
                return None
            media = session.get(Media, request.media_sha256)
            if media is None:
                return None
            if request.body.get("priority") == "emergency" and (
                media.size <= settings.inline_media_max_bytes
            ):
                return None  # short enough to travel inside the play command
            requester = Principal(
                request.requested_by, Role(request.requested_role), request.requested_township
            )
            if requester.role is Role.UPSTREAM:
                requester = requester.for_warning_intake()
            targets = TargetsIn.model_validate(request.body.get("targets") or {})
            resolved = resolve(session, targets, requester)
            command = p.Command.new(
                p.PreloadBody(
                    media=(media_ref(media, settings.media_mirrors),),
                    purpose=STAGED_PURPOSE,
                    keep=False,
                ),
                resolved.target,
                request.expires_ms,
            )
            row = Preposition(
                id=staged_id(approval_id),
                created_ms=p.now_ms(),
                created_by=request.requested_by,
                command_id=command.id,
                targets=targets.model_dump(),
                target=resolved.target.model_dump(mode="json"),
                device_ids=list(resolved.device_ids),
                items=[
                    {
                        "approval": approval_id,
                        "media_id": media.sha256,
                        "size": media.size,
                        "duration_ms": media.duration_ms,
                    }
                ],
                expires_at_ms=request.expires_ms,
            )
            session.add(row)
            return row, command, resolved.topics

        try:
            prepared = await self._db.run(prepare)
        except Exception:
            # Staging only saves time: approving still works, with the fetch lead.
            log.exception("staging the audio of %s failed", approval_id)
            return None
        if prepared is None:
            return None
        row, command, topics = prepared
        published = await self._dispatcher.send(command, topics)
        row.dispatch = "published" if published else "pending"
        await self._db.run(lambda s: _set_dispatch(s, row.id, row.dispatch))
        log.info("staged the audio of %s on %d terminals", approval_id, len(row.device_ids))
        return preposition_view(row)

    async def status(self, principal: Principal) -> dict[str, Any]:
        scope = principal.township_scope()

        def load(session: Session) -> dict[str, Any]:
            rows = list(session.exec(_prepositions().limit(HISTORY)))
            query = select(Device).order_by(col(Device.id))
            if scope is not None:
                query = query.where(Device.township_id == scope)
            devices = list(session.exec(query))
            reports = {r.device_id: r for r in session.exec(select(DevicePreload))}
            versions = {t.id: t.version for t in session.exec(select(Template))}
            latest_for: dict[str, Preposition] = {}
            for row in rows:  # newest first
                for device_id in row.device_ids:
                    latest_for.setdefault(device_id, row)
            summary = {"ok": 0, "incomplete": 0, "pending": 0, "none": 0}
            per_device = []
            for d in devices:
                sent = latest_for.get(d.id)
                report = reports.get(d.id)
                if sent is None:
                    state = "none"
                elif report is None or report.reported_ms < sent.created_ms:
                    state = "pending"
                else:
                    state = "ok" if report.status == "ok" and not report.failed else "incomplete"
                summary[state] += 1
                per_device.append(
                    {
                        "device_id": d.id,
                        "village_id": d.village_id,
                        "township_id": d.township_id,
                        "online": d.online,
                        "state": state,
                        "preposition_id": sent.id if sent else None,
                        "fetched": report.fetched if report else None,
                        "failed": report.failed if report else None,
                        "reported_at": iso(report.reported_ms) if report else None,
                    }
                )
            latest = rows[0] if rows else None
            stale = (
                sorted(
                    {
                        i["template"]
                        for i in latest.items
                        if versions.get(i["template"]) != i["version"]
                    }
                )
                if latest
                else []
            )
            return {
                "latest": preposition_view(latest) if latest else None,
                # Templates edited (or deleted) since they were pre-positioned.
                "stale_templates": stale,
                "summary": summary,
                "devices": per_device,
                "history": [preposition_view(r) for r in rows[:10]],
            }

        return await self._db.run(load)


def _chosen_templates(session: Session, body: PrepositionIn) -> list[Template]:
    if body.templates is None:
        chosen = list(
            session.exec(
                select(Template)
                .where(Template.priority == "emergency")
                .where(col(Template.disabled).is_(False))
                .order_by(col(Template.id))
            )
        )
        names = {t.id for t in chosen}
    else:
        chosen = []
        for i, template_id in enumerate(body.templates):
            field = f"templates[{i}]"
            row = session.get(Template, template_id)
            if row is None:
                raise bad_request(field, f"unknown template {template_id!r}")
            if row.disabled:
                raise bad_request(field, f"template {template_id!r} is disabled")
            if row.priority != "emergency":
                raise bad_request(field, f"template {template_id!r} is not an emergency template")
            if all(c.id != row.id for c in chosen):
                chosen.append(row)
        names = set(body.templates)
    for template_id in body.params:
        if template_id not in names:
            raise bad_request(f"params.{template_id}", "not among the templates pre-positioned")
    return chosen


def _merge_skipped(skipped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for s in skipped:
        entry = merged.setdefault(
            (s["template"], s["reason"]),
            {"template": s["template"], "reason": s["reason"], "levels": []},
        )
        entry["levels"].append(s["level"])
    return [{**e, "levels": sorted(e["levels"])} for e in merged.values()]


def _set_dispatch(session: Session, preposition_id: str, dispatch: str) -> None:
    row = session.get(Preposition, preposition_id)
    if row is not None:
        row.dispatch = dispatch
