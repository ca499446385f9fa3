"""Rewrite Chinese announcement text into what a speech engine must say.

espeak-ng and the edge-tts zh-CN voices read "96110" as a quantity, "18:30" as a ratio
and "-5℃" as "minus five C". Listeners on a village pole cannot ask the loudspeaker to
repeat itself, so every number is spelled out in Chinese characters before synthesis,
in the reading a local announcer would use.

Rules where more than one reading is customary:

* Phone numbers are read digit by digit with 1 as 幺 (Mandarin) or 一 (Cantonese). A
  "，" pause goes wherever the text writes a separator (dash, space, parentheses) and
  at the customary groups of an unseparated mobile (3-4-4) or 400/800 number (3-3-4);
  other hotlines are read without pauses.
* Quantities use 两 for a leading 2 in front of 百, 千, 万 or 亿 ("2000元" → 两千元,
  "200米" → 两百米) and for a lone 2 before a measure word ("2个" → 两个); ordinals
  (第2, 2号, 2楼), months, days and levels keep 二.
* Clock-time and year ranges are joined with 至; other ranges written with a symbol
  (-, ~) are joined with 到 ("3-5级" → 三到五级), and a written 至 or 到 is kept.
* Years are read digit by digit, everything else with no context as a quantity.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping

__all__ = ["PronunciationDictionary", "normalize", "read_digits", "read_number"]

_LANGS = frozenset({"cmn", "yue"})

_DIGIT_CHARS = "零一二三四五六七八九"
# Hotlines are read with 幺 in Mandarin so that 1 and 7 do not blur over a loudspeaker;
# Cantonese has no such convention.
_PHONE_DIGITS = {
    "cmn": "零幺二三四五六七八九",
    "yue": _DIGIT_CHARS,
}
_SMALL_UNITS = ("", "十", "百", "千")
_SECTION_UNITS = ("", "万", "亿", "万亿")

_PHONE_SEPARATORS = frozenset(" -－—–()（）")

# Written hotlines that stand alone without a keyword in front of them.
_HOTLINES = frozenset(
    {
        "110", "119", "120", "122", "12110", "12315", "12345", "12320", "12333", "12348",
        "12350", "12355", "12356", "12358", "12366", "12369", "12388", "12395", "96110",
    }
)  # fmt: skip

_PHONE_KEYWORDS = (
    "电话", "热线", "拨打", "致电", "报警", "联系", "手机", "咨询", "举报", "求助",
    "专线", "号码", "传真", "客服",
)  # fmt: skip

# Latin unit symbols after a number, longest first so "mm" wins over "m".
_LATIN_UNITS: dict[str, str] = {
    "m³/s": "立方米每秒",
    "m3/s": "立方米每秒",
    "km/h": "公里每小时",
    "mm/h": "毫米每小时",
    "m/s": "米每秒",
    "km²": "平方公里",
    "m²": "平方米",
    "m³": "立方米",
    "kWh": "千瓦时",
    "kW": "千瓦",
    "kV": "千伏",
    "km": "公里",
    "KM": "公里",
    "mm": "毫米",
    "cm": "厘米",
    "kg": "公斤",
    "m": "米",
    "h": "小时",
    "°": "度",
}
_LATIN_UNIT_RE = "|".join(re.escape(u) for u in sorted(_LATIN_UNITS, key=len, reverse=True))

# Words that, right after a number, make it a quantity rather than a phone number.
# 台 before 风 is a typhoon, not "units of"; 处 before 理 is "handle".
_QUANTITY_WORDS = (
    "万元", "公里", "公斤", "公顷", "千米", "毫米", "厘米", "平方", "立方", "摄氏", "小时",
    "分钟", "人次", "户次", "台(?!风)", "处(?!理)",
    "个", "人", "名", "位", "户", "元", "块", "角", "万", "亿", "千", "百", "米", "斤",
    "吨", "克", "亩", "年", "月", "日", "号", "天", "周", "分", "秒", "度", "级", "次",
    "辆", "座", "条", "家", "项", "件", "只", "头", "批", "支", "期", "届", "栋", "层",
    "室", "间", "艘", "架", "例", "起", "份", "张", "本", "册", "场", "轮", "倍", "岁",
    "组", "套", "箱", "袋", "瓶", "盒", "余", "多", "棵", "株", "根", "尾", "匹", "升",
    "里", "剂", "针", "宗", "床", "顿", "℃", "°", "%",
)  # fmt: skip
_QUANTITY_AHEAD = re.compile(
    rf"\s*(?:{'|'.join(_QUANTITY_WORDS)}|(?:{_LATIN_UNIT_RE})(?![A-Za-z]))"
)
# A dash after "5级" or "3个" joins a range; after any other word it is a minus sign.
_QUANTITY_BEHIND = re.compile(
    rf"[\d零一二三四五六七八九十百千万亿两幺]"
    rf"(?:{'|'.join(w for w in _QUANTITY_WORDS if '(' not in w)})\s*$"
)

# A lone 2 before these is 两 ("两个村", "两公里"); before 级, 号, 月, 度 it stays 二.
_LIANG_WORDS = re.compile(
    r"(?:个|名|位|户|人|天|小时|分钟|秒|台|辆|座|次|条|家|项|只|头|种|周|批|支|所|间|艘|"
    r"架|处|年(?!级)|米|公里|千米|公斤|斤|吨|亩|万|千|百|亿|倍|份|张|本|件|场|轮|趟|遍|"
    r"组|队|起|例|剂|针|岁|圈|成|块|元)"
)
_ORDINAL_AHEAD = re.compile(r"(?:号|期|届|楼|层|室|栋|单元|路|版|级|年级)")
# Shape-detected hotlines are not guessed after words that announce a count.
_COUNT_CUES = frozenset("第共约达计近超余¥￥$")

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_SEP = r"[-－—–~～〜]|至|到"
_SEP_SYMBOL_RE = re.compile(r"[-－—–~～〜]")
_MINUS = "-−－"

_FULL_WIDTH = str.maketrans(
    {
        **{chr(0xFF10 + i): str(i) for i in range(10)},
        "％": "%",
        "㎜": "mm",
        "㎝": "cm",
        "㎞": "km",
        "㎡": "m²",
        "㎥": "m³",
    }
)


def _check_lang(lang: str) -> None:
    if lang not in _LANGS:
        raise ValueError(f"unsupported lang {lang!r}; expected one of {sorted(_LANGS)}")


# --------------------------------------------------------------------------- numbers


def read_digits(digits: str, *, lang: str = "cmn") -> str:
    """Read a phone number digit by digit; written separators become a "，" pause."""
    _check_lang(lang)
    table = _PHONE_DIGITS[lang]
    out: list[str] = []
    seen_digit = False
    for ch in digits:
        if "0" <= ch <= "9":
            out.append(table[int(ch)])
            seen_digit = True
        elif ch in _PHONE_SEPARATORS:
            if out and out[-1] != "，":
                out.append("，")
        else:
            raise ValueError(f"not a phone number: {digits!r}")
    if not seen_digit:
        raise ValueError(f"not a phone number: {digits!r}")
    if out[-1] == "，":
        out.pop()
    return "".join(out)


_CODE_MARKS = {".": "点", ",": ","}


def _plain_digits(digits: str) -> str:
    """Years, codes and decimals: 1 is 一, never 幺, and "." is 点."""
    return "".join(_DIGIT_CHARS[int(ch)] if ch.isdigit() else _CODE_MARKS[ch] for ch in digits)


def _read_section(section: str, *, leading: bool, liang: bool, has_unit: bool) -> str:
    """Read four digits (千百十个); `leading` is true for the number's first section."""
    parts: list[str] = []
    started = False
    zero_pending = False
    for index, ch in enumerate(section):
        place = 3 - index
        digit = int(ch)
        if digit == 0:
            zero_pending = started
            continue
        if zero_pending:
            parts.append("零")
            zero_pending = False
        first = leading and not started
        if first and place == 1 and digit == 1:
            word = ""  # 十二, not 一十二, at the head of a number
        elif first and liang and digit == 2 and (place >= 2 or (place == 0 and has_unit)):
            word = "两"
        else:
            word = _DIGIT_CHARS[digit]
        parts.append(word + _SMALL_UNITS[place])
        started = True
    return "".join(parts)


def _read_integer(digits: str, *, liang: bool = True) -> str:
    digits = digits.lstrip("0")
    if not digits:
        return "零"
    if len(digits) > 4 * len(_SECTION_UNITS):
        return _plain_digits(digits)
    sections: list[str] = []
    while digits:
        sections.insert(0, digits[-4:].zfill(4))
        digits = digits[:-4]
    out: list[str] = []
    zero_pending = False
    for index, section in enumerate(sections):
        unit = _SECTION_UNITS[len(sections) - 1 - index]
        if section == "0000":
            zero_pending = bool(out)
            continue
        if out and (zero_pending or section[0] == "0"):
            out.append("零")
        zero_pending = False
        out.append(_read_section(section, leading=not out, liang=liang, has_unit=bool(unit)))
        out.append(unit)
    return "".join(out)


_READ_NUMBER_RE = re.compile(rf"(?P<sign>[{_MINUS}])?(?:\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.\d+)?")


def _read_unsigned(number: str, *, liang: bool = True) -> str:
    integer, _, fraction = number.replace(",", "").partition(".")
    spoken = _read_integer(integer, liang=liang)
    if fraction:
        spoken += "点" + _plain_digits(fraction)
    return spoken


def read_number(number: str) -> str:
    """Read a number as a quantity: "3005" → 三千零五, "1.2" → 一点二, "-5" → 负五."""
    match = _READ_NUMBER_RE.fullmatch(number.strip())
    if match is None:
        raise ValueError(f"not a number: {number!r}")
    spoken = _read_unsigned(number.strip().lstrip(_MINUS))
    return ("负" if match["sign"] else "") + spoken


# ---------------------------------------------------------------- pronunciation dictionary

# Place names whose usual reading is wrong in engines trained on common words. Spoken forms
# are Mandarin homophones, so they are not offered for Cantonese voices.
_DEFAULT_CMN_ENTRIES: dict[str, str] = {
    "单县": "善县",
    "六安": "陆安",
    "蚌埠": "泵埠",
    "丽水市": "离水市",
    "台州": "胎州",
    "天台县": "天胎县",
    "番禺": "潘禺",
    "铅山": "沿山",
    "歙县": "社县",
    "东阿": "东婀",
    "莘县": "深县",
    "乐亭": "涝亭",
    "乐清": "月清",
    "涡阳": "锅阳",
    "洪洞": "洪同",
    "蔚县": "玉县",
    "枞阳": "宗阳",
    "浚县": "迅县",
    "句容": "巨容",
    "百色": "博色",
    "大埔": "大布",
    "荥阳": "形阳",
    "尉犁": "玉犁",
    "犍为": "前维",
    "筠连": "君连",
    "黄陂": "黄皮",
    "亳州": "博州",
    "牟平": "木平",
    "什邡": "十方",
    "临朐": "临渠",
}


class PronunciationDictionary:
    """Written form → spoken form, applied before any number is read.

    At each position the longest written form wins, so an entry that maps a phrase to
    itself ("长坂坡" → "长坂坡") shields it from a shorter entry inside it.
    """

    def __init__(self, entries: Mapping[str, str] | None = None) -> None:
        self._entries: dict[str, str] = {}
        self._pattern: re.Pattern[str] | None = None
        for written, spoken in (entries or {}).items():
            self.add(written, spoken)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str]) -> PronunciationDictionary:
        return cls(mapping)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PronunciationDictionary:
        """Read a UTF-8 JSON object of written → spoken strings."""
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if not isinstance(data, dict):
            raise ValueError(f"{os.fspath(path)}: expected a JSON object of written → spoken")
        return cls(data)

    @classmethod
    def default(cls, lang: str = "cmn") -> PronunciationDictionary:
        _check_lang(lang)
        return cls(_DEFAULT_CMN_ENTRIES if lang == "cmn" else {})

    def save(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self._entries, handle, ensure_ascii=False, indent=2, sort_keys=True)
            handle.write("\n")

    def add(self, written: str, spoken: str) -> None:
        if not isinstance(written, str) or not isinstance(spoken, str):
            raise ValueError(f"dictionary entries must be strings: {written!r} → {spoken!r}")
        if not written:
            raise ValueError("dictionary entry has an empty written form")
        self._entries[written] = spoken
        self._pattern = None

    def remove(self, written: str) -> None:
        del self._entries[written]
        self._pattern = None

    def merged(self, other: PronunciationDictionary) -> PronunciationDictionary:
        """A new dictionary with `other`'s entries overriding these."""
        return PronunciationDictionary({**self._entries, **other._entries})

    @property
    def entries(self) -> dict[str, str]:
        return dict(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, written: object) -> bool:
        return written in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self._entries))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PronunciationDictionary):
            return NotImplemented
        return self._entries == other._entries

    def __repr__(self) -> str:
        return f"PronunciationDictionary({self._entries!r})"

    def apply(self, text: str) -> str:
        if not self._entries:
            return text
        if self._pattern is None:
            ordered = sorted(self._entries, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(w) for w in ordered))
        # One pass, so a spoken form is never rewritten again by another entry.
        return self._pattern.sub(lambda m: self._entries[m.group()], text)


# --------------------------------------------------------------------------- helpers


def _quantity_follows(text: str, pos: int) -> bool:
    return _QUANTITY_AHEAD.match(text, pos) is not None


def _is_ascii_letter(ch: str) -> bool:
    return ch.isascii() and ch.isalpha()


def _quantity(number: str, after: str) -> str:
    """A count: a lone 2 before a measure word is 两."""
    if number == "2" and _LIANG_WORDS.match(after.lstrip()):
        return "两"
    return _read_unsigned(number)


def _range_word(sep: str, *, clock: bool = False) -> str:
    if _SEP_SYMBOL_RE.fullmatch(sep):
        return "至" if clock else "到"
    return sep


# ----------------------------------------------------------------------------- dates

_FULL_DATE = re.compile(
    r"(?<![\d.])(?P<y>[12]\d{3})(?P<sep>[-/.])(?P<mo>\d{1,2})(?P=sep)(?P<d>\d{1,2})(?![\d.])"
)
_YEAR = r"[12]\d{3}"
_YEAR_RANGE = re.compile(
    rf"(?<![\d.第])(?P<a>{_YEAR})(?P<ya>年?)\s*(?P<sep>{_SEP})\s*(?P<b>{_YEAR})年(?!一遇)"
)
_YEAR_ALONE = re.compile(rf"(?<![\d.第])(?P<y>{_YEAR})年(?!一遇)")
_MONTH = re.compile(r"(?<![\d.])(?P<mo>0?[1-9]|1[0-2])月")
_DAY = re.compile(r"(?<![\d.])(?P<d>0?[1-9]|[12]\d|3[01])(?P<u>日|号)")


def _full_date(m: re.Match[str]) -> str:
    month, day = int(m["mo"]), int(m["d"])
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return m.group()
    return (
        f"{_plain_digits(m['y'])}年{_read_integer(str(month), liang=False)}月"
        f"{_read_integer(str(day), liang=False)}日"
    )


def _dates(text: str, lang: str) -> str:
    text = _FULL_DATE.sub(_full_date, text)
    text = _YEAR_RANGE.sub(
        lambda m: (
            f"{_plain_digits(m['a'])}{m['ya']}{_range_word(m['sep'], clock=True)}"
            f"{_plain_digits(m['b'])}年"
        ),
        text,
    )
    text = _YEAR_ALONE.sub(lambda m: f"{_plain_digits(m['y'])}年", text)
    text = _MONTH.sub(lambda m: f"{_read_integer(m['mo'], liang=False)}月", text)
    return _DAY.sub(lambda m: f"{_read_integer(m['d'], liang=False)}{m['u']}", text)


# ----------------------------------------------------------------------------- times


def _clock_pattern(suffix: str) -> str:
    return (
        rf"(?P<h{suffix}>[01]?\d|2[0-4])[:：](?P<m{suffix}>[0-5]\d)"
        rf"(?:[:：](?P<s{suffix}>[0-5]\d))?"
    )


def _dot_pattern(suffix: str) -> str:
    # "9点30分", "18时05分", "3点半"; the minute must end the digits so "9点60" is left alone.
    return (
        rf"(?P<h{suffix}>[01]?\d|2[0-4])(?P<u{suffix}>点|时)"
        rf"(?:(?P<half{suffix}>半)|(?P<m{suffix}>[0-5]?\d)(?!\d)(?P<mu{suffix}>分)?"
        rf"(?:(?P<s{suffix}>[0-5]?\d)秒)?)?"
    )


# A colon only starts a clock time when no digit sits before it: "18:30:15" is one time.
_CLOCK_START = r"(?<![\d.])(?<!\d[:：])"
_CLOCK_END = r"(?!\d|[:：]\d)"
_CLOCK_RANGE = re.compile(
    rf"{_CLOCK_START}{_clock_pattern('1')}\s*(?P<sep>{_SEP})\s*(?P<next>次日)?"
    rf"{_clock_pattern('2')}{_CLOCK_END}"
)
_CLOCK = re.compile(rf"{_CLOCK_START}{_clock_pattern('')}{_CLOCK_END}")
_DOT_RANGE = re.compile(rf"(?<![\d.]){_dot_pattern('1')}\s*(?P<sep>{_SEP})\s*{_dot_pattern('2')}")
_DOT = re.compile(rf"(?<![\d.]){_dot_pattern('')}")


def _hour(hour: str) -> str:
    # Clock time two is 两点, never 二点; 12 and 22 keep 二.
    return "两" if int(hour) == 2 else _read_integer(hour, liang=False)


def _sexagesimal(value: str) -> str:
    # A written leading zero is spoken: 7:05 → 七点零五分.
    if len(value) == 2 and value[0] == "0":
        return "零" + _DIGIT_CHARS[int(value[1])]
    return _read_integer(value, liang=False)


def _spoken_clock(m: re.Match[str], suffix: str) -> str:
    spoken = _hour(m[f"h{suffix}"]) + "点"
    minute, second = m[f"m{suffix}"], m[f"s{suffix}"]
    if int(minute) or (second and int(second)):
        spoken += _sexagesimal(minute) + "分"
    if second and int(second):
        spoken += _sexagesimal(second) + "秒"
    return spoken


def _spoken_dot(m: re.Match[str], suffix: str) -> str:
    spoken = _hour(m[f"h{suffix}"]) + m[f"u{suffix}"]
    if m[f"half{suffix}"]:
        return spoken + "半"
    minute, second = m[f"m{suffix}"], m[f"s{suffix}"]
    if minute is not None:
        spoken += _sexagesimal(minute) + (m[f"mu{suffix}"] or "")
    if second is not None:
        spoken += _sexagesimal(second) + "秒"
    return spoken


def _times(text: str, lang: str) -> str:
    text = _CLOCK_RANGE.sub(
        lambda m: f"{_spoken_clock(m, '1')}至{m['next'] or ''}{_spoken_clock(m, '2')}", text
    )
    text = _CLOCK.sub(lambda m: _spoken_clock(m, ""), text)
    text = _DOT_RANGE.sub(
        lambda m: f"{_spoken_dot(m, '1')}{_range_word(m['sep'], clock=True)}{_spoken_dot(m, '2')}",
        text,
    )
    return _DOT.sub(lambda m: _spoken_dot(m, ""), text)


# ---------------------------------------------------------------------------- phones

_AREA_CODE_PHONE = re.compile(
    r"(?<![\d.])(?:[（(](?P<ac1>0\d{2,3})[）)]\s*|(?P<ac2>0\d{2,3})\s*[-－—– ]\s*)"
    r"(?P<num>\d{7,8})(?:(?P<xsep>转|[-－])(?P<ext>\d{1,6}))?(?!\d|\.\d)"
)
_SERVICE_PHONE = re.compile(
    r"(?<![\d.])(?P<a>[48]00)(?P<s>[-－ ]?)(?P<b>\d{3})(?P=s)(?P<c>\d{4})(?!\d|\.\d)"
)
_MOBILE = re.compile(
    r"(?<![\d.])(?P<a>1[3-9]\d)(?P<s>[-－ ]?)(?P<b>\d{4})(?P=s)(?P<c>\d{4})(?!\d|\.\d)"
)
_KEYWORD_PHONE = re.compile(
    rf"(?P<kw>{'|'.join(_PHONE_KEYWORDS)})(?P<gap>[^\d。；;！!？?\n，,、]{{0,8}}?)"
    r"(?P<num>\d+(?:[-－]\d+)*)(?:转(?P<ext>\d+))?"
)
_DIGIT_RUN = re.compile(r"(?<![\d.A-Za-z])(?P<tok>\d+(?:,\d{3})*)(?!\d)")
_AFTER_NOT_PHONE = re.compile(rf"[.:：]\d|\s*(?:{_SEP})\s*\d")
_BEFORE_RANGE = re.compile(rf"\d\s*(?:{_SEP})\s*$")


def _grouped(lang: str, *groups: str) -> str:
    return "，".join(read_digits(g, lang=lang) for g in groups)


def _looks_like_hotline(digits: str, text: str, start: int, end: int) -> bool:
    # A long round number is an amount ("10000", "120000"), not a line.
    if digits not in _HOTLINES and (len(digits) < 5 or digits.endswith("000")):
        return False
    if _quantity_follows(text, end) or _AFTER_NOT_PHONE.match(text, end):
        return False
    before = text[max(0, start - 8) : start]
    last = before.rstrip()[-1:]
    if last and (last in _COUNT_CUES or last in _MINUS):
        return False
    return _BEFORE_RANGE.search(before) is None


def _phones(text: str, lang: str) -> str:
    def area(m: re.Match[str]) -> str:
        if _quantity_follows(m.string, m.end()):
            return m.group()
        spoken = _grouped(lang, m["ac1"] or m["ac2"], m["num"])
        if m["ext"]:
            pause = "转" if m["xsep"] == "转" else "，"
            spoken += pause + read_digits(m["ext"], lang=lang)
        return spoken

    def grouped(m: re.Match[str]) -> str:
        prev = m.string[m.start() - 1 : m.start()]
        if _quantity_follows(m.string, m.end()) or _is_ascii_letter(prev):
            return m.group()
        if not (m["b"] + m["c"]).strip("0"):
            return m.group()  # 4000000000 is four billion, not a service line
        return _grouped(lang, m["a"], m["b"], m["c"])

    def keyword(m: re.Match[str]) -> str:
        number = m["num"]
        tail = m.end("num")
        if (
            sum(ch.isdigit() for ch in number) < 3
            or _is_ascii_letter(m["gap"][-1:])
            or _quantity_follows(m.string, tail)
            or re.match(r"[.:：%]\d|%|\d", m.string[tail : tail + 2])
        ):
            return m.group()
        spoken = read_digits(number, lang=lang)
        if m["ext"]:
            spoken += "转" + read_digits(m["ext"], lang=lang)
        return m["kw"] + m["gap"] + spoken

    def shape(m: re.Match[str]) -> str:
        token = m["tok"]
        if "," in token:
            # "12,345人" is a grouped amount; "110,119,120" is a list of lines.
            if _quantity_follows(m.string, m.end()):
                return token
            pieces: list[str] = []
            offset = m.start()
            for part in token.split(","):
                end = offset + len(part)
                hotline = _looks_like_hotline(part, m.string, offset, end)
                pieces.append(read_digits(part, lang=lang) if hotline else part)
                offset = end + 1
            return ",".join(pieces)
        if _looks_like_hotline(token, m.string, m.start(), m.end()):
            return read_digits(token, lang=lang)
        return token

    text = _AREA_CODE_PHONE.sub(area, text)
    text = _SERVICE_PHONE.sub(grouped, text)
    text = _MOBILE.sub(grouped, text)
    text = _KEYWORD_PHONE.sub(keyword, text)
    return _DIGIT_RUN.sub(shape, text)


# ------------------------------------------------------------- percentages, temperatures

_PERCENT_RANGE = re.compile(rf"(?<![\d.])(?P<a>{_NUM})\s*%?\s*(?P<sep>{_SEP})\s*(?P<b>{_NUM})\s*%")
_PERCENT = re.compile(rf"(?<![\d.])(?P<sign>[{_MINUS}])?(?P<a>{_NUM})\s*[%‰]")
_TEMP_UNIT = r"℃|°C|°c|摄氏度|度"
_TEMP_RANGE = re.compile(
    rf"(?<![\d.])(?P<s1>[{_MINUS}]|零下)?(?P<a>{_NUM})\s*(?:℃|°C|°c)?\s*(?P<sep>{_SEP})\s*"
    rf"(?P<s2>[{_MINUS}]|零下)?(?P<b>{_NUM})\s*(?P<u>{_TEMP_UNIT})"
)
_TEMP = re.compile(rf"(?<![\d.])(?P<s>[{_MINUS}]|零下)?(?P<a>{_NUM})\s*(?P<u>{_TEMP_UNIT})")


def _signed(m: re.Match[str], group: str) -> bool:
    """A minus sign counts only where it cannot be a dash between two words or codes."""
    sign = m[group]
    if not sign:
        return False
    if sign == "零下":
        return True
    prev = m.string[m.start(group) - 1 : m.start(group)]
    return not (prev.isascii() and prev.isalnum())


def _percent_value(number: str) -> str:
    return "百" if number == "100" else _read_unsigned(number)


def _percentages(text: str, lang: str) -> str:
    text = _PERCENT_RANGE.sub(
        lambda m: (
            f"百分之{_percent_value(m['a'])}{_range_word(m['sep'])}百分之{_percent_value(m['b'])}"
        ),
        text,
    )

    def single(m: re.Match[str]) -> str:
        whole = m.group()
        prefix = "千分之" if whole.endswith("‰") else "百分之"
        spoken = prefix + _percent_value(m["a"])
        if _signed(m, "sign"):
            return "负" + spoken
        return (m["sign"] or "") + spoken

    return _PERCENT.sub(single, text)


def _temperatures(text: str, lang: str) -> str:
    def unit(m: re.Match[str]) -> str:
        return "度" if m["u"] == "度" else "摄氏度"

    def sign(m: re.Match[str], group: str) -> str:
        if _signed(m, group):
            return "零下"
        return m[group] or ""

    def span(m: re.Match[str]) -> str:
        return (
            f"{sign(m, 's1')}{_read_unsigned(m['a'])}{_range_word(m['sep'])}"
            f"{sign(m, 's2')}{_read_unsigned(m['b'])}{unit(m)}"
        )

    text = _TEMP_RANGE.sub(span, text)
    return _TEMP.sub(lambda m: f"{sign(m, 's')}{_read_unsigned(m['a'])}{unit(m)}", text)


# ------------------------------------------------------------------- ranges and units

_CJK_RANGE_UNITS = (
    "毫米|厘米|公里|千米|公斤|小时|分钟|万元|米|级|个|人|天|元|万|吨|亩|户|名|岁|次|倍|年|月|日|周"
)
_RANGE = re.compile(
    rf"(?<![\d.])(?P<a>{_NUM})\s*(?P<u1>(?:{_LATIN_UNIT_RE})(?![A-Za-z])|{_CJK_RANGE_UNITS})?"
    rf"\s*(?P<sep>{_SEP})\s*(?P<b>{_NUM})"
    rf"(?:\s*(?P<u2>{_LATIN_UNIT_RE})(?![A-Za-z])|(?=\s*(?:{'|'.join(_QUANTITY_WORDS)})))"
)
_LATIN_QUANTITY = re.compile(
    rf"(?P<sign>[{_MINUS}])?(?P<a>{_NUM})\s*(?P<u>{_LATIN_UNIT_RE})(?![A-Za-z])"
)
_CURRENCY = re.compile(rf"[¥￥]\s*(?P<a>{_NUM})(?P<wan>万|亿)?元?")
_PER = re.compile(
    r"(?P<a>公里|千米|毫米|厘米|立方米|平方米|米|微克|毫克|克|元|人|次|吨)/"
    r"(?P<b>秒|小时|时|分钟|天|日|周|月|年|斤|公斤|千克|吨|亩|人|次|户|平方米|立方米)"
)


def _spoken_unit(unit: str | None) -> str:
    if not unit:
        return ""
    return _LATIN_UNITS.get(unit, unit)


def _ranges(text: str, lang: str) -> str:
    def span(m: re.Match[str]) -> str:
        if _is_ascii_letter(m.string[m.start() - 1 : m.start()]):
            return m.group()
        u1, u2 = _spoken_unit(m["u1"]), _spoken_unit(m["u2"])
        after = u2 or m.string[m.end() :]
        if m.string[: m.start()].rstrip().endswith("第"):
            first, last = _read_unsigned(m["a"], liang=False), _read_unsigned(m["b"], liang=False)
        else:
            first, last = _quantity(m["a"], u1 or after), _quantity(m["b"], after)
        return f"{first}{u1}{_range_word(m['sep'])}{last}{u2}"

    return _RANGE.sub(span, text)


def _units(text: str, lang: str) -> str:
    def latin(m: re.Match[str]) -> str:
        if _is_ascii_letter(m.string[m.start() - 1 : m.start()]):
            return m.group()
        unit = _LATIN_UNITS[m["u"]]
        spoken = _quantity(m["a"], unit) + unit
        if _signed(m, "sign"):
            return "负" + spoken
        return (m["sign"] or "") + spoken

    text = _CURRENCY.sub(lambda m: f"{_quantity(m['a'], m['wan'] or '元')}{m['wan'] or ''}元", text)
    text = _LATIN_QUANTITY.sub(latin, text)
    return _PER.sub(lambda m: f"{m['a']}每{m['b']}", text)


# --------------------------------------------------------------------- other numbers

_REMAINING = re.compile(rf"(?P<lead>\s*)(?:(?P<sign>[{_MINUS}~～〜—–])\s*)?(?P<num>{_NUM})")


_RATIO_COLON = re.compile(r"(?<=\d)[:：](?=\d)")


def _numbers(text: str, lang: str) -> str:
    def token(m: re.Match[str]) -> str:
        whole, lead, sign, num = m.string, m["lead"], m["sign"] or "", m["num"]
        prev = whole[m.start() - 1 : m.start()]
        before = whole[max(0, m.start() - 8) : m.start()]
        after = whole[m.end() :]
        # Codes keep their letters and are read digit by digit: G205, PM2.5, COVID-19.
        if _is_ascii_letter(whole[m.start("num") - 1 : m.start("num")]) or (
            sign and not lead and _is_ascii_letter(prev)
        ):
            return lead + sign + _plain_digits(num)
        prefix = lead + sign
        if sign and (prev.isdigit() or _QUANTITY_BEHIND.search(before)):
            prefix = "到"
        elif sign and sign in _MINUS and not (prev.isascii() and prev.isalnum()):
            prefix = lead + "负"
        if "," in num and not _quantity_follows(whole, m.end()):
            # Without a unit after it, "110,119" is a list, not a grouped thousand.
            return prefix + ",".join(_read_unsigned(part) for part in num.split(","))
        if len(num) > 1 and num[0] == "0" and "." not in num:
            return prefix + _plain_digits(num)
        if before.rstrip().endswith("第") or _ORDINAL_AHEAD.match(after):
            return prefix + _read_unsigned(num, liang=False)
        return prefix + _quantity(num, after)

    # Clock times are already spelled out, so a colon left between digits is a ratio.
    text = _RATIO_COLON.sub("比", text)
    return _REMAINING.sub(token, text)


_NUMERAL_DASH = re.compile(
    r"(?<=[零一二三四五六七八九十百千万亿两])(?P<unit>[年月日号点时分秒]?)"
    r"\s*(?:[-~～〜–]|(?<!—)—(?!—))\s*(?=[零一二三四五六七八九十两])"
)


def _numeral_ranges(text: str, lang: str) -> str:
    # Dates and days are spelled out before ranges are seen: "3月-5月" is now "三月-五月".
    return _NUMERAL_DASH.sub(lambda m: f"{m['unit']}到", text)


# ------------------------------------------------------------------------ entry point

_PASSES: tuple[Callable[[str, str], str], ...] = (
    _dates,
    _times,
    _phones,
    _percentages,
    _temperatures,
    _ranges,
    _units,
    _numbers,
    _numeral_ranges,
)


# Never handed out, so nobody can edit the shared copy.
_DEFAULT_DICTIONARIES: dict[str, PronunciationDictionary] = {}


def normalize(
    text: str, *, lang: str = "cmn", dictionary: PronunciationDictionary | None = None
) -> str:
    """Rewrite `text` into the Chinese characters a speech engine should read aloud.

    `dictionary` defaults to `PronunciationDictionary.default(lang)`; pass an empty
    `PronunciationDictionary()` to turn place-name rewriting off, or merge the default
    with a county's own entries.
    """
    _check_lang(lang)
    if dictionary is None:
        if lang not in _DEFAULT_DICTIONARIES:
            _DEFAULT_DICTIONARIES[lang] = PronunciationDictionary.default(lang)
        dictionary = _DEFAULT_DICTIONARIES[lang]
    text = dictionary.apply(text).translate(_FULL_WIDTH)
    for step in _PASSES:
        text = step(text, lang)
    return text
