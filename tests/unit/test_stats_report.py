"""Periods and buckets in the county's time, the nearest-rank percentile, and the year
report written out from given figures: the sentences in the media centre's manner, a
page whose policy allows exactly its own stylesheet, names that stay text in every format."""

from __future__ import annotations

import base64
import hashlib
import io
import re
from datetime import date, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook

from controller import report, stats

SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.mark.parametrize(
    ("kind", "day", "start", "end"),
    [
        ("day", date(2026, 2, 28), "2026-02-28", "2026-03-01"),
        ("week", date(2026, 1, 1), "2025-12-29", "2026-01-05"),  # Thursday; ISO week
        ("week", date(2026, 3, 2), "2026-03-02", "2026-03-09"),  # a Monday starts its own
        ("month", date(2024, 2, 10), "2024-02-01", "2024-03-01"),
        ("month", date(2026, 12, 31), "2026-12-01", "2027-01-01"),
        ("quarter", date(2026, 6, 30), "2026-04-01", "2026-07-01"),
        ("quarter", date(2026, 10, 1), "2026-10-01", "2027-01-01"),
        ("half", date(2026, 7, 1), "2026-07-01", "2027-01-01"),
        ("half", date(2026, 6, 30), "2026-01-01", "2026-07-01"),
        ("year", date(2026, 5, 5), "2026-01-01", "2027-01-01"),
    ],
)
def test_periods_are_local_calendar_ranges(kind: str, day: date, start: str, end: str) -> None:
    period = stats.period_of(kind, day, SHANGHAI)
    assert period.view() == {
        "kind": kind,
        "start": f"{start}T00:00:00+08:00",
        "end": f"{end}T00:00:00+08:00",
    }
    # Local midnight in Shanghai is 16:00 UTC the day before.
    utc = datetime.fromisoformat(f"{start}T00:00:00+00:00") - timedelta(hours=8)
    assert period.start_ms == int(utc.timestamp() * 1000)
    with pytest.raises(ValueError, match="period"):
        stats.period_of("decade", day, SHANGHAI)


def test_buckets_cover_the_period_without_gaps() -> None:
    year = stats.period_of("year", date(2026, 1, 1), SHANGHAI)
    months = stats.buckets(year, "month")
    assert [m.start.month for m in months] == list(range(1, 13))
    weeks = stats.buckets(year, "week")
    # 2026 starts on a Thursday: the first week is clipped to the year.
    assert weeks[0].start == year.start and weeks[0].end.date() == date(2026, 1, 5)
    assert weeks[-1].end == year.end and len(weeks) == 53
    for series in (months, weeks, stats.buckets(year, "day")):
        assert series[0].start == year.start and series[-1].end == year.end
        assert all(a.end == b.start for a, b in pairwise(series))
    assert len(stats.buckets(year, "day")) == 365
    day = stats.period_of("day", date(2026, 3, 8), SHANGHAI)
    hours = stats.buckets(day, "hour")
    assert len(hours) == 24 and hours[13].start.hour == 13
    # A day with a daylight-saving change has 23 hours, each one absolute hour long.
    spring = stats.period_of("day", date(2026, 3, 8), ZoneInfo("America/New_York"))
    hours = stats.buckets(spring, "hour")
    assert len(hours) == 23
    assert all(h.end_ms - h.start_ms == 3600_000 for h in hours)
    with pytest.raises(ValueError, match="bucket"):
        stats.buckets(day, "minute")
    # Too many points is refused before it is computed.
    assert len(stats.buckets(year, "hour")) > stats.MAX_POINTS


@pytest.mark.parametrize(
    ("n", "median", "p95"), [(1, 1, 1), (2, 1, 2), (19, 10, 19), (20, 10, 19), (100, 50, 95)]
)
def test_nearest_rank(n: int, median: int, p95: int) -> None:
    assert ((n + 1) // 2, stats._rank(n, 95)) == (median, p95)
    assert stats._rank(n, 50) == median


# --------------------------------------------------------------------------- report


def figures(**over: Any) -> dict[str, Any]:
    township = {
        "id": "t01",
        "name": "城关镇",
        "name_en": "Chengguan",
        "broadcasts": 40,
        "drills": 3,
        "plays": 600,
        "airtime_s": 36_000,
        "targeted": 700,
        "done": 590,
        "reach_rate": 0.8429,
        "median_ms": 1200,
        "p95_ms": 3400,
        "samples": 600,
        "online_rate": 0.9123,
        "villages_covered": 16,
    }
    data: dict[str, Any] = {
        "year": 2026,
        "scope": {"township": None, "village": None},
        "broadcasts": {"total": 45, "real": 42, "drill": 3},
        "plays": {"total": 6000, "airtime_s": 720_000, "cut_without_offset": 4},
        "reach": {"targeted": 7000, "done": 5900, "rate": 0.8429},
        "timeliness": {"median_ms": 1200, "p95_ms": 3400, "samples": 5000},
        "online_rate": 0.8868,
        "terminals": 182,
        "schedules": {"fired": 300, "missed": 2, "cancelled": 0},
        "drill": {"plays": {"total": 90}},
        "coverage": {"drill_villages": 20},
        "townships": [township],
        "categories": [
            {
                "category": "forest_fire",
                "drill": False,
                "broadcasts": 37,
                "plays": 5000,
                "airtime_s": 600_000,
                "townships": 12,
                "villages": 164,
            },
            {
                "category": "flood",
                "drill": True,
                "broadcasts": 3,
                "plays": 90,
                "airtime_s": 900,
                "townships": 1,
                "villages": 20,
            },
        ],
        "months": [
            {"month": m, "broadcasts": 3, "drills": 0, "plays": 500, "online_rate": None}
            for m in range(1, 13)
        ],
    }
    data.update(over)
    return data


def build(lang: report.Lang = "zh", **over: Any) -> report.Document:
    return report.build(figures(**over), lang=lang, area="示范县", tz=SHANGHAI, now_ms=0)


def test_the_sentences_read_as_the_media_centre_writes_them() -> None:
    doc = build()
    assert doc.title == "示范县应急广播2026年度运行统计报告"
    assert (
        "全年通过应急广播播发森林防火提醒 37 次，覆盖 12 个镇（乡）164 个行政村。" in doc.paragraphs
    )
    assert doc.paragraphs[0].startswith("2026年，示范县通过应急广播大喇叭播发信息 42 次")
    assert "播出时长 200.0 小时" in doc.paragraphs[0] and "送达率 84.29%" in doc.paragraphs[0]
    assert "终端全年平均在线率 88.68%（182 台终端）。" in doc.paragraphs
    assert any("中位用时 1.2 秒" in p and "3.4 秒内" in p for p in doc.paragraphs)
    assert "定时广播全年应播 302 次：按时播出 300 次，错过 2 次。" in doc.paragraphs
    assert any("演练 3 次" in p for p in doc.paragraphs)
    assert any("4 次播放中途中断" in p for p in doc.paragraphs)
    # Drills have their own table; real categories never include them.
    captions = [t.caption for t in doc.tables]
    assert captions[:2] == ["分类统计（实际播发）", "演练统计"]
    assert [r[0] for r in doc.tables[0].rows] == ["森林防火"]

    en = build("en")
    assert en.title == "Emergency broadcasting in 示范县: 2026 annual report"
    assert (
        "In the year, 37 forest-fire reminders were broadcast, reaching 12 townships and "
        "164 villages." in en.paragraphs
    )
    assert en.tables[2].rows[0][0] == "Chengguan"
    assert "played them 6,000 times" in en.paragraphs[0]  # and 6000 in Chinese
    assert "终端累计播放 6000 次" in doc.paragraphs[0]
    # One township's report speaks of its villages only.
    one = build(scope={"township": "t01", "village": None})
    assert "全年通过应急广播播发森林防火提醒 37 次，覆盖 164 个行政村。" in one.paragraphs
    # Nothing to report is said, not shown as zero.
    empty = build(online_rate=None, timeliness={"median_ms": None, "p95_ms": None, "samples": 0})
    assert "本年度没有终端在线记录。" in empty.paragraphs
    assert "本年度没有即时播发的播放记录，无法统计用时。" in empty.paragraphs


HOSTILE = '=HYPERLINK("http://x","y")<script>alert(1)</script>'


def test_page_is_self_contained_and_its_policy_allows_only_its_style() -> None:
    township = {**figures()["townships"][0], "name": HOSTILE}
    page = report.to_html(build(townships=[township]))
    assert "<script" not in page and "&lt;script&gt;" in page
    style = re.search(r"<style>(.*?)</style>", page, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in report.PAGE_CSP
    assert "default-src 'none'" in report.PAGE_CSP and "script-src" not in report.PAGE_CSP
    assert "88.68%" in page and '<td class="n">84.29%</td>' in page


def test_spreadsheet_keeps_numbers_and_never_runs_a_name_as_a_formula() -> None:
    township = {**figures()["townships"][0], "name": HOSTILE}
    book = load_workbook(io.BytesIO(report.to_xlsx(build(townships=[township]))))
    sheet = book["各镇（乡）统计"]
    assert sheet["A2"].value == HOSTILE and sheet["A2"].data_type == "s"
    assert sheet["B2"].value == 40 and sheet["G2"].value == pytest.approx(0.8429)
    assert sheet["G2"].number_format == "0.00%"
    assert sheet["E2"].value == 10.0  # 36,000 s as hours
    assert sheet["H2"].value == 1.2  # ms as seconds
    assert book["月度统计"]["E2"].value is None  # unknown stays empty, not 0


def test_pdf_is_a_pdf_with_the_cjk_font() -> None:
    pdf = report.to_pdf(build())
    assert pdf.startswith(b"%PDF") and b"/STSong-Light" in pdf and b"/UniGB-UCS2-H" in pdf
    assert len(re.findall(rb"/Type /Page\b", pdf)) >= 1
    english = report.to_pdf(build("en"))
    assert english.startswith(b"%PDF") and english != pdf
