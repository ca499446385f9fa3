"""/api/stats: the county's figures for any period and place (controller/stats.py says
what each one counts), the online rate over time, and the year-end report as a printable
page, a PDF and a spreadsheet (controller/report.py).

Any logged-in role may read them; township staff only ever see their own township.
Times are ISO 8601 in the county's timezone (`Settings.timezone`), periods `[start, end)`.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from aiohttp import web
from pydantic import Field
from sqlmodel import Session

from controller import report, stats
from controller import schemas as s
from controller.api import keys
from controller.auth import principal_of
from controller.errors import bad_request
from controller.models import Township
from controller.openapi import Content, Param, describe
from dalaba.protocol import now_ms

routes = web.RouteTableDef()

# Dates outside these years are typos (and a year 9999 period would end past the calendar).
FIRST_YEAR, LAST_YEAR = 2000, 2999

# ---------------------------------------------------------------------- response shapes


class StatsPeriod(s.ApiModel):
    kind: Literal["day", "week", "month", "quarter", "half", "year", "hour"]
    start: str = Field(description="local ISO 8601, included")
    end: str = Field(description="local ISO 8601, excluded")


class StatsScope(s.ApiModel):
    township: str | None
    village: str | None


class BroadcastCounts(s.ApiModel):
    total: int = Field(description="real and drill")
    real: int
    drill: int
    by_category: dict[str, int] = Field(description="real broadcasts only")
    by_priority: dict[str, int] = Field(description="real broadcasts only")
    drill_by_category: dict[str, int]
    drill_by_priority: dict[str, int]


class PlayCounts(s.ApiModel):
    total: int = Field(description="deliveries the terminal said reached playing")
    airtime_s: int = Field(description="seconds played: done x duration + cut offsets")
    cut_without_offset: int = Field(description="cut plays whose length is unknown (0 s)")


class ReachCounts(s.ApiModel):
    targeted: int
    done: int
    rate: float | None = Field(description="done / targeted; null when nothing was sent")


class Timeliness(s.ApiModel):
    """From the API call to the controller hearing `playing`, pushed broadcasts only."""

    median_ms: int | None
    p95_ms: int | None
    samples: int


class TownshipFigures(s.ApiModel):
    id: str
    name: str
    name_en: str
    broadcasts: int = Field(description="real broadcasts that reached the township")
    drills: int
    plays: int
    airtime_s: int
    targeted: int
    done: int
    reach_rate: float | None
    median_ms: int | None
    p95_ms: int | None
    samples: int
    online_rate: float | None
    villages_covered: int | None = None


class DrillFigures(s.ApiModel):
    broadcasts: int
    plays: PlayCounts
    reach: ReachCounts
    timeliness: Timeliness
    schedules: dict[str, int]


class StatsSummary(s.ApiModel):
    """One period's figures in one scope; every figure is over real broadcasts, with the
    same for drills under `drill`."""

    period: StatsPeriod
    scope: StatsScope
    broadcasts: BroadcastCounts
    plays: PlayCounts
    reach: ReachCounts
    timeliness: Timeliness
    schedules: dict[str, int] = Field(description="occurrences due in the period, by outcome")
    online_rate: float | None = Field(description="0..1 over the part of the period passed")
    terminals: int
    townships: list[TownshipFigures]
    drill: DrillFigures


class OnlinePoint(s.ApiModel):
    start: str
    end: str
    online_rate: float | None = Field(description="null: in the future, or no record")


class OnlineSeries(s.ApiModel):
    period: StatsPeriod
    scope: StatsScope
    bucket: Literal["hour", "day", "week", "month"]
    terminals: int
    points: list[OnlinePoint]


# ---------------------------------------------------------------------- parameters


def _tz(request: web.Request) -> ZoneInfo:
    return ZoneInfo(request.app[keys.SETTINGS].timezone)


def _period(request: web.Request, tz: ZoneInfo) -> stats.Period:
    kind = request.query.get("period") or "month"
    if kind not in stats.PERIODS:
        raise bad_request("period", f"one of {', '.join(stats.PERIODS)}")
    raw = request.query.get("date")
    if raw:
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            raise bad_request("date", f"{raw!r} is not a day (YYYY-MM-DD)") from None
        if not FIRST_YEAR <= day.year <= LAST_YEAR:
            raise bad_request("date", f"a day from {FIRST_YEAR} to {LAST_YEAR}")
    else:
        day = datetime.now(tz).date()
    return stats.period_of(kind, day, tz)


def _scope_args(request: web.Request) -> tuple[str | None, str | None]:
    """The township and village asked for, within the caller's reach."""
    own = principal_of(request).township_scope()
    township = request.query.get("township") or None
    village = request.query.get("village") or None
    if own is not None:
        if township not in (None, own):
            raise bad_request(
                "township", f"{township} is outside your township", "outside_township"
            )
        township = own
    return township, village


def _scope(session: Session, township: str | None, village: str | None) -> stats.Scope:
    try:
        return stats.resolve_scope(session, township, village)
    except ValueError as exc:
        name = str(exc).split(":", 1)[0]
        raise bad_request(name, str(exc).split(": ", 1)[1]) from None


_PERIOD = Param(
    "period",
    "day, week, month (default), quarter, half or year",
    {"type": "string", "enum": list(stats.PERIODS), "default": "month"},
)
_DATE = Param("date", "any local day in the period, YYYY-MM-DD (default today)")
_TOWNSHIP = Param("township", "only this township (township staff: always their own)")
_VILLAGE = Param("village", "only this village")


@routes.get("/api/stats/summary")
@describe(
    "Broadcasts, plays, airtime, reach, timeliness, schedule outcomes and the online rate "
    "of one period, per township",
    tag="stats",
    responses={200: StatsSummary},
    query=(_PERIOD, _DATE, _TOWNSHIP, _VILLAGE),
)
async def summary(request: web.Request) -> web.Response:
    period = _period(request, _tz(request))
    township, village = _scope_args(request)

    def load(session: Session) -> dict[str, Any]:
        return stats.summary(session, period, _scope(session, township, village), now_ms())

    return s.respond(StatsSummary, await request.app[keys.DB].run(load))


@routes.get("/api/stats/online")
@describe(
    "The terminals' online rate over a period, point by point",
    tag="stats",
    responses={200: OnlineSeries},
    query=(
        _PERIOD,
        _DATE,
        _TOWNSHIP,
        _VILLAGE,
        Param(
            "bucket",
            "hour, day, week or month (default: hour for a day, day for a week or month, "
            "week for a quarter, month for a half-year or year)",
            {"type": "string", "enum": list(stats.BUCKETS)},
        ),
    ),
)
async def online(request: web.Request) -> web.Response:
    period = _period(request, _tz(request))
    bucket = request.query.get("bucket") or stats.DEFAULT_BUCKET[period.kind]
    if bucket not in stats.BUCKETS:
        raise bad_request("bucket", f"one of {', '.join(stats.BUCKETS)}")
    if len(stats.buckets(period, bucket)) > stats.MAX_POINTS:
        raise bad_request("bucket", f"a {period.kind} has more than {stats.MAX_POINTS} {bucket}s")
    township, village = _scope_args(request)

    def load(session: Session) -> dict[str, Any]:
        scope = _scope(session, township, village)
        return stats.online_series(session, period, scope, bucket, now_ms())

    return s.respond(OnlineSeries, await request.app[keys.DB].run(load))


# ---------------------------------------------------------------------- year report

_FORMATS = {
    "html": "text/html",
    "pdf": "application/pdf",
    "xlsx": report.XLSX_TYPE,
}


@routes.get("/api/stats/report")
@describe(
    "The year-end report: a printable page (default), a PDF or a spreadsheet",
    tag="stats",
    responses={
        200: (
            Content("text/html", {"type": "string"}, "printable, self-contained page"),
            Content("application/pdf", {"type": "string", "format": "binary"}),
            Content(report.XLSX_TYPE, {"type": "string", "format": "binary"}),
        )
    },
    query=(
        Param("year", "the year (default this year)", {"type": "integer", "minimum": FIRST_YEAR}),
        Param(
            "format",
            "html (default), pdf or xlsx",
            {"type": "string", "enum": list(_FORMATS), "default": "html"},
        ),
        Param(
            "lang",
            "zh (default) or en",
            {"type": "string", "enum": ["zh", "en"], "default": "zh"},
        ),
        _TOWNSHIP,
    ),
)
async def year_report(request: web.Request) -> web.Response:
    settings = request.app[keys.SETTINGS]
    tz = ZoneInfo(settings.timezone)
    this_year = datetime.now(tz).year
    raw = request.query.get("year") or str(this_year)
    if not raw.isdigit() or not FIRST_YEAR <= int(raw) <= this_year:
        raise bad_request("year", f"a year from {FIRST_YEAR} to {this_year}")
    year = int(raw)
    fmt = request.query.get("format") or "html"
    if fmt not in _FORMATS:
        raise bad_request("format", f"one of {', '.join(_FORMATS)}")
    lang = request.query.get("lang") or "zh"
    if lang not in ("zh", "en"):
        raise bad_request("lang", "zh or en")
    township = _scope_args(request)[0]
    at = now_ms()

    def load(session: Session) -> tuple[dict[str, Any], str]:
        scope = _scope(session, township, None)
        data = stats.year_report(session, year, tz, scope, at)
        area = settings.county_name
        if scope.township is not None:
            row = session.get(Township, scope.township)
            area = (row.name_en or row.name) if row and lang == "en" else (row.name if row else "")
        return data, area

    data, area = await request.app[keys.DB].run(load)
    doc = report.build(data, lang="en" if lang == "en" else "zh", area=area, tz=tz, now_ms=at)
    # Ids are checked against the database above; still, nothing odd goes into a header.
    safe = "".join(ch for ch in township or "" if ch.isascii() and (ch.isalnum() or ch in "-_"))
    name = f"dalaba-report-{year}{'-' + safe if safe else ''}"
    if fmt == "html":
        return web.Response(
            text=report.to_html(doc),
            content_type="text/html",
            charset="utf-8",
            headers={"Content-Security-Policy": report.PAGE_CSP},
        )
    # The PDF and spreadsheet take a second or more for a large county: off the loop,
    # and off the database's thread too.
    render = report.to_pdf if fmt == "pdf" else report.to_xlsx
    body = await asyncio.get_running_loop().run_in_executor(None, render, doc)
    return web.Response(
        body=body,
        content_type=_FORMATS[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}.{fmt}"'},
    )
