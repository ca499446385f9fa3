"""/api/workorders: the technicians' jobs that lasting faults open (controller/workorders.py).

Anyone logged in reads them (township staff: their own township's only); technicians
and admins assign them, add notes and close them once the fault has cleared.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from controller import schemas as s
from controller.auth import principal_of
from controller.errors import (
    bad_request,
    not_found,
    parse_body,
    read_json,
    read_optional_json,
)
from controller.openapi import Param, describe, integer
from controller.workorders import WorkOrderService

routes = web.RouteTableDef()

# Put on the app by controller/app.py.
SERVICE: web.AppKey[WorkOrderService] = web.AppKey("workorders", WorkOrderService)

MAX_LIMIT = 2000
DEFAULT_LIMIT = 500
MAX_NOTE_CHARS = 2000


def _text(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, max_length=64, description="a technician's or admin's name")


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_NOTE_CHARS)

    _clean = field_validator("text")(_text)


class CloseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(default=None, max_length=MAX_NOTE_CHARS)

    @field_validator("note")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return (value or "").strip() or None


# --------------------------------------------------------------------------- answers


class WorkOrderNoteOut(s.ApiModel):
    at: s.Instant | None
    by: str = Field(description="a user's name, or `system` for what the controller noted")
    text: str
    kind: Literal["reopened"] | None = Field(
        default=None, description="set on the controller's own notes (the fault returned)"
    )
    times: int | None = Field(default=None, description="reopened: how many times in a row")


class FaultEpisodeOut(s.ApiModel):
    id: int
    start_at: s.Instant
    end_at: s.Instant | None = Field(description="null while the fault lasts")
    detail: dict[str, Any]


class WorkOrderOut(s.ApiModel):
    """One work order."""

    id: int
    device_id: str
    village_id: str
    township_id: str
    fault: str = Field(description="amplifier, speaker_line, on_battery, clock, network")
    status: Literal["open", "fault_cleared", "closed"]
    opened_at: s.Instant
    assigned_to: str | None
    notes: list[WorkOrderNoteOut] = Field(description="oldest first")
    fault_cleared_at: s.Instant | None
    closed_at: s.Instant | None
    closed_by: str | None
    episode: FaultEpisodeOut | None = Field(
        description="the fault episode it is about now (the latest, after a reopen)"
    )


class WorkOrderList(s.ApiModel):
    """Work orders, newest first."""

    orders: list[WorkOrderOut]


def _order_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()):
        raise not_found(f"work order {raw}")  # names nothing, as an unknown number
    return int(raw)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise bad_request("limit", f"a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


@routes.get("/api/workorders")
@describe(
    "Work orders: terminals with a lasting fault, for the technicians (township staff: "
    "their own township's)",
    tag="workorders",
    responses={200: WorkOrderList},
    query=(
        Param("status", "open, fault_cleared, closed or all; unset: open and fault_cleared"),
        Param("township", "only this township's"),
        Param("limit", "at most this many", integer(1, MAX_LIMIT, DEFAULT_LIMIT)),
    ),
)
async def list_orders(request: web.Request) -> web.Response:
    q = request.query
    orders = await request.app[SERVICE].list(
        principal_of(request),
        q.get("status") or None,
        q.get("township") or None,
        _limit(request),
    )
    return s.respond(WorkOrderList, {"orders": orders})


@routes.post("/api/workorders/{id}/assign")
@describe(
    "Assign a work order to a technician (technicians and admins)",
    tag="workorders",
    body=AssignIn,
    responses={200: WorkOrderOut},
)
async def assign(request: web.Request) -> web.Response:
    body = parse_body(AssignIn, await read_json(request, max_bytes=4096))
    view = await request.app[SERVICE].assign(principal_of(request), _order_id(request), body.user)
    return s.respond(WorkOrderOut, view)


@routes.post("/api/workorders/{id}/notes")
@describe(
    "Add a note to a work order (technicians and admins)",
    tag="workorders",
    body=NoteIn,
    responses={200: WorkOrderOut},
)
async def add_note(request: web.Request) -> web.Response:
    body = parse_body(NoteIn, await read_json(request, max_bytes=16 * 1024))
    view = await request.app[SERVICE].add_note(principal_of(request), _order_id(request), body.text)
    return s.respond(WorkOrderOut, view)


@routes.post("/api/workorders/{id}/close")
@describe(
    "Close a work order once its fault has cleared, with an optional note (technicians "
    "and admins; 409 fault_not_cleared while the fault lasts)",
    tag="workorders",
    body=CloseIn,
    body_required=False,
    responses={200: WorkOrderOut},
)
async def close(request: web.Request) -> web.Response:
    body = parse_body(CloseIn, await read_optional_json(request, max_bytes=16 * 1024))
    view = await request.app[SERVICE].close(principal_of(request), _order_id(request), body.note)
    return s.respond(WorkOrderOut, view)
