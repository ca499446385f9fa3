"""Announcement templates: the built-in set, definition checks, filling and defaults."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.auth import Principal, Role
from controller.broadcasts import BroadcastIn
from controller.builtin_templates import BUILTIN_TEMPLATES
from controller.db import Database
from controller.errors import ApiError
from controller.models import Township
from controller.speech import AnnouncementRequest
from controller.speech.types import MAX_TEXT_CHARS
from controller.templates import (
    Template,
    TemplateIn,
    check_definition,
    create_template,
    fill_content,
    fill_text,
    get_template,
    languages_for,
    reset_template,
    resolve_content,
    seed_builtin_templates,
    set_township_languages,
    update_template,
)
from dalaba.protocol import Target

ADMIN = Principal("admin", Role.ADMIN)


def template(**fields: Any) -> Template:
    values: dict[str, Any] = {
        "id": "t_one",
        "name": "测试",
        "category": "other",
        "body": "请{who}到{place}。",
        "placeholders": [
            {"name": "who", "label": "人员", "required": True, "default": None},
            {"name": "place", "label": "地点", "required": False, "default": "村委会"},
        ],
        "priority": "notice",
        "level": None,
        "languages": ["cmn"],
        "created_ms": 0,
        "updated_ms": 0,
    }
    values.update(fields)
    return Template(**values)


def definition(**fields: Any) -> dict[str, Any]:
    t = template(**fields)
    return {
        "body": t.body,
        "placeholders": t.placeholders,
        "priority": t.priority,
        "level": t.level,
        "languages": t.languages,
    }


def field_of(exc: pytest.ExceptionInfo[ApiError]) -> str | None:
    assert exc.value.status == 400
    return exc.value.field


# --------------------------------------------------------------------------- built-ins


def test_builtin_set_covers_every_alert_type_and_the_false_alarm() -> None:
    categories = {t["category"] for t in BUILTIN_TEMPLATES}
    assert {
        "forest_fire",
        "fire_prevention",
        "flood",
        "typhoon",
        "earthquake",
        "anti_fraud",
        "epidemic",
        "road_safety",
        "anti_drug",
        "civility",
        "rural_revitalisation",
        "meeting",
    } <= categories
    ids = {t["id"] for t in BUILTIN_TEMPLATES}
    assert "false_alarm_correction" in ids
    fraud = next(t for t in BUILTIN_TEMPLATES if t["category"] == "anti_fraud")
    assert "96110" in fill_text(Template(**{**fraud, "created_ms": 0, "updated_ms": 0}), {}, None)


@pytest.mark.parametrize("spec", BUILTIN_TEMPLATES, ids=lambda s: s["id"])
def test_every_builtin_is_valid_and_fills_into_speakable_text(spec: dict[str, Any]) -> None:
    row = Template(**{**spec, "created_ms": 0, "updated_ms": 0})
    check_definition({**definition(), **{k: getattr(row, k) for k in definition()}})
    examples = {ph["name"]: ph["example"] for ph in row.placeholders if ph["required"]}
    assert all(examples.values()), "every required placeholder has an example"
    for level in (1, 2, 3, 4) if row.priority == "emergency" else (None,):
        text = fill_text(row, examples, level)
        assert "{" not in text and "}" not in text
        # The filled text is a valid announcement.
        AnnouncementRequest(text=text, category=row.category, priority=row.priority, level=level)
        assert len(text) < MAX_TEXT_CHARS


def test_level_placeholders_follow_the_level() -> None:
    spec = next(t for t in BUILTIN_TEMPLATES if t["id"] == "heavy_rain_warning")
    row = Template(**{**spec, "created_ms": 0, "updated_ms": 0})
    assert "暴雨红色预警" in fill_text(row, {}, 1)
    assert "暴雨蓝色预警" in fill_text(row, {}, 4)


# --------------------------------------------------------------------------- filling


def test_fill_uses_defaults_and_given_values() -> None:
    assert fill_text(template(), {"who": "各户代表"}, None) == "请各户代表到村委会。"
    assert fill_text(template(), {"who": "张三", "place": "祠堂"}, None) == "请张三到祠堂。"
    assert fill_text(template(), {"who": 3}, None) == "请3到村委会。"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "params.who"),
        ({"who": "  "}, "params.who"),
        ({"who": "x", "colour": "red"}, "params.colour"),
        ({"who": True}, "params.who"),
        ({"who": ["a"]}, "params.who"),
        ({"who": "x" * 201}, "params.who"),
        ({"who": "a\nb"}, "params.who"),
    ],
)
def test_bad_params_name_the_parameter(params: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiError) as exc:
        fill_text(template(), params, None)
    assert field_of(exc) == field
    assert field in exc.value.message


def test_a_value_with_braces_is_spoken_as_written_not_expanded() -> None:
    assert fill_text(template(), {"who": "{place}"}, None) == "请{place}到村委会。"


# --------------------------------------------------------------------------- definitions


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"body": "请{who}到{place}，{when}。"}, "body"),
        ({"body": "请{who}。"}, "placeholders"),
        ({"body": "请{who}到{place}{"}, "body"),
        ({"body": "请{Who}到{place}"}, "body"),
        (
            {
                "placeholders": [
                    {"name": "who", "required": True, "default": "x"},
                    {"name": "place", "required": False, "default": "y"},
                ]
            },
            "placeholders[0].default",
        ),
        (
            {
                "placeholders": [
                    {"name": "who", "required": True, "default": None},
                    {"name": "who", "required": False, "default": "y"},
                ]
            },
            "placeholders[1].name",
        ),
        (
            {
                "body": "{level_colour}{who}{place}",
                "placeholders": [
                    {"name": "level_colour", "required": False, "default": "红"},
                    {"name": "who", "required": True, "default": None},
                    {"name": "place", "required": False, "default": "y"},
                ],
            },
            "placeholders[0].name",
        ),
        ({"priority": "emergency", "level": None}, "level"),
        ({"priority": "notice", "level": 2}, "level"),
        ({"body": "{level_colour}请{who}到{place}"}, "body"),
        ({"languages": ["cmn", "cmn"]}, "languages"),
    ],
)
def test_bad_definitions_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiError) as exc:
        check_definition(definition(**fields))
    assert field_of(exc) == field


# --------------------------------------------------------------------------- storage


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    database.start()

    def townships(session: Any) -> None:
        for tid in ("t01", "t02", "t03"):
            session.add(Township(id=tid, name=tid, lat=0, lon=0))

    database.run_sync(townships)
    database.run_sync(seed_builtin_templates)
    yield database
    database.stop()


def test_seeding_is_idempotent_and_keeps_edits(db: Database) -> None:
    assert db.run_sync(seed_builtin_templates) == 0
    db.run_sync(
        lambda s: update_template(s, ADMIN, "anti_fraud_reminder", {"body": "反诈：打{hotline}。"})
    )
    assert db.run_sync(seed_builtin_templates) == 0
    edited = db.run_sync(lambda s: get_template(s, "anti_fraud_reminder"))
    assert edited.body == "反诈：打{hotline}。" and edited.version == 2
    db.run_sync(lambda s: reset_template(s, ADMIN, "anti_fraud_reminder"))
    reset = db.run_sync(lambda s: get_template(s, "anti_fraud_reminder"))
    assert "96110" in fill_text(reset, {}, None) and reset.version == 3


def test_an_edit_that_changes_nothing_keeps_the_version(db: Database) -> None:
    before = db.run_sync(lambda s: get_template(s, "meeting_notice")).version
    db.run_sync(lambda s: update_template(s, ADMIN, "meeting_notice", {"repeat": None}))
    assert db.run_sync(lambda s: get_template(s, "meeting_notice")).version == before
    with pytest.raises(ApiError) as exc:
        db.run_sync(
            lambda s: update_template(s, ADMIN, "meeting_notice", {"repeat": 2, "version": 99})
        )
    assert exc.value.status == 409


async def test_resolve_content_returns_text_and_defaults(db: Database) -> None:
    text, defaults = await resolve_content(db, "earthquake_warning", {"place": "青山镇"})
    assert text.startswith("地震预警！") and "青山镇" in text
    assert defaults["category"] == "earthquake" and defaults["priority"] == "emergency"
    assert defaults["level"] == 1 and defaults["languages"] == ["cmn"]
    assert defaults["version"] == 1
    with pytest.raises(ApiError) as exc:
        await resolve_content(db, "nope", {})
    assert field_of(exc) == "template"
    with pytest.raises(ApiError) as exc:
        await resolve_content(db, "meeting_notice", {"meeting": "大会"})
    assert field_of(exc) == "params.time"


async def test_explicit_broadcast_fields_override_the_template(db: Database) -> None:
    body = BroadcastIn.model_validate(
        {"template": "heavy_rain_warning", "targets": {"townships": ["t01"]}}
    )
    filled = await fill_content(db, body, Target(townships=("t01",)), max_text_chars=2000)
    assert (filled.category, filled.priority, filled.level) == ("flood", "emergency", 2)
    assert "橙色" in (filled.text or "") and filled.title == "暴雨预警"
    assert filled.languages == ["cmn"] and filled.template is None

    body = BroadcastIn.model_validate(
        {
            "template": "heavy_rain_warning",
            "level": 4,
            "repeat": 1,
            "title": "演示",
            "languages": ["yue"],
            "targets": {"all": True},
        }
    )
    filled = await fill_content(db, body, Target(all=True), max_text_chars=2000)
    assert (filled.level, filled.repeat, filled.title, filled.languages) == (4, 1, "演示", ["yue"])
    assert "蓝色" in (filled.text or "")

    body = BroadcastIn.model_validate(
        {"template": "heavy_rain_warning", "priority": "notice", "targets": {"all": True}}
    )
    with pytest.raises(ApiError) as exc:
        await fill_content(db, body, None, max_text_chars=2000)
    assert field_of(exc) == "level"  # the body says {level_colour}; a notice has none

    body = BroadcastIn.model_validate(
        {"template": "meeting_notice", "params": {"time": "9点"}, "targets": {"all": True}}
    )
    with pytest.raises(ApiError) as exc:
        await fill_content(db, body, None, max_text_chars=2000)
    assert field_of(exc) == "params.meeting"


async def test_township_languages_decide_unless_the_broadcast_names_them(db: Database) -> None:
    db.run_sync(lambda s: set_township_languages(s, ADMIN, "t02", ["cmn", "yue"]))
    db.run_sync(lambda s: set_township_languages(s, ADMIN, "t03", ["yue", "cmn"]))
    run = db.run_sync
    assert run(lambda s: languages_for(s, Target(townships=("t01",)), ["cmn"])) == ["cmn"]
    assert run(lambda s: languages_for(s, Target(townships=("t03",)), ["cmn"])) == ["yue", "cmn"]
    # Several audiences: all their languages, Mandarin first.
    assert run(lambda s: languages_for(s, Target(all=True), ["cmn"])) == ["cmn", "yue"]
    assert run(lambda s: languages_for(s, None, ["cmn"])) == ["cmn"]

    text_body = BroadcastIn.model_validate(
        {"text": "通知", "category": "meeting", "priority": "notice", "targets": {"all": True}}
    )
    filled = await fill_content(db, text_body, Target(townships=("t02",)), max_text_chars=2000)
    assert filled.languages == ["cmn", "yue"]
    named = BroadcastIn.model_validate({**text_body.model_dump(), "languages": ["cmn"]})
    filled = await fill_content(db, named, Target(townships=("t02",)), max_text_chars=2000)
    assert filled.languages == ["cmn"]


def test_new_template_ids_are_checked(db: Database) -> None:
    spec = {**definition(), "name": "x", "category": "other"}
    with pytest.raises(ApiError) as exc:
        db.run_sync(lambda s: create_template(s, ADMIN, TemplateIn(id="preposition", **spec)))
    assert field_of(exc) == "id"
    db.run_sync(lambda s: create_template(s, ADMIN, TemplateIn(id="my_notice", **spec)))
    with pytest.raises(ApiError) as exc:
        db.run_sync(lambda s: create_template(s, ADMIN, TemplateIn(id="my_notice", **spec)))
    assert exc.value.status == 409
