"""/api/records and /api/audit: the broadcast log with per-village outcomes, its CSV
export, and the audit log (who did what, when).

Dates in filters are the county's local calendar days (`from`/`to`, inclusive,
YYYY-MM-DD), or ISO instants; the CSV carries local times as a clerk reads them.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from sqlmodel import Session, col, func, select

from controller import schemas as s
from controller.api import keys
from controller.api.paging import offset_param
from controller.auth import Principal, principal_of
from controller.broadcasts import broadcast_summary
from controller.deliveries import BroadcastStatus
from controller.errors import bad_request
from controller.models import AuditEntry, Broadcast, Delivery, Device, Township, Village
from controller.openapi import Content, Param, describe, integer
from controller.sessions import redact_audit_entry
from controller.timefmt import iso, parse_instant
from dalaba.protocol import now_ms

routes = web.RouteTableDef()

MAX_PAGE = 500
MAX_CSV_ROWS = 200_000
DEFAULT_TIMEZONE = "Asia/Shanghai"


def _tz(request: web.Request) -> ZoneInfo:
    settings = request.app[keys.SETTINGS]
    return ZoneInfo(str(getattr(settings, "timezone", None) or DEFAULT_TIMEZONE))


def _bound(value: str | None, field: str, tz: ZoneInfo, end: bool) -> int | None:
    """A local date (whole day; `to` includes its day) or an ISO instant -> epoch ms."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return parse_instant(value, field)
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    return int(((start + timedelta(days=1)) if end else start).timestamp() * 1000)


def _int(request: web.Request, name: str, default: int, maximum: int, minimum: int = 0) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(name, "must be a whole number") from None
    if not minimum <= value <= maximum:
        raise bad_request(name, f"must be between {minimum} and {maximum}")
    return value


def _local(ms: int | None, tz: ZoneInfo) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M:%S")


MAX_OFFSET = 10_000_000
AIRED_LEAD_MS = 60_000  # "aired": started, or starting within this lead
_CSV = Content("text/csv", {"type": "string"}, "UTF-8 with a BOM, for spreadsheets")
_BROADCAST_FILTERS = (
    Param("from", "first local day (YYYY-MM-DD) or an ISO instant"),
    Param("to", "last local day, included (YYYY-MM-DD), or an ISO instant"),
    Param("category", "only this category"),
    Param("priority", "only this priority"),
    Param(
        "drill",
        "true: drills only; false: real only",
        {"type": "string", "enum": ["true", "false"]},
    ),
    Param("q", "text in the title or body"),
    Param("township", "only broadcasts that reached this township"),
    Param(
        "aired",
        "true: only what has started or starts within a minute, newest start first (no "
        "coming schedule occurrences: the home page's latest broadcasts)",
        {"type": "string", "enum": ["true", "false"]},
    ),
)
# limit=0: only the total.
_LIMIT = Param("limit", "at most this many items (0: only `total`)", integer(0, MAX_PAGE, 100))
_AUDIT_FILTERS = (
    Param("from", "first local day (YYYY-MM-DD) or an ISO instant"),
    Param("to", "last local day, included (YYYY-MM-DD), or an ISO instant"),
    Param("actor", "only this user's actions"),
    Param("action", "actions starting with this (e.g. `broadcast.`)"),
    Param("target", "only actions on this id"),
)


class BroadcastFilter:
    def __init__(self, request: web.Request) -> None:
        q = request.query
        tz = _tz(request)
        self.tz = tz
        self.since = _bound(q.get("from"), "from", tz, end=False)
        self.until = _bound(q.get("to"), "to", tz, end=True)
        self.category = q.get("category") or None
        self.priority = q.get("priority") or None
        drill = q.get("drill")
        if drill not in (None, "", "true", "false"):
            raise bad_request("drill", "true or false")
        self.drill = None if not drill else drill == "true"
        self.text = (q.get("q") or "").strip() or None
        aired = q.get("aired")
        if aired not in (None, "", "true", "false"):
            raise bad_request("aired", "true or false")
        self.aired = aired == "true"
        scope = principal_of(request).township_scope()
        township = q.get("township") or None
        if scope is not None and township not in (None, scope):
            raise bad_request(
                "township", f"{township} is outside your township", "outside_township"
            )
        self.township = scope or township
        self.scoped = scope is not None

    def query(self) -> Any:
        query = select(Broadcast)
        if self.since is not None:
            query = query.where(col(Broadcast.created_ms) >= self.since)
        if self.until is not None:
            query = query.where(col(Broadcast.created_ms) < self.until)
        if self.category:
            query = query.where(Broadcast.category == self.category)
        if self.priority:
            query = query.where(Broadcast.priority == self.priority)
        if self.drill is not None:
            query = query.where(Broadcast.drill == self.drill)
        if self.aired:
            query = query.where(Broadcast.status != BroadcastStatus.SCHEDULED.value)
            # A broadcast sent now starts a few seconds ahead (the sync and fetch lead);
            # one held for tomorrow, or a schedule's occurrence, has not aired.
            query = query.where(col(Broadcast.start_at_ms) <= now_ms() + AIRED_LEAD_MS)
        if self.text:
            like = f"%{self.text}%"
            query = query.where(col(Broadcast.title).like(like) | col(Broadcast.text).like(like))
        if self.township:
            reached = (
                select(Delivery.broadcast_id)
                .where(Delivery.device_id == Device.id)
                .where(Device.township_id == self.township)
            )
            query = query.where(col(Broadcast.id).in_(reached))
        return query


@routes.get("/api/records/broadcasts")
@describe(
    "The broadcast log, newest first, with outcomes per state in the caller's reach",
    tag="records",
    responses={200: s.BroadcastRecordPage},
    query=(*_BROADCAST_FILTERS, _LIMIT, offset_param(MAX_OFFSET)),
)
async def broadcast_log(request: web.Request) -> web.Response:
    flt = BroadcastFilter(request)
    limit = _int(request, "limit", 100, MAX_PAGE)
    offset = _int(request, "offset", 0, MAX_OFFSET)

    def load(session: Session) -> dict[str, Any]:
        base = flt.query()
        total = session.exec(select(func.count()).select_from(base.subquery())).one()
        rows = session.exec(
            base.order_by(col(Broadcast.start_at_ms if flt.aired else Broadcast.created_ms).desc())
            .offset(offset)
            .limit(limit)
        ).all()
        ids = [b.id for b in rows]
        outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        townships: dict[str, set[str]] = defaultdict(set)
        if ids:
            counts = (
                select(Delivery.broadcast_id, Delivery.state, Device.township_id, func.count())
                .where(Delivery.device_id == Device.id)
                .where(col(Delivery.broadcast_id).in_(ids))
                .group_by(Delivery.broadcast_id, Delivery.state, Device.township_id)
            )
            for bid, state, township, n in session.exec(counts).all():
                # Staff see the outcome in their own villages, not the county's.
                if flt.scoped and township != flt.township:
                    continue
                outcomes[bid][state] += n
                townships[bid].add(township)
        items = [
            {
                **broadcast_summary(b),
                "outcomes": dict(outcomes[b.id]),
                "townships": sorted(townships[b.id]),
            }
            for b in rows
        ]
        return {"broadcasts": items, "total": total, "limit": limit, "offset": offset}

    return s.respond(s.BroadcastRecordPage, await request.app[keys.DB].run(load))


CSV_COLUMNS = (
    "broadcast_id",
    "created_at",
    "created_by",
    "title",
    "category",
    "priority",
    "level",
    "drill",
    "status",
    "township_id",
    "township",
    "village_id",
    "village",
    "device_id",
    "state",
    "reason",
    "state_at",
    "text",
)


# A cell a spreadsheet would run as a formula (CSV injection): `=`, `+`, `-`, `@`, and
# tab or carriage return in front. Prefixed with an apostrophe, the program shows the
# text as typed; a broadcast's text is written by township staff and must stay text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _csv_response(filename: str, header: tuple[str, ...], rows: list[list[Any]]) -> web.Response:
    out = io.StringIO()
    # The BOM lets spreadsheet programs on county PCs open Chinese text as UTF-8.
    out.write("\ufeff")
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows([[csv_cell(value) for value in row] for row in rows])
    return web.Response(
        body=out.getvalue().encode("utf-8"),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@routes.get("/api/records/broadcasts.csv")
@describe(
    "The broadcast log as CSV: one row per terminal per broadcast",
    tag="records",
    responses={200: _CSV},
    query=_BROADCAST_FILTERS,
)
async def broadcast_log_csv(request: web.Request) -> web.Response:
    """One row per terminal per broadcast: the outcome in every village."""
    flt = BroadcastFilter(request)
    tz = flt.tz

    def load(session: Session) -> list[list[Any]]:
        broadcasts = flt.query().subquery()
        township_names = dict(session.exec(select(Township.id, Township.name)).all())
        query = (
            select(Broadcast, Delivery, Device, Village)
            .where(col(Broadcast.id).in_(select(broadcasts.c.id)))
            .where(Delivery.broadcast_id == Broadcast.id)
            .where(Delivery.device_id == Device.id)
            .where(Device.village_id == Village.id)
            .order_by(col(Broadcast.created_ms).desc(), col(Device.id))
            .limit(MAX_CSV_ROWS)
        )
        if flt.scoped:
            query = query.where(Device.township_id == flt.township)
        rows = []
        for b, d, dev, v in session.exec(query).all():
            rows.append(
                [
                    b.id,
                    _local(b.created_ms, tz),
                    b.created_by,
                    b.title,
                    b.category,
                    b.priority,
                    b.level or "",
                    "drill" if b.drill else "real",
                    b.status,
                    dev.township_id,
                    township_names.get(dev.township_id, ""),
                    v.id,
                    v.name,
                    dev.id,
                    d.state,
                    d.reason or "",
                    _local(d.updated_ms, tz),
                    b.text,
                ]
            )
        return rows

    rows = await request.app[keys.DB].run(load)
    stamp = datetime.now(tz).strftime("%Y%m%d-%H%M")
    return _csv_response(f"dalaba-broadcasts-{stamp}.csv", CSV_COLUMNS, rows)


def _audit_query(request: web.Request) -> tuple[Any, ZoneInfo]:
    principal = principal_of(request)
    tz = _tz(request)
    q = request.query
    query = select(AuditEntry)
    since = _bound(q.get("from"), "from", tz, end=False)
    until = _bound(q.get("to"), "to", tz, end=True)
    if since is not None:
        query = query.where(col(AuditEntry.at_ms) >= since)
    if until is not None:
        query = query.where(col(AuditEntry.at_ms) < until)
    if q.get("actor"):
        query = query.where(AuditEntry.actor == q["actor"])
    if q.get("action"):
        query = query.where(col(AuditEntry.action).startswith(q["action"]))
    if q.get("target"):
        query = query.where(AuditEntry.target == q["target"])
    # Township staff see their own actions; the county's officers see everyone's.
    if not principal.county_wide:
        query = query.where(AuditEntry.actor == principal.user)
    return query, tz


def _audit_view(e: AuditEntry, principal: Principal) -> dict[str, Any]:
    view = {
        "id": e.id,
        "at": iso(e.at_ms),
        "actor": e.actor,
        "role": e.role,
        "action": e.action,
        "target": e.target,
        "detail": e.detail,
    }
    return redact_audit_entry(view, principal)


@routes.get("/api/audit")
@describe(
    "The audit log, newest first (township staff: their own actions)",
    tag="records",
    responses={200: s.AuditPage},
    query=(*_AUDIT_FILTERS, _LIMIT, offset_param(MAX_OFFSET)),
)
async def audit_log(request: web.Request) -> web.Response:
    query, _ = _audit_query(request)
    principal = principal_of(request)
    limit = _int(request, "limit", 100, MAX_PAGE)
    offset = _int(request, "offset", 0, MAX_OFFSET)

    def load(session: Session) -> dict[str, Any]:
        total = session.exec(select(func.count()).select_from(query.subquery())).one()
        rows = session.exec(
            query.order_by(col(AuditEntry.id).desc()).offset(offset).limit(limit)
        ).all()
        return {
            "entries": [_audit_view(e, principal) for e in rows],
            "total": total,
            "limit": limit,
            "offset": offset,
        }

    return s.respond(s.AuditPage, await request.app[keys.DB].run(load))


@routes.get("/api/audit.csv")
@describe("The audit log as CSV", tag="records", responses={200: _CSV}, query=_AUDIT_FILTERS)
async def audit_log_csv(request: web.Request) -> web.Response:
    import json

    query, tz = _audit_query(request)
    principal = principal_of(request)

    def load(session: Session) -> list[list[Any]]:
        rows = session.exec(query.order_by(col(AuditEntry.id).desc()).limit(MAX_CSV_ROWS))
        views = [(e.at_ms, _audit_view(e, principal)) for e in rows]
        return [
            [
                _local(at_ms, tz),
                v["actor"],
                v["role"],
                v["action"],
                v["target"],
                json.dumps(v["detail"], ensure_ascii=False),
            ]
            for at_ms, v in views
        ]

    rows = await request.app[keys.DB].run(load)
    stamp = datetime.now(tz).strftime("%Y%m%d-%H%M")
    return _csv_response(
        f"dalaba-audit-{stamp}.csv", ("at", "actor", "role", "action", "target", "detail"), rows
    )
