"""/api/broadcasts: push, watch, cancel and resend announcements."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlmodel import Session, col, or_, select

from controller import schemas as s
from controller.api import keys
from controller.api.paging import limit_param, query_int
from controller.auth import Principal, principal_of
from controller.broadcasts import (
    DELIVERY_PAGE,
    MAX_DELIVERY_PAGE,
    BroadcastIn,
    broadcast_summary,
)
from controller.errors import bad_request, json_response, parse_body, read_json
from controller.models import Broadcast, Delivery, Device
from controller.openapi import Param, describe
from dalaba import protocol as p

routes = web.RouteTableDef()

DEFAULT_PAGE = 50
MAX_PAGE = 500


@routes.post("/api/broadcasts")
@describe(
    "Push an announcement to an area (or hold it for a second officer: 202)",
    tag="broadcasts",
    body=BroadcastIn,
    responses={201: s.BroadcastCreated, 202: s.PendingApproval},
)
async def create_broadcast(request: web.Request) -> web.Response:
    principal = principal_of(request)
    principal.require_broadcast()
    data = await read_json(request)
    body = parse_body(BroadcastIn, data)
    broadcast = await request.app[keys.BROADCASTS].create(principal, body)
    created = {
        "id": broadcast.id,
        "device_count": broadcast.device_count,
        "start_at_ms": broadcast.start_at_ms,
        "expires_at_ms": broadcast.expires_at_ms,
        "dispatch": broadcast.dispatch,
        "drill": broadcast.drill,
    }
    return s.respond(
        s.BroadcastCreated, created, status=201, location=f"/api/broadcasts/{broadcast.id}"
    )


@routes.get("/api/broadcasts")
@describe(
    "Recent broadcasts, newest first (scheduled occurrences not yet fired are left out)",
    tag="broadcasts",
    responses={200: s.BroadcastPage},
    query=(
        limit_param(DEFAULT_PAGE, MAX_PAGE),
        Param("before", "a broadcast id: only broadcasts older than it (`next_before`)"),
    ),
)
async def list_broadcasts(request: web.Request) -> web.Response:
    principal = principal_of(request)
    limit = query_int(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    before = request.query.get("before") or None
    page = await request.app[keys.DB].run(lambda ses: _page(ses, principal, limit, before))
    return json_response(s.BroadcastPage.model_validate(page))


def _page(session: Session, principal: Principal, limit: int, before: str | None) -> Any:
    """Keyset paging on (created_ms, id): stable while new broadcasts arrive."""
    query = select(Broadcast).where(Broadcast.status != "scheduled")
    if before is not None:
        cursor = session.get(Broadcast, before)
        if cursor is None:
            raise bad_request("before", f"unknown broadcast {before!r}")
        query = query.where(
            or_(
                col(Broadcast.created_ms) < cursor.created_ms,
                (col(Broadcast.created_ms) == cursor.created_ms) & (col(Broadcast.id) < cursor.id),
            )
        )
    scope = principal.township_scope()
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
    rows = session.exec(
        query.order_by(col(Broadcast.created_ms).desc(), col(Broadcast.id).desc()).limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "broadcasts": [broadcast_summary(b) for b in rows],
        "limit": limit,
        "next_before": rows[-1].id if more else None,
    }


@routes.get("/api/broadcasts/{id}")
@describe(
    "A broadcast: counts per state, progress and (unless ?deliveries=0) one page of its "
    "deliveries by device id; `deliveries_next` is the `after` of the next page",
    tag="broadcasts",
    responses={200: s.BroadcastDetail},
    query=(
        Param(
            "deliveries",
            "0: counts only, for polling a large county",
            {"type": "string", "enum": ["0", "1", "false", "true"], "default": "1"},
        ),
        Param(
            "limit",
            "deliveries in this page",
            {"type": "integer", "minimum": 1, "maximum": MAX_DELIVERY_PAGE,
             "default": DELIVERY_PAGE},
        ),
        Param("after", "the device id the previous page ended with", {"type": "string"}),
        Param(
            "state",
            "only deliveries in this state",
            {"type": "string", "enum": [st.value for st in p.DeliveryState]},
        ),
    ),
)  # fmt: skip
async def get_broadcast(request: web.Request) -> web.Response:
    flag = request.query.get("deliveries", "1")
    if flag not in ("0", "1", "false", "true"):
        raise bad_request("deliveries", "0 or 1")
    limit = query_int(request, "limit", DELIVERY_PAGE, 1, MAX_DELIVERY_PAGE)
    state = request.query.get("state")
    if state is not None and state not in {st.value for st in p.DeliveryState}:
        raise bad_request("state", "not a delivery state")
    view = await request.app[keys.BROADCASTS].get(
        principal_of(request),
        request.match_info["id"],
        deliveries=flag in ("1", "true"),
        limit=limit,
        after=request.query.get("after") or None,
        state=state,
    )
    return s.respond(s.BroadcastDetail, view, bulk="deliveries")


@routes.post("/api/broadcasts/{id}/cancel")
@describe(
    "Cancel: terminals stop within a second; deliveries not yet reached end `cancelled`",
    tag="broadcasts",
    responses={200: s.BroadcastDetail},
)
async def cancel_broadcast(request: web.Request) -> web.Response:
    view = await request.app[keys.BROADCASTS].cancel(
        principal_of(request), request.match_info["id"]
    )
    return s.respond(s.BroadcastDetail, view, bulk="deliveries")


@routes.post("/api/broadcasts/{id}/resend")
@describe(
    "Send again, as a new signed command, to the terminals it did not reach "
    "(failed, expired, unknown), within its expiry",
    tag="broadcasts",
    responses={200: s.BroadcastProgress},
)
async def resend_broadcast(request: web.Request) -> web.Response:
    view = await request.app[keys.BROADCASTS].resend(
        principal_of(request), request.match_info["id"]
    )
    return s.respond(s.BroadcastProgress, view)
