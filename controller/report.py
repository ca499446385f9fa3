"""The county's year-end report, written as the county media centre writes its own
("全年通过应急广播播发森林防火提醒 N 次，覆盖 12 个镇（乡）164 个行政村"): a printable page, a
PDF and a spreadsheet, in Chinese or English, from the figures of `controller.stats`.

The report is built once as a `Document` (headline sentences and tables of typed
cells) and each format only writes it out, so the three can never disagree.

The page is one self-contained HTML file: no script, no external file, its stylesheet
inline and allowed by its own Content-Security-Policy through the stylesheet's hash
(`PAGE_CSP`). A report is something people save, mail and print; a stylesheet on another
route would be lost with the saved page. The policy is stricter than the console's
(`default-src 'none'`, no script at all), so nothing is loosened to allow it.

The PDF uses reportlab's built-in CID font STSong-Light (Adobe's Song for simplified
Chinese, resolved by the PDF reader), so no font file ships with the project; the
spreadsheet keeps numbers as numbers (rates as percentages) for further work.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

Lang = Literal["zh", "en"]
# How a column's cells are written: counts, rates (0..1), seconds as hours, ms as seconds.
Kind = Literal["text", "int", "pct", "hours", "seconds"]

CATEGORY_NAMES: dict[str, dict[str, str]] = {
    "zh": {
        "flood": "防汛",
        "forest_fire": "森林防火",
        "fire_prevention": "防火",
        "anti_fraud": "反诈",
        "typhoon": "防台风",
        "earthquake": "地震",
        "epidemic": "疫情防控",
        "road_safety": "交通安全",
        "anti_drug": "禁毒",
        "civility": "文明新风",
        "rural_revitalisation": "乡村振兴",
        "meeting": "会议通知",
        "news": "新闻",
        "other": "其他",
    },
    "en": {
        "flood": "flood",
        "forest_fire": "forest fire",
        "fire_prevention": "fire prevention",
        "anti_fraud": "anti-fraud",
        "typhoon": "typhoon",
        "earthquake": "earthquake",
        "epidemic": "epidemic prevention",
        "road_safety": "road safety",
        "anti_drug": "anti-drug",
        "civility": "civility",
        "rural_revitalisation": "rural revitalisation",
        "meeting": "meeting notices",
        "news": "news",
        "other": "other",
    },
}
# What was broadcast, as the media centre's report says it.
CATEGORY_PHRASES: dict[str, dict[str, str]] = {
    "zh": {
        "flood": "防汛预警",
        "forest_fire": "森林防火提醒",
        "fire_prevention": "防火安全提醒",
        "anti_fraud": "反诈宣传",
        "typhoon": "防台风预警",
        "earthquake": "地震预警",
        "epidemic": "疫情防控提醒",
        "road_safety": "交通安全提示",
        "anti_drug": "禁毒宣传",
        "civility": "文明新风宣传",
        "rural_revitalisation": "乡村振兴政策宣传",
        "meeting": "会议通知",
        "news": "新闻节目",
        "other": "其他信息",
    },
    "en": {
        "flood": "flood warnings",
        "forest_fire": "forest-fire reminders",
        "fire_prevention": "fire-safety reminders",
        "anti_fraud": "anti-fraud messages",
        "typhoon": "typhoon warnings",
        "earthquake": "earthquake warnings",
        "epidemic": "epidemic-prevention reminders",
        "road_safety": "road-safety messages",
        "anti_drug": "anti-drug messages",
        "civility": "civility campaigns",
        "rural_revitalisation": "rural-revitalisation messages",
        "meeting": "meeting notices",
        "news": "news programmes",
        "other": "other messages",
    },
}
OUTCOME_NAMES: dict[str, dict[str, str]] = {
    "zh": {
        "fired": "按时播出",
        "played_offline": "终端离线自主播出",
        "suppressed": "静默时段免播",
        "missed": "错过",
        "cancelled": "取消",
        "scheduled": "待播",
    },
    "en": {
        "fired": "played on time",
        "played_offline": "played from the terminals' own schedule",
        "suppressed": "kept silent (quiet hours)",
        "missed": "missed",
        "cancelled": "cancelled",
        "scheduled": "still to come",
    },
}

WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "county": "本县",
        "title": "{area}应急广播{year}年度运行统计报告",
        "generated": "生成时间：{at}（{tz}）。统计口径：实际播发与演练分开统计；"
        "播放指终端回报开始播放（完整播完或被中断）；送达率＝播放完成的终端次数÷下发终端次数。",
        "headline": "{year}年，{area}通过应急广播大喇叭播发信息 {real} 次，"
        "另组织应急演练 {drill} 次；终端累计播放 {plays} 次，播出时长 {hours} 小时，"
        "送达率 {reach}。",
        "category": "全年通过应急广播播发{phrase} {n} 次，覆盖 {t} 个镇（乡）{v} 个行政村。",
        "category_one": "全年通过应急广播播发{phrase} {n} 次，覆盖 {v} 个行政村。",
        "timeliness": "从发布到终端开始播放：中位用时 {median} 秒，95% 的终端在 {p95} 秒内开始播放"
        "（共 {samples} 次播放）。",
        "no_timeliness": "本年度没有即时播发的播放记录，无法统计用时。",
        "online": "终端全年平均在线率 {rate}（{terminals} 台终端）。",
        "no_online": "本年度没有终端在线记录。",
        "schedules": "定时广播全年应播 {total} 次：{parts}。",
        "drills": "全年组织应急广播演练 {n} 次，终端播放 {plays} 次，覆盖 {v} 个行政村。",
        "cut": "另有 {n} 次播放中途中断且未回报进度，其播出时长未计入。",
        "t_categories": "分类统计（实际播发）",
        "t_drills": "演练统计",
        "t_townships": "各镇（乡）统计",
        "t_months": "月度统计",
        "t_schedules": "定时广播",
        "category_col": "类别",
        "broadcasts": "播发次数",
        "drill_col": "演练次数",
        "plays": "播放次数",
        "airtime_h": "播出时长（小时）",
        "townships": "覆盖镇（乡）",
        "villages": "覆盖行政村",
        "township": "镇（乡）",
        "reach": "送达率",
        "median_s": "中位用时（秒）",
        "p95_s": "95%用时（秒）",
        "online_rate": "在线率",
        "month": "月份",
        "month_name": "{m}月",
        "outcome": "结果",
        "count": "次数",
        "total": "合计",
        "summary": "概况",
        "none": "—",
    },
    "en": {
        "county": "the county",
        "title": "Emergency broadcasting in {area}: {year} annual report",
        "generated": "Generated {at} ({tz}). Real broadcasts and drills are counted apart; "
        "a play is a terminal reporting that it started playing (to the end or cut off); "
        "reach is deliveries played to the end divided by deliveries sent.",
        "headline": "In {year}, {area} broadcast {real} messages over its village loudspeakers "
        "and held {drill} drills; terminals played them {plays} times, {hours} hours on air, "
        "with a reach of {reach}.",
        "category": "In the year, {n} {phrase} were broadcast, reaching {t} townships and "
        "{v} villages.",
        "category_one": "In the year, {n} {phrase} were broadcast, reaching {v} villages.",
        "timeliness": "From publication to the terminals starting to play: median {median} s; "
        "95% of terminals started within {p95} s ({samples} plays).",
        "no_timeliness": "No plays of broadcasts pushed this year: no timing to report.",
        "online": "The terminals were online {rate} of the year on average ({terminals} "
        "terminals).",
        "no_online": "No online records for the terminals this year.",
        "schedules": "Scheduled programmes were due {total} times: {parts}.",
        "drills": "{n} drills were held; terminals played them {plays} times in {v} villages.",
        "cut": "{n} plays were cut off without reporting how far they got; their airtime is "
        "not counted.",
        "t_categories": "By category (real broadcasts)",
        "t_drills": "Drills",
        "t_townships": "By township",
        "t_months": "By month",
        "t_schedules": "Scheduled programmes",
        "category_col": "Category",
        "broadcasts": "Broadcasts",
        "drill_col": "Drills",
        "plays": "Plays",
        "airtime_h": "Airtime (h)",
        "townships": "Townships",
        "villages": "Villages",
        "township": "Township",
        "reach": "Reach",
        "median_s": "Median (s)",
        "p95_s": "95th pct (s)",
        "online_rate": "Online",
        "month": "Month",
        "month_name": "{m:02d}",
        "outcome": "Outcome",
        "count": "Count",
        "total": "Total",
        "summary": "Summary",
        "none": "-",
    },
}


@dataclass(frozen=True)
class Column:
    title: str
    kind: Kind = "int"


@dataclass(frozen=True)
class Table:
    key: str  # short sheet name
    caption: str
    columns: tuple[Column, ...]
    rows: list[list[Any]]


@dataclass(frozen=True)
class Document:
    lang: Lang
    title: str
    note: str
    paragraphs: list[str]
    tables: list[Table] = field(default_factory=list)
    year: int = 0


# --------------------------------------------------------------------------- numbers


def cell_text(value: Any, kind: Kind, lang: Lang) -> str:
    """A cell as it is printed (the spreadsheet keeps the number itself)."""
    if value is None:
        return WORDS[lang]["none"]
    if kind == "pct":
        return f"{value * 100:.2f}%"
    if kind == "hours":
        return f"{value / 3600:,.1f}"
    if kind == "seconds":
        return f"{value / 1000:,.1f}"
    if kind == "int":
        return f"{value:,}" if lang == "en" else str(value)
    return str(value)


def _pct(value: float | None, lang: Lang) -> str:
    return cell_text(value, "pct", lang)


# --------------------------------------------------------------------------- document


def build(data: dict[str, Any], *, lang: Lang, area: str, tz: ZoneInfo, now_ms: int) -> Document:
    """The report of `controller.stats.year_report`'s figures, in `lang`."""
    w = WORDS[lang]
    year = data["year"]
    area = area or w["county"]
    one_township = data["scope"]["township"] is not None
    real, plays, reach = data["broadcasts"]["real"], data["plays"], data["reach"]
    at = datetime.fromtimestamp(now_ms / 1000, tz).strftime("%Y-%m-%d %H:%M")

    def num(n: int) -> str:
        return cell_text(n, "int", lang)  # 7,809 in English, 7809 in Chinese

    paragraphs = [
        w["headline"].format(
            year=year,
            area=area,
            real=num(real),
            drill=num(data["broadcasts"]["drill"]),
            plays=num(plays["total"]),
            hours=cell_text(plays["airtime_s"], "hours", lang),
            reach=_pct(reach["rate"], lang),
        )
    ]
    names, phrases = CATEGORY_NAMES[lang], CATEGORY_PHRASES[lang]
    real_categories = [c for c in data["categories"] if not c["drill"]]
    drill_categories = [c for c in data["categories"] if c["drill"]]
    for c in real_categories:
        template = w["category_one"] if one_township else w["category"]
        paragraphs.append(
            template.format(
                phrase=phrases.get(c["category"], c["category"]),
                n=num(c["broadcasts"]),
                t=num(c["townships"]),
                v=num(c["villages"]),
            )
        )
    timeliness = data["timeliness"]
    if timeliness["samples"]:
        paragraphs.append(
            w["timeliness"].format(
                median=cell_text(timeliness["median_ms"], "seconds", lang),
                p95=cell_text(timeliness["p95_ms"], "seconds", lang),
                samples=num(timeliness["samples"]),
            )
        )
    else:
        paragraphs.append(w["no_timeliness"])
    if data["online_rate"] is None:
        paragraphs.append(w["no_online"])
    else:
        paragraphs.append(
            w["online"].format(
                rate=_pct(data["online_rate"], lang), terminals=num(data["terminals"])
            )
        )
    outcomes = {k: v for k, v in data["schedules"].items() if v}
    if outcomes:
        sep = "，" if lang == "zh" else ", "
        parts = sep.join(
            f"{OUTCOME_NAMES[lang].get(k, k)} {num(v)} {'次' if lang == 'zh' else ''}".rstrip()
            for k, v in outcomes.items()
        )
        paragraphs.append(w["schedules"].format(total=num(sum(outcomes.values())), parts=parts))
    if data["broadcasts"]["drill"]:
        paragraphs.append(
            w["drills"].format(
                n=num(data["broadcasts"]["drill"]),
                plays=num(data["drill"]["plays"]["total"]),
                v=num(data["coverage"]["drill_villages"]),
            )
        )
    if plays["cut_without_offset"]:
        paragraphs.append(w["cut"].format(n=num(plays["cut_without_offset"])))

    def category_rows(items: list[dict[str, Any]]) -> list[list[Any]]:
        return [
            [
                names.get(c["category"], c["category"]),
                c["broadcasts"],
                c["plays"],
                c["airtime_s"],
                c["townships"],
                c["villages"],
            ]
            for c in items
        ]

    category_columns = (
        Column(w["category_col"], "text"),
        Column(w["broadcasts"]),
        Column(w["plays"]),
        Column(w["airtime_h"], "hours"),
        Column(w["townships"]),
        Column(w["villages"]),
    )
    tables = [
        Table("categories", w["t_categories"], category_columns, category_rows(real_categories))
    ]
    if drill_categories:
        tables.append(
            Table("drills", w["t_drills"], category_columns, category_rows(drill_categories))
        )
    tables.append(
        Table(
            "townships",
            w["t_townships"],
            (
                Column(w["township"], "text"),
                Column(w["broadcasts"]),
                Column(w["drill_col"]),
                Column(w["plays"]),
                Column(w["airtime_h"], "hours"),
                Column(w["villages"]),
                Column(w["reach"], "pct"),
                Column(w["median_s"], "seconds"),
                Column(w["p95_s"], "seconds"),
                Column(w["online_rate"], "pct"),
            ),
            [
                [
                    (t["name_en"] or t["name"]) if lang == "en" else t["name"],
                    t["broadcasts"],
                    t["drills"],
                    t["plays"],
                    t["airtime_s"],
                    t.get("villages_covered", 0),
                    t["reach_rate"],
                    t["median_ms"],
                    t["p95_ms"],
                    t["online_rate"],
                ]
                for t in data["townships"]
            ],
        )
    )
    tables.append(
        Table(
            "months",
            w["t_months"],
            (
                Column(w["month"], "text"),
                Column(w["broadcasts"]),
                Column(w["drill_col"]),
                Column(w["plays"]),
                Column(w["online_rate"], "pct"),
            ),
            [
                [
                    w["month_name"].format(m=m["month"]),
                    m["broadcasts"],
                    m["drills"],
                    m["plays"],
                    m["online_rate"],
                ]
                for m in data["months"]
            ],
        )
    )
    schedule_rows = [[OUTCOME_NAMES[lang].get(k, k), v] for k, v in data["schedules"].items() if v]
    if schedule_rows:
        tables.append(
            Table(
                "schedules",
                w["t_schedules"],
                (Column(w["outcome"], "text"), Column(w["count"])),
                schedule_rows,
            )
        )
    return Document(
        lang=lang,
        title=w["title"].format(area=area, year=year),
        note=w["generated"].format(at=at, tz=tz.key),
        paragraphs=paragraphs,
        tables=tables,
        year=year,
    )


# --------------------------------------------------------------------------- HTML

STYLE = """
@page { size: A4; margin: 18mm 15mm; }
body { font-family: "Noto Serif CJK SC", "Source Han Serif SC", SimSun, "Songti SC", serif;
  color: #111; margin: 2em auto; max-width: 60em; line-height: 1.6; }
h1 { font-size: 1.6em; text-align: center; margin: 0 0 .3em; }
.note { color: #555; font-size: .85em; text-align: center; margin-bottom: 2em; }
p { text-indent: 2em; margin: .4em 0; }
h2 { font-size: 1.15em; margin: 1.6em 0 .5em; border-bottom: 1px solid #999; }
table { border-collapse: collapse; width: 100%; font-size: .9em; page-break-inside: auto; }
th, td { border: 1px solid #777; padding: .25em .5em; }
th { background: #eee; font-weight: bold; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr { page-break-inside: avoid; }
@media print { body { margin: 0; max-width: none; } }
""".strip()
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
# This page's own policy (it replaces the console's on this response): nothing but its
# own inline stylesheet, identified by its hash; no script, no fetch, no frame.
PAGE_CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def to_html(doc: Document) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        f'<html lang="{"zh-CN" if doc.lang == "zh" else "en"}">',
        '<head><meta charset="utf-8">',
        f"<title>{e(doc.title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{e(doc.title)}</h1>",
        f'<div class="note">{e(doc.note)}</div>',
        f"<h2>{e(WORDS[doc.lang]['summary'])}</h2>",
    ]
    out += [f"<p>{e(p)}</p>" for p in doc.paragraphs]
    for table in doc.tables:
        out.append(f"<h2>{e(table.caption)}</h2><table><thead><tr>")
        out += [f"<th>{e(c.title)}</th>" for c in table.columns]
        out.append("</tr></thead><tbody>")
        for row in table.rows:
            cells = [
                ("<td>" if c.kind == "text" else '<td class="n">')
                + f"{e(cell_text(v, c.kind, doc.lang))}</td>"
                for v, c in zip(row, table.columns, strict=True)
            ]
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out)


# --------------------------------------------------------------------------- PDF

CJK_FONT = "STSong-Light"


def to_pdf(doc: Document) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    if CJK_FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont(CJK_FONT))
    wrap = "CJK" if doc.lang == "zh" else None
    title = ParagraphStyle("title", fontName=CJK_FONT, fontSize=17, leading=24, alignment=1)
    note = ParagraphStyle(
        "note", fontName=CJK_FONT, fontSize=8, leading=11, alignment=1, textColor=colors.grey,
        wordWrap=wrap,
    )  # fmt: skip
    body = ParagraphStyle(
        "body", fontName=CJK_FONT, fontSize=10.5, leading=17, firstLineIndent=21, wordWrap=wrap
    )
    heading = ParagraphStyle(
        "heading", fontName=CJK_FONT, fontSize=12.5, leading=18, spaceBefore=10, spaceAfter=4
    )
    cell = ParagraphStyle("cell", fontName=CJK_FONT, fontSize=8.5, leading=11, wordWrap=wrap)
    e = html.escape  # Paragraph reads a small XML markup language
    story: list[Any] = [
        Paragraph(e(doc.title), title),
        Spacer(1, 3 * mm),
        Paragraph(e(doc.note), note),
        Spacer(1, 5 * mm),
        Paragraph(e(WORDS[doc.lang]["summary"]), heading),
    ]
    story += [Paragraph(e(p), body) for p in doc.paragraphs]
    for table in doc.tables:
        story.append(Paragraph(e(table.caption), heading))
        rows: list[list[Any]] = [[Paragraph(e(c.title), cell) for c in table.columns]]
        rows += [
            [cell_text(v, c.kind, doc.lang) for v, c in zip(row, table.columns, strict=True)]
            for row in table.rows
        ]
        flow = Table(rows, repeatRows=1, hAlign="LEFT")
        style = [
            ("FONT", (0, 0), (-1, -1), CJK_FONT, 8.5),
            ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
            ("BACKGROUND", (0, 0), (-1, 0), colors.whitesmoke),
            ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ]
        for i, c in enumerate(table.columns):
            if c.kind != "text":
                style.append(("ALIGN", (i, 1), (i, -1), "RIGHT"))
        flow.setStyle(TableStyle(style))
        story.append(flow)
    out = io.BytesIO()
    pdf = SimpleDocTemplate(
        out,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=18 * mm,
        bottomMargin=18 * mm,
        title=doc.title,
        author="Dalaba",
        lang="zh-CN" if doc.lang == "zh" else "en",
    )
    pdf.build(story)
    return out.getvalue()


# --------------------------------------------------------------------------- XLSX

XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_NUMBER_FORMATS = {"pct": "0.00%", "hours": "#,##0.0", "seconds": "#,##0.0", "int": "#,##0"}


def to_xlsx(doc: Document) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = WORDS[doc.lang]["summary"]
    sheet.column_dimensions["A"].width = 110
    _text(sheet.cell(row=1, column=1), doc.title).font = Font(bold=True, size=14)
    _text(sheet.cell(row=2, column=1), doc.note)
    for i, paragraph in enumerate(doc.paragraphs, start=4):
        _text(sheet.cell(row=i, column=1), paragraph).alignment = Alignment(wrap_text=True)
    for table in doc.tables:
        ws = book.create_sheet(table.caption[:31])
        for j, c in enumerate(table.columns, start=1):
            _text(ws.cell(row=1, column=j), c.title).font = Font(bold=True)
            ws.column_dimensions[ws.cell(row=1, column=j).column_letter].width = max(
                12, 2 * len(c.title) + 2
            )
        for i, row in enumerate(table.rows, start=2):
            for j, (value, c) in enumerate(zip(row, table.columns, strict=True), start=1):
                target = ws.cell(row=i, column=j)
                if c.kind == "text":
                    _text(target, str(value))
                    continue
                if value is None:
                    continue
                # Seconds and milliseconds become the hours and seconds the header says.
                if c.kind == "hours":
                    value = round(value / 3600, 2)
                elif c.kind == "seconds":
                    value = round(value / 1000, 3)
                target.value = value
                target.number_format = _NUMBER_FORMATS[c.kind]
        ws.freeze_panes = "A2"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _text(target: Any, value: str) -> Any:
    """A cell that is text whatever it starts with: openpyxl takes "=..." for a formula,
    and a township or category name must never run as one."""
    target.value = value
    target.data_type = "s"
    return target
