"""The upper-level platform's packages in (/api/ebd, role upstream) and the reports the
county sends up (/api/upstream/reports, admins): controller/upstream."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, select

from controller.api import keys
from controller.api.paging import limit_param, query_int
from controller.auth import Permission, Role, principal_of
from controller.errors import ApiError, bad_request, forbidden, json_response, parse_body, read_json
from controller.openapi import Content, describe
from controller.timefmt import parse_instant
from controller.upstream import fields as f
from controller.upstream.models import UpstreamReport
from controller.upstream.service import CONTENT_TYPE, UpstreamLink, read_at_most, report_view
from dalaba.protocol import now_ms

routes = web.RouteTableDef()

LINK: web.AppKey[UpstreamLink] = web.AppKey("upstream_link", UpstreamLink)
TAR = Content(CONTENT_TYPE, {"type": "string", "format": "binary"}, "a signed package")
MAX_PERIOD_MS = 366 * 24 * 3600 * 1000
# The receipt travels in the body (a signed package); these repeat it for people and logs.
RESULT_HEADER = "X-EBD-Result-Code"
REASON_HEADER = "X-EBD-Result-Desc"


class ReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str | int | None = None  # default: a day before `end`
    end: str | int | None = None  # default: now
    full: bool = False  # Full: every record of the period; else what changed in it
    type: f.EbdType | None = None  # only this report (EBMBrdLog, EBRDTState, EBRPSState)


class ReportSent(BaseModel):
    ebd_id: str
    type: str
    trigger: str
    created_at: str | None
    period: dict[str, str | None]
    items: int
    status: str = Field(description="sent | refused (receipt code 2-5) | failed (no receipt)")
    http_status: int | None
    result_code: int | None
    error: str
    truncated: bool = Field(description="the period held more deliveries than one round sends")


class ReportList(BaseModel):
    reports: list[ReportSent]


@routes.post("/api/ebd")
@describe(
    "Receive a package of the upper-level platform (tar: EBDB_<EBDID>.xml + its signature "
    "file); answers with a signed receipt or state response",
    tag="upstream",
    body=TAR,
    responses={200: TAR, 400: TAR, 413: TAR},
    description="The receipt's result code is also in the X-EBD-Result-Code header: 0/1 "
    "answer 200; 2 parse failed, 3 content missing, 4 signature failed and 5 other answer "
    "400 (413 when too large), and nothing is stored for them (docs/upstream.md).",
)
async def receive(request: web.Request) -> web.Response:
    principal = principal_of(request)
    if not principal.can(Permission.POST_WARNINGS):
        raise forbidden(f"role {principal.role.value} is not a warning source")
    link = request.app[LINK]
    limit = request.app[keys.SETTINGS].upstream_package_max_bytes
    if (request.content_length or 0) > limit:
        return _answer(413, link.refuse(f.ResultCode.OTHER, f"larger than {limit} bytes"))
    data = await read_at_most(request.content, limit)
    if data is None:
        return _answer(413, link.refuse(f.ResultCode.OTHER, f"larger than {limit} bytes"))
    answer = await link.receive(data, principal.user)
    status = 200 if answer.result in (f.ResultCode.RECEIVED, f.ResultCode.PARSED) else 400
    return _answer(status, answer)


def _answer(status: int, answer: Any) -> web.Response:
    return web.Response(
        status=status,
        body=answer.body,
        content_type=CONTENT_TYPE,
        headers={
            RESULT_HEADER: str(int(answer.result)),
            # Header values must be latin-1: the reason's machine part only.
            REASON_HEADER: answer.reason.encode("ascii", "replace").decode()[:200],
        },
    )


@routes.post("/api/upstream/reports")
@describe(
    "Send the reports up now: broadcast log, terminal states, platform state and online "
    "rate of a period (admins)",
    tag="upstream",
    body=ReportIn,
    body_required=False,
    responses={200: ReportList},
)
async def report_now(request: web.Request) -> web.Response:
    if principal_of(request).role is not Role.ADMIN:  # what goes up speaks for the county
        raise forbidden("only an admin sends reports up by hand")
    body = parse_body(ReportIn, await read_json(request) if request.can_read_body else {})
    end = parse_instant(body.end, "end") if body.end is not None else now_ms()
    start = parse_instant(body.start, "start") if body.start is not None else end - 86_400_000
    if not 0 < end - start <= MAX_PERIOD_MS:
        raise bad_request("start", "must be before end, at most 366 days")
    if not request.app[keys.SETTINGS].upstream_url:
        raise ApiError(409, "upstream_not_configured", "upstream_url is not set", "upstream_url")
    sent = await request.app[LINK].report(
        "request", start, end, full=body.full, only=body.type.value if body.type else ""
    )
    return json_response(ReportList.model_validate({"reports": sent}).model_dump())


@routes.get("/api/upstream/reports")
@describe(
    "Reports sent up, newest first, with the platform's receipts",
    tag="upstream",
    responses={200: ReportList},
    query=(limit_param(50, 500),),
)
async def list_reports(request: web.Request) -> web.Response:
    principal = principal_of(request)
    if not principal.can(Permission.READ):
        raise forbidden(f"role {principal.role.value} may not read")
    limit = query_int(request, "limit", 50, 1, 500)
    rows = await request.app[keys.DB].run(
        lambda s: [
            report_view(r)
            for r in s.exec(
                select(UpstreamReport).order_by(col(UpstreamReport.created_ms).desc()).limit(limit)
            ).all()
        ]
    )
    return json_response(ReportList.model_validate({"reports": rows}).model_dump())
