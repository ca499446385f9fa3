"""/api/schedules: township programmes; a township's day; quiet hours; what a terminal
holds as its local schedule."""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import ConfigDict, Field, create_model
from pydantic.fields import FieldInfo
from pydantic.json_schema import SkipJsonSchema

from controller import schemas as s
from controller.api import keys
from controller.api.paging import query_int
from controller.auth import principal_of
from controller.broadcasts import BroadcastIn
from controller.errors import read_json
from controller.openapi import Param, describe, integer
from controller.schedules.service import (
    MAX_NEXT,
    MAX_OCCURRENCES,
    QuietHoursIn,
    ScheduleFields,
)

routes = web.RouteTableDef()


class ScheduleIn(ScheduleFields, BroadcastIn):
    """POST /api/schedules: the schedule's own fields and a broadcast's content and
    targets (the service validates the two parts with these same two models)."""

    # A schedule's times are its recurrence.
    start_at: SkipJsonSchema[None] = None  # type: ignore[assignment]


def _optional(info: FieldInfo) -> Any:
    """The field's type (with its bounds) or null, absent by default."""
    annotation: Any = info.annotation
    if info.metadata:
        annotation = Annotated[annotation, *info.metadata]
    return (annotation | None, Field(default=None, description=info.description))


def _partial(name: str, model: type[ScheduleIn]) -> Any:
    fields = {f: _optional(info) for f, info in model.model_fields.items() if f != "start_at"}
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


# PATCH: only the fields given change; null puts a field back to its default.
SchedulePatch = _partial("SchedulePatch", ScheduleIn)


def _id(request: web.Request) -> str:
    return request.match_info["id"]


def _location(view: dict[str, Any]) -> str:
    return f"/api/schedules/{view['id']}"


@routes.post("/api/schedules")
@describe(
    "Create a township programme (rendered once, now; terminals get it in their local schedule)",
    tag="schedules",
    body=ScheduleIn,
    responses={201: s.ScheduleOut},
)
async def create_schedule(request: web.Request) -> web.Response:
    principal = principal_of(request)
    principal.require_broadcast()
    data = await read_json(request)
    view = await request.app[keys.SCHEDULES].create(principal, data)
    return s.respond(s.ScheduleOut, view, status=201, location=_location(view))


@routes.get("/api/schedules")
@describe(
    "Schedules in the caller's reach, oldest first (deleted ones only with ?status=deleted)",
    tag="schedules",
    responses={200: s.ScheduleList},
    query=(
        Param("township", "only schedules that play in this township"),
        Param(
            "status",
            "only this status",
            {"type": "string", "enum": ["active", "paused", "deleted"]},
        ),
    ),
)
async def list_schedules(request: web.Request) -> web.Response:
    items = await request.app[keys.SCHEDULES].list(
        principal_of(request),
        township=request.query.get("township"),
        status=request.query.get("status"),
    )
    return s.respond(s.ScheduleList, {"schedules": items})


@routes.get("/api/schedules/{id}")
@describe(
    "One schedule, with occurrences per outcome", tag="schedules", responses={200: s.ScheduleOut}
)
async def get_schedule(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].get(principal_of(request), _id(request))
    return s.respond(s.ScheduleOut, view)


@routes.patch("/api/schedules/{id}")
@describe(
    "Change a schedule: only the fields given (a new text, recording or template "
    "replaces the old one)",
    tag="schedules",
    body=SchedulePatch,
    responses={200: s.ScheduleOut},
)
async def update_schedule(request: web.Request) -> web.Response:
    data = await read_json(request)
    view = await request.app[keys.SCHEDULES].update(principal_of(request), _id(request), data)
    return s.respond(s.ScheduleOut, view)


@routes.post("/api/schedules/{id}/pause")
@describe(
    "Pause: coming occurrences are withdrawn", tag="schedules", responses={200: s.ScheduleOut}
)
async def pause_schedule(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].set_status(
        principal_of(request), _id(request), "pause"
    )
    return s.respond(s.ScheduleOut, view)


@routes.post("/api/schedules/{id}/resume")
@describe("Resume a paused schedule", tag="schedules", responses={200: s.ScheduleOut})
async def resume_schedule(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].set_status(
        principal_of(request), _id(request), "resume"
    )
    return s.respond(s.ScheduleOut, view)


@routes.delete("/api/schedules/{id}")
@describe(
    "Delete (kept, marked deleted, for the record)", tag="schedules", responses={200: s.ScheduleOut}
)
async def delete_schedule(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].set_status(
        principal_of(request), _id(request), "delete"
    )
    return s.respond(s.ScheduleOut, view)


@routes.get("/api/schedules/{id}/next")
@describe(
    "The next fire times, each with the townships where quiet hours keep it silent",
    tag="schedules",
    responses={200: s.NextOut},
    query=(Param("count", "how many", integer(1, MAX_NEXT, 10)),),
)
async def next_occurrences(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].next(
        principal_of(request), _id(request), query_int(request, "count", 10, 1, MAX_NEXT)
    )
    return s.respond(s.NextOut, view)


@routes.get("/api/schedules/{id}/occurrences")
@describe(
    "Recorded occurrences, newest first, with their outcome and deliveries per state",
    tag="schedules",
    responses={200: s.OccurrenceList},
    query=(Param("limit", "at most this many", integer(1, MAX_OCCURRENCES, 100)),),
)
async def list_occurrences(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].occurrences(
        principal_of(request),
        _id(request),
        query_int(request, "limit", 100, 1, MAX_OCCURRENCES),
    )
    return s.respond(s.OccurrenceList, view)


@routes.get("/api/townships/{id}/timeline")
@describe(
    "A township's day: every occurrence, played, planned or silenced, and overlaps",
    tag="schedules",
    responses={200: s.TimelineOut},
    query=(Param("date", "local date YYYY-MM-DD (default: today)"),),
)
async def township_timeline(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].timeline(
        principal_of(request), _id(request), request.query.get("date")
    )
    return s.respond(s.TimelineOut, view)


@routes.get("/api/townships/{id}/quiet-hours")
@describe(
    "A township's quiet hours (notices and routine programmes stay silent)",
    tag="schedules",
    responses={200: s.QuietHoursOut},
)
async def get_quiet_hours(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].quiet_hours(principal_of(request), _id(request))
    return s.respond(s.QuietHoursOut, view)


@routes.put("/api/townships/{id}/quiet-hours")
@describe(
    "Set (both HH:MM) or clear (both null) a township's quiet hours",
    tag="schedules",
    body=QuietHoursIn,
    responses={200: s.QuietHoursOut},
)
async def set_quiet_hours(request: web.Request) -> web.Response:
    data = await read_json(request)
    view = await request.app[keys.SCHEDULES].set_quiet_hours(
        principal_of(request), _id(request), data
    )
    return s.respond(s.QuietHoursOut, view)


@routes.get("/api/devices/{id}/local-schedule")
@describe(
    "What the terminal was last given as its local schedule",
    tag="schedules",
    responses={200: s.LocalScheduleOut},
)
async def terminal_schedule(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].terminal_schedule(principal_of(request), _id(request))
    return s.respond(s.LocalScheduleOut, view)
