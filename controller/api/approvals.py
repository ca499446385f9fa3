"""/api/approvals: real county-wide emergencies waiting for a second officer.

A request is created by POST /api/broadcasts (answered 202 with why it waits, see
controller/approvals.py). Any other duty officer or admin approves it (the broadcast is
created and dispatched, with the audio both officers heard) or rejects it; the requester
may withdraw it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from controller import audit
from controller.api import keys
from controller.approvals import PendingBroadcast, pending_view
from controller.auth import Permission, Principal, Role, principal_of
from controller.broadcasts import BroadcastIn, broadcast_summary
from controller.errors import (
    ApiError,
    bad_request,
    forbidden,
    json_response,
    not_found,
    parse_body,
    read_optional_json,
)
from controller.events import ApprovalRequested
from controller.prepositioning import staged_counts
from controller.targets import TargetsIn
from dalaba.protocol import now_ms

routes = web.RouteTableDef()


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=500)
    # Approving a warning held for review (controller/warnings/intake.py), the officer
    # may send it to another area than the source asked for; the audio stays the one heard.
    targets: TargetsIn | None = None


def _expire(session: Session) -> None:
    for row in session.exec(
        select(PendingBroadcast)
        .where(PendingBroadcast.status == "pending")
        .where(col(PendingBroadcast.expires_ms) <= now_ms())
    ):
        row.status = "expired"
        audit.record(session, "system", "approval.expired", row.id)


def _view(session: Session, row: PendingBroadcast) -> dict[str, Any]:
    """The request, with how many of its terminals already hold its audio (staged
    while it waits, controller/prepositioning.py): approving it then needs no fetch."""
    view = pending_view(row)
    counts = staged_counts(session, row.id) if row.status == "pending" else None
    view["staged"] = {"held": counts[0], "of": counts[1]} if counts is not None else None
    return view


def _require_county(principal: Principal) -> None:
    if not principal.county_wide:
        raise forbidden("approvals are for the county's duty officers")


@routes.get("/api/approvals")
async def list_approvals(request: web.Request) -> web.Response:
    _require_county(principal_of(request))
    status = request.query.get("status", "pending")

    def load(session: Session) -> list[dict[str, Any]]:
        _expire(session)
        query = select(PendingBroadcast).order_by(col(PendingBroadcast.created_ms).desc())
        if status != "all":
            query = query.where(PendingBroadcast.status == status)
        return [_view(session, r) for r in session.exec(query.limit(200))]

    return json_response({"approvals": await request.app[keys.DB].run(load)})


@routes.get("/api/approvals/{id}")
async def get_approval(request: web.Request) -> web.Response:
    _require_county(principal_of(request))
    approval_id = request.match_info["id"]

    def load(session: Session) -> dict[str, Any]:
        _expire(session)
        row = session.get(PendingBroadcast, approval_id)
        if row is None:
            raise not_found(f"approval {approval_id}")
        return _view(session, row)

    return json_response(await request.app[keys.DB].run(load))


async def _decision(request: web.Request) -> DecisionIn:
    return parse_body(DecisionIn, await read_optional_json(request, max_bytes=8192))


def _claim(
    session: Session, approval_id: str, principal: Principal, status: str, reason: str
) -> PendingBroadcast:
    _expire(session)
    row = session.get(PendingBroadcast, approval_id)
    if row is None:
        raise not_found(f"approval {approval_id}")
    if row.status != "pending":
        raise ApiError(409, f"already_{row.status}", f"approval: already {row.status}")
    if status == "approved" and row.requested_by == principal.user:
        raise ApiError(
            403, "same_person", "a second officer, not the one who asked, must approve this"
        )
    row.status = status
    row.decided_by = principal.user
    row.decided_ms = now_ms()
    row.reason = reason
    action = {"approved": "approve", "rejected": "reject", "withdrawn": "withdraw"}[status]
    detail = {"requested_by": row.requested_by, "reason": reason}
    audit.record(session, principal, f"approval.{action}", row.id, **detail)
    session.add(row)
    session.flush()
    session.expunge(row)
    return row


@routes.post("/api/approvals/{id}/approve")
async def approve(request: web.Request) -> web.Response:
    principal = principal_of(request)
    if not principal.can(Permission.APPROVE):
        raise forbidden(f"role {principal.role.value} may not approve emergencies")
    approval_id = request.match_info["id"]
    decision = await _decision(request)
    db = request.app[keys.DB]
    if decision.targets is not None:
        held = await db.run(lambda s: s.get(PendingBroadcast, approval_id))
        if held is not None and held.requested_role != Role.UPSTREAM.value:
            raise bad_request("targets", "only a warning held for review may change its area")
    row = await db.run(lambda s: _claim(s, approval_id, principal, "approved", decision.reason))
    requester = Principal(row.requested_by, Role(row.requested_role), row.requested_township)
    if requester.role is Role.UPSTREAM:
        # A warning held for review (controller/warnings/intake.py) is sent as its source.
        requester = requester.for_warning_intake()
    body_data = dict(row.body)
    # A start time that passed while the request waited means "as soon as approved".
    body_data["start_at"] = None
    if decision.targets is not None:
        body_data["targets"] = decision.targets.model_dump(exclude_defaults=True)
    try:
        body = BroadcastIn.model_validate(body_data)
        broadcast = await request.app[keys.BROADCASTS].create(requester, body, approval=row)
    except Exception as exc:
        message = str(getattr(exc, "message", exc))[:500]

        def failed(session: Session) -> None:
            stored = session.get(PendingBroadcast, approval_id)
            if stored is not None:
                stored.status = "failed"
                stored.reason = message

        await db.run(failed)
        raise

    def link(session: Session) -> dict[str, Any]:
        stored = session.get(PendingBroadcast, approval_id)
        assert stored is not None
        stored.broadcast_id = broadcast.id
        return pending_view(stored)

    view = await db.run(link)
    request.app[keys.EVENTS].emit(ApprovalRequested(request_id=approval_id, change="approved"))
    return json_response(
        {**broadcast_summary(broadcast), "approval": view},
        status=201,
        location=f"/api/broadcasts/{broadcast.id}",
    )


@routes.post("/api/approvals/{id}/reject")
async def reject(request: web.Request) -> web.Response:
    principal = principal_of(request)
    approval_id = request.match_info["id"]
    decision = await _decision(request)
    db = request.app[keys.DB]

    def decide(session: Session) -> dict[str, Any]:
        row = session.get(PendingBroadcast, approval_id)
        if row is None:
            raise not_found(f"approval {approval_id}")
        own = row.requested_by == principal.user
        if not principal.can(Permission.APPROVE) and not own:
            raise forbidden(f"role {principal.role.value} may not reject emergencies")
        status = "withdrawn" if own else "rejected"
        return pending_view(_claim(session, approval_id, principal, status, decision.reason))

    view = await db.run(decide)
    request.app[keys.EVENTS].emit(ApprovalRequested(request_id=approval_id, change=view["status"]))
    return json_response(view)
