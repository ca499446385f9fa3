"""Warnings from upstream: POST /api/cap (CAP 1.2, a source's token), the inbox of what
was received (/api/upstream/messages) and the sources (/api/upstream/sources, admins).

See controller/warnings/intake.py for what a warning becomes and docs/upstream.md.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlmodel import Session, col, select

from controller import audit
from controller import schemas as s
from controller.api import keys
from controller.api.users import require_admin
from controller.approvals import PendingBroadcast
from controller.auth import Permission, Principal, Role, create_user_and_token, principal_of
from controller.errors import (
    ApiError,
    forbidden,
    json_response,
    not_found,
    parse_body,
    read_json,
)
from controller.openapi import Content, Param, describe, integer
from controller.timefmt import iso
from controller.warnings.cap import (
    CONTENT_TYPES,
    SIGNATURE_HEADER,
    parse_alert,
    verify_signature,
    warning_from_alert,
)
from controller.warnings.intake import IntakeContext, intake
from controller.warnings.models import UpstreamMessage, UpstreamSource
from dalaba.protocol import now_ms

routes = web.RouteTableDef()

CAP_BODY = Content("application/cap+xml", {"type": "string"}, "a CAP 1.2 <alert>")
# HTTP status by outcome: played (201), held (202), refused (422), else recorded (200).
_STATUS = {"played": 201, "review": 202, "refused": 422}


def _county_reader(principal: Principal) -> None:
    if not principal.can(Permission.READ) or not principal.county_wide:
        raise forbidden("upstream messages are for the county's officers")


@routes.post("/api/cap")
@describe(
    "Receive a CAP 1.2 alert from a warning source (role upstream)",
    tag="upstream",
    body=CAP_BODY,
    responses={
        200: s.IntakeOutcomeOut,
        201: s.IntakeOutcomeOut,
        202: s.IntakeOutcomeOut,
        422: s.IntakeOutcomeOut,
    },
    description="Validated against the OASIS CAP 1.2 schema; DTDs and entities are refused. "
    "The answer says what became of it: played, review, recorded, no_area, cancelled.",
)
async def post_cap(request: web.Request) -> web.Response:
    principal = principal_of(request)
    if not principal.can(Permission.POST_WARNINGS):
        raise forbidden("only a warning source's token (role upstream) may post warnings")
    if request.content_type not in CONTENT_TYPES:
        raise ApiError(
            415, "unsupported_media_type", "Content-Type: application/cap+xml", "Content-Type"
        )
    limit = request.app[keys.SETTINGS].cap_max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"body: larger than {limit} bytes", "body")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, "too_large", f"body: larger than {limit} bytes", "body")
    db = request.app[keys.DB]
    source = await db.run(lambda s_: s_.get(UpstreamSource, principal.user))
    if source is None or not source.enabled:
        raise forbidden(f"source {principal.user} is not configured or is disabled")
    if source.certificate_pem:
        verify_signature(raw, request.headers.get(SIGNATURE_HEADER), source.certificate_pem)
    root = parse_alert(raw)
    warning = warning_from_alert(root, raw, source_id=source.id, content_type=request.content_type)
    outcome = await intake(IntakeContext.from_app(request.app), warning)
    return json_response(
        outcome.view(),
        status=_STATUS.get(outcome.outcome, 200),
        location=f"/api/upstream/messages/{outcome.message_id}",
    )


def _message_view(
    m: UpstreamMessage, sources: dict[str, UpstreamSource], approvals: dict[str, PendingBroadcast]
) -> dict[str, Any]:
    approval = approvals.get(m.approval_id or "")
    source = sources.get(m.source_id)
    return {
        "id": m.id,
        "source_id": m.source_id,
        "source_name": source.name if source else "",
        "protocol": m.protocol,
        "received_at": iso(m.received_ms),
        "identifier": m.identifier,
        "sender": m.sender,
        "sent": m.sent,
        "msg_type": m.msg_type,
        "status": m.status,
        "mode": m.mode,
        "outcome": m.outcome,
        "reason": m.reason,
        "headline": m.headline,
        "level": m.level,
        "priority": m.priority,
        "drill": m.drill,
        "villages": len(m.village_ids or []),
        "references": m.references,
        "cancelled": m.cancelled,
        # A warning released by an officer since has its broadcast on the approval.
        "broadcast_id": m.broadcast_id or (approval.broadcast_id if approval else None),
        "approval_id": m.approval_id,
        "approval_status": approval.status if approval else None,
        "expires_at": iso(m.expires_ms),
    }


def _views(session: Session, rows: list[UpstreamMessage]) -> list[dict[str, Any]]:
    sources = {x.id: x for x in session.exec(select(UpstreamSource))}
    ids = [m.approval_id for m in rows if m.approval_id]
    approvals = {
        a.id: a
        for a in session.exec(select(PendingBroadcast).where(col(PendingBroadcast.id).in_(ids)))
    }
    return [_message_view(m, sources, approvals) for m in rows]


@routes.get("/api/upstream/messages")
@describe(
    "Upstream messages received, newest first (the inbox)",
    tag="upstream",
    responses={200: s.UpstreamMessageList},
    query=(
        Param("limit", "at most this many", integer(1, 500, 100)),
        Param("outcome", "only this outcome (played, review, recorded, ...)"),
    ),
)
async def list_messages(request: web.Request) -> web.Response:
    _county_reader(principal_of(request))
    try:
        limit = max(1, min(500, int(request.query.get("limit", "100"))))
    except ValueError:
        raise ApiError(400, "invalid", "limit: an integer", "limit") from None
    outcome = request.query.get("outcome")

    def load(session: Session) -> list[dict[str, Any]]:
        query = select(UpstreamMessage).order_by(col(UpstreamMessage.received_ms).desc())
        if outcome:
            query = query.where(UpstreamMessage.outcome == outcome)
        return _views(session, list(session.exec(query.limit(limit))))

    return json_response({"messages": await request.app[keys.DB].run(load)})


@routes.get("/api/upstream/messages/{id}")
@describe(
    "One upstream message: as received (verbatim), and what became of it",
    tag="upstream",
    responses={200: s.UpstreamMessageDetail},
)
async def get_message(request: web.Request) -> web.Response:
    _county_reader(principal_of(request))
    message_id = request.match_info["id"]

    def load(session: Session) -> dict[str, Any]:
        row = session.get(UpstreamMessage, message_id)
        if row is None:
            raise not_found(f"upstream message {message_id}")
        view = _views(session, [row])[0]
        view.update(
            content_type=row.content_type,
            raw=row.raw.decode("utf-8", "replace"),
            text=row.text,
            village_ids=row.village_ids,
            detail=row.detail,
            starts_at=iso(row.starts_ms),
        )
        return view

    return json_response(await request.app[keys.DB].run(load))


# --------------------------------------------------------------------------- sources

Mode = Literal["automatic", "review"]


class SourcePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=100)
    mode: Mode | None = None
    hold_levels: list[int] | None = Field(default=None, max_length=4)
    certificate_pem: str | None = Field(default=None, max_length=20_000)
    enabled: bool | None = None

    @field_validator("hold_levels")
    @classmethod
    def _levels(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(level not in (1, 2, 3, 4) for level in value):
            raise ValueError("levels 1-4")
        return sorted(set(value)) if value is not None else None

    @field_validator("certificate_pem")
    @classmethod
    def _certificate(cls, value: str | None) -> str | None:
        if value:  # "" clears it
            try:
                x509.load_pem_x509_certificate(value.encode())
            except ValueError:
                raise ValueError("not a PEM certificate") from None
        return value or None


class SourceIn(SourcePatch):
    id: str = Field(min_length=2, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")


def source_view(x: UpstreamSource) -> dict[str, Any]:
    return {
        "id": x.id,
        "name": x.name,
        "mode": x.mode,
        "hold_levels": x.hold_levels or [],
        "signature_required": bool(x.certificate_pem),
        "enabled": x.enabled,
        "created_at": iso(x.created_ms),
        "updated_at": iso(x.updated_ms),
    }


@routes.get("/api/upstream/sources")
@describe("Warning sources and their modes", tag="upstream", responses={200: s.UpstreamSourceList})
async def list_sources(request: web.Request) -> web.Response:
    _county_reader(principal_of(request))

    def load(session: Session) -> list[dict[str, Any]]:
        rows = session.exec(select(UpstreamSource).order_by(col(UpstreamSource.id)))
        return [source_view(x) for x in rows]

    return json_response({"sources": await request.app[keys.DB].run(load)})


@routes.post("/api/upstream/sources")
@describe(
    "Add a warning source (admins): its user of role upstream and API token, shown once",
    tag="upstream",
    body=SourceIn,
    responses={201: s.UpstreamSourceCreated},
)
async def create_source(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_admin(principal)
    body = parse_body(SourceIn, await read_json(request))

    def create(session: Session) -> dict[str, Any]:
        if session.get(UpstreamSource, body.id) is not None:
            raise ApiError(409, "exists", f"id: source {body.id} already exists", "id")
        try:
            token = create_user_and_token(session, body.id, Role.UPSTREAM, None, "warnings")
        except ValueError as exc:
            raise ApiError(409, "exists", f"id: {exc}", "id") from None
        now = now_ms()
        row = UpstreamSource(
            id=body.id,
            name=body.name or body.id,
            mode=body.mode or "review",
            hold_levels=body.hold_levels or [],
            certificate_pem=body.certificate_pem,
            enabled=True if body.enabled is None else body.enabled,
            created_ms=now,
            updated_ms=now,
        )
        session.add(row)
        audit.record(session, principal, "upstream.source_create", body.id, mode=row.mode)
        return {**source_view(row), "token": token}

    created = await request.app[keys.DB].run(create)
    return json_response(created, status=201, location=f"/api/upstream/sources/{body.id}")


@routes.patch("/api/upstream/sources/{id}")
@describe(
    "Change a source's mode, held levels, certificate or name (admins)",
    tag="upstream",
    body=SourcePatch,
    responses={200: s.UpstreamSourceOut},
)
async def update_source(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_admin(principal)
    source_id = request.match_info["id"]
    body = parse_body(SourcePatch, await read_json(request))
    changes = body.model_dump(exclude_unset=True)

    def update(session: Session) -> dict[str, Any]:
        row = session.get(UpstreamSource, source_id)
        if row is None:
            raise not_found(f"source {source_id}")
        for name, value in changes.items():
            setattr(row, name, value)
        row.updated_ms = now_ms()
        session.add(row)
        shown = {k: v for k, v in changes.items() if k != "certificate_pem"}
        audit.record(session, principal, "upstream.source_update", source_id, **shown)
        return source_view(row)

    return json_response(await request.app[keys.DB].run(update))
