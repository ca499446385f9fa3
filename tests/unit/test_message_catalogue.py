"""Every message the server sends to a person has a code the console words in both
languages: error codes raised anywhere in controller/, delivery reason codes
(controller/reasons.py), delivery and broadcast states. A code added without its
Chinese and English wording fails here, before a Chinese console shows English."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from controller import reasons
from controller.deliveries import BroadcastStatus
from dalaba.protocol import DeliveryState

ROOT = Path(__file__).resolve().parents[2]
I18N = ROOT / "web" / "js" / "i18n.js"

# Codes built at run time, which no literal in the source spells out.
DYNAMIC_CODES = {
    # controller/api/approvals.py: f"already_{row.status}" for a decided request
    "already_approved",
    "already_rejected",
    "already_expired",
    # controller/errors.py error_middleware: aiohttp's own HTTP errors
    "method_not_allowed",
    "http_error",
}


def i18n_tables(source: str) -> dict[str, set[str]]:
    """The keys of the `zh` and `en` tables of web/js/i18n.js."""
    tables: dict[str, set[str]] = {}
    for name in ("zh", "en"):
        start = source.index(f"const {name} = {{")
        end = source.index("\n};", start)
        tables[name] = set(re.findall(r'^\s*"([^"]+)":', source[start:end], re.M))
    return tables


def raised_codes(root: Path) -> dict[str, str]:
    """code -> first place it is raised, for every literal error code under `root`."""
    found: dict[str, str] = {}

    def note(code: object, where: str) -> None:
        if isinstance(code, str):
            found.setdefault(code, where)

    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ClassDef):
                # `code = "..."` on an exception class (speech/sniff.py's refusals)
                for stmt in node.body:
                    if (
                        isinstance(stmt, ast.Assign)
                        and [getattr(t, "id", None) for t in stmt.targets] == ["code"]
                        and isinstance(stmt.value, ast.Constant)
                    ):
                        note(stmt.value.value, where)
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            keywords = {k.arg: k.value for k in node.keywords}
            status = node.args[0] if node.args else None
            if (
                # ApiError(4xx, "code", ...) and its subclasses (LoginRefused, super().__init__)
                isinstance(status, ast.Constant)
                and isinstance(status.value, int)
                and 400 <= status.value < 600
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
            ):
                note(node.args[1].value, where)
            elif name == "bad_request":
                code = node.args[2] if len(node.args) >= 3 else keywords.get("code")
                if code is None:
                    note("invalid", where)
                elif isinstance(code, ast.Constant):
                    note(code.value, where)
            elif name in ("forbidden", "not_found"):
                note(name, where)
    return found


def test_the_scan_sees_the_codes_it_must() -> None:
    # A scan that found nothing would pass everything below.
    codes = raised_codes(ROOT / "controller")
    for code in ("invalid", "not_found", "forbidden", "township_required", "not_plain_audio"):
        assert code in codes
    assert "two_person_rule" in codes  # raised through a subclass's super().__init__
    assert "login_backoff" in codes  # a subclass of ApiError


def test_every_error_code_is_worded_in_both_languages() -> None:
    tables = i18n_tables(I18N.read_text(encoding="utf-8"))
    codes = raised_codes(ROOT / "controller")
    codes.update(dict.fromkeys(DYNAMIC_CODES, "(built at run time)"))
    missing = [
        f"err.{code} ({lang}; raised at {where})"
        for code, where in sorted(codes.items())
        for lang, keys in tables.items()
        if f"err.{code}" not in keys
    ]
    assert not missing, "codes without a translation:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    ("prefix", "codes"),
    [
        ("reason", reasons.CODES),
        ("state", tuple(s.value for s in DeliveryState)),
        ("bstatus", tuple(s.value for s in BroadcastStatus)),
    ],
)
def test_every_reason_and_state_is_worded_in_both_languages(
    prefix: str, codes: tuple[str, ...]
) -> None:
    tables = i18n_tables(I18N.read_text(encoding="utf-8"))
    missing = [
        f"{prefix}.{code} ({lang})"
        for code in codes
        for lang, keys in tables.items()
        if f"{prefix}.{code}" not in keys
    ]
    assert not missing, "without a translation:\n" + "\n".join(missing)


def test_a_missing_wording_is_caught(tmp_path: Path) -> None:
    source = 'const zh = {\n  "err.a": "甲",\n};\nconst en = {\n  "err.b": "B",\n};\n'
    assert i18n_tables(source) == {"zh": {"err.a"}, "en": {"err.b"}}


@pytest.mark.parametrize(
    ("sentence", "code", "params"),
    [
        ("amplifier failed to power on", "amplifier_no_power", {}),
        ("speaker line cut (no load on the amplifier output)", "line_cut", {}),
        ("speaker line cut during the play", "line_cut_during", {}),
        ("stopped", "stopped", {}),
        ("cancelled by duty1", "cancelled_by", {"by": "duty1"}),
        ("cancelled by the controller", "cancelled_by_controller", {}),
        ("resent (attempt 2) by duty1", "resent", {"n": "2", "by": "duty1"}),
        ("terminal refused the command: replayed", "refused", {"detail": "replayed"}),
        ("something new from a newer agent", "other", {}),
        (None, None, {}),
    ],
)
def test_reasons_map_to_codes(
    sentence: str | None, code: str | None, params: dict[str, str]
) -> None:
    assert reasons.reason_code(sentence) == (code, params)


def test_an_error_answer_carries_its_code_field_and_params() -> None:
    import json

    from controller.errors import bad_request

    body = json.loads(
        bad_request("text", "longer than 500 characters", "text_too_long", {"max": 500})
        .response()
        .text
        or "{}"
    )
    assert body == {
        "error": {
            "code": "text_too_long",
            "message": "text: longer than 500 characters",
            "field": "text",
            "params": {"max": 500},
        }
    }


def test_no_key_is_worded_twice_in_one_language() -> None:
    # Two helpers adding blocks to the same table: the later wording would win silently.
    source = I18N.read_text(encoding="utf-8")
    for name in ("zh", "en"):
        start = source.index(f"const {name} = {{")
        keys = re.findall(r'^\s*"([^"]+)":', source[start : source.index("\n};", start)], re.M)
        twice = sorted({k for k in keys if keys.count(k) > 1})
        assert not twice, f"{name}: {twice}"
