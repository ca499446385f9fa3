"""Announcement templates: stored per alert type, filled from a broadcast's `params`.

A template is a text with `{placeholders}` plus the defaults a broadcast takes from it
(category, priority, level, languages, repeat). Placeholders are declared (name, label,
required, default, example) so the console can build a form and a missing or unknown
parameter is refused with a 400 that names `params.<name>`. Two names are never
declared because they are filled from the broadcast's emergency level, so the words
always match the alert tone: `{level_colour}` (红色 for I ... 蓝色 for IV) and
`{level_grade}` (一级 ... 四级).

Every edit bumps `version`. The rendered audio is cached under everything that changes
its sound (the filled text among it), so an edited template is never played from a
stale cache; the version is what pre-positioning records, so the console can tell which
terminals hold audio of an older version.

Languages: a township may set the languages its villages hear ("Mandarin then
Cantonese"); a broadcast that does not name its languages uses the settings of the
townships it reaches (all of them, Mandarin first, when they differ), and the template's
own languages (else Mandarin) for townships without a setting.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import JSON, BigInteger, Column
from sqlmodel import Field as SQLField
from sqlmodel import Session, SQLModel, col, select

from controller import audit
from controller.auth import Principal
from controller.builtin_templates import BUILTIN_TEMPLATES
from controller.db import Database
from controller.errors import ApiError, bad_request, not_found
from controller.models import Device, Township, Village
from controller.speech.types import MAX_REPEAT, known_category
from controller.timefmt import iso
from dalaba.protocol import Target, now_ms

if TYPE_CHECKING:
    from controller.broadcasts import BroadcastIn

TEMPLATE_ID_PATTERN = r"^[a-z][a-z0-9_]{1,47}$"
PLACEHOLDER_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
# Path segments under /api/templates/ that are actions, not template ids.
RESERVED_IDS = frozenset({"preposition"})
MAX_BODY_CHARS = 2000
MAX_PARAM_CHARS = 200
MAX_PLACEHOLDERS = 20
LANGUAGE_ORDER: tuple[str, ...] = ("cmn", "yue")  # Mandarin first, then Cantonese
LEVEL_COLOUR = {1: "红色", 2: "橙色", 3: "黄色", 4: "蓝色"}
LEVEL_GRADE = {1: "一级", 2: "二级", 3: "三级", 4: "四级"}
DERIVED = frozenset({"level_colour", "level_grade"})

_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)\}")

Language = Literal["cmn", "yue"]
PriorityName = Literal["emergency", "notice", "routine"]


def _mandarin() -> list[Language]:
    return ["cmn"]


def _ms_column(nullable: bool = False) -> Any:
    return SQLField(sa_column=Column(BigInteger, nullable=nullable))


# --------------------------------------------------------------------------- tables


class Template(SQLModel, table=True):
    __tablename__ = "announcement_template"

    id: str = SQLField(primary_key=True)
    name: str
    category: str = SQLField(index=True)
    body: str
    # [{name, label, required, default, example}], in the order the console shows them
    placeholders: list[dict[str, Any]] = SQLField(default_factory=list, sa_column=Column(JSON))
    priority: str
    level: int | None = None
    languages: list[str] = SQLField(default_factory=lambda: ["cmn"], sa_column=Column(JSON))
    repeat: int | None = None  # None: the priority's default (emergencies 3, others 1)
    version: int = 1
    builtin: bool = False
    disabled: bool = False
    created_ms: int = _ms_column()
    updated_ms: int = _ms_column()
    updated_by: str = "system"


class TownshipLanguages(SQLModel, table=True):
    __tablename__ = "township_languages"

    township_id: str = SQLField(primary_key=True, foreign_key="township.id")
    languages: list[str] = SQLField(sa_column=Column(JSON))
    updated_ms: int = _ms_column()
    updated_by: str


# --------------------------------------------------------------------------- API shapes


class PlaceholderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=PLACEHOLDER_NAME_PATTERN)
    label: str = Field(default="", max_length=40)
    # A required placeholder has no default: the broadcast must give it.
    required: bool = True
    default: str | None = Field(default=None, max_length=MAX_PARAM_CHARS)
    example: str | None = Field(default=None, max_length=MAX_PARAM_CHARS)


class _TemplateFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=60)
    category: str
    body: str = Field(min_length=1, max_length=MAX_BODY_CHARS)
    placeholders: list[PlaceholderIn] = Field(default_factory=list, max_length=MAX_PLACEHOLDERS)
    priority: PriorityName
    level: int | None = Field(default=None, ge=1, le=4)
    languages: list[Language] = Field(default_factory=_mandarin, min_length=1)
    repeat: int | None = Field(default=None, ge=1, le=MAX_REPEAT)
    disabled: bool = False

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str) -> str:
        return known_category(value)


class TemplateIn(_TemplateFields):
    """POST /api/templates."""

    id: str = Field(pattern=TEMPLATE_ID_PATTERN)


class TemplateReplace(_TemplateFields):
    """PUT /api/templates/{id}: every field; `version`, if given, must be the current one."""

    version: int | None = None


class TemplatePatch(BaseModel):
    """PATCH /api/templates/{id}: only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=60)
    category: str | None = None
    body: str | None = Field(default=None, min_length=1, max_length=MAX_BODY_CHARS)
    placeholders: list[PlaceholderIn] | None = Field(default=None, max_length=MAX_PLACEHOLDERS)
    priority: PriorityName | None = None
    level: int | None = Field(default=None, ge=1, le=4)
    languages: list[Language] | None = Field(default=None, min_length=1)
    repeat: int | None = Field(default=None, ge=1, le=MAX_REPEAT)
    disabled: bool | None = None
    version: int | None = None

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str | None) -> str | None:
        return None if value is None else known_category(value)


class LanguagesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    languages: list[Language] = Field(min_length=1)


# --------------------------------------------------------------------------- checks


def _ordered_languages(languages: Iterable[str]) -> list[str]:
    given = set(languages)
    return [lang for lang in LANGUAGE_ORDER if lang in given] + sorted(given - set(LANGUAGE_ORDER))


def check_definition(fields: Mapping[str, Any]) -> None:
    """Cross-field rules of a template (the models check each field on its own).
    Raises a 400 naming the field."""
    names: list[str] = []
    for i, ph in enumerate(fields["placeholders"]):
        name = ph["name"]
        if name in DERIVED:
            raise bad_request(
                f"placeholders[{i}].name",
                f"{{{name}}} is filled from the emergency level; do not declare it",
            )
        if name in names:
            raise bad_request(f"placeholders[{i}].name", f"{name!r} is declared twice")
        if ph["required"] and ph["default"] is not None:
            raise bad_request(
                f"placeholders[{i}].default",
                "a required placeholder has no default (set required: false to use one)",
            )
        names.append(name)
    body = fields["body"]
    used = _PLACEHOLDER.findall(body)
    stray = _PLACEHOLDER.sub("", body)
    if "{" in stray or "}" in stray:
        raise bad_request(
            "body", "braces are only for placeholders like {place} (lowercase, a-z 0-9 _)"
        )
    undeclared = sorted({u for u in used if u not in names and u not in DERIVED})
    if undeclared:
        raise bad_request(
            "body", f"placeholder(s) {', '.join(undeclared)} used but not declared in placeholders"
        )
    unused = [n for n in names if n not in used]
    if unused:
        raise bad_request("placeholders", f"declared but not used in body: {', '.join(unused)}")
    priority, level = fields["priority"], fields["level"]
    if priority == "emergency" and level is None:
        raise bad_request("level", "an emergency template needs a default level (1 = I red ... 4)")
    if priority != "emergency" and level is not None:
        raise bad_request("level", "only emergency templates have a level")
    if DERIVED & set(used) and priority != "emergency":
        raise bad_request("body", "{level_colour} and {level_grade} need an emergency template")
    if len(set(fields["languages"])) != len(fields["languages"]):
        raise bad_request("languages", "each language may appear once")


def fill_text(template: Template, params: Mapping[str, Any], level: int | None) -> str:
    """The template's body with every placeholder replaced; 400 naming `params.<name>`
    for an unknown, missing or malformed parameter."""
    declared = {ph["name"]: ph for ph in template.placeholders}
    for name in params:
        if name not in declared:
            known = ", ".join(declared) or "none"
            raise bad_request(
                f"params.{name}", f"unknown parameter for template {template.id} (it has: {known})"
            )
    values: dict[str, str] = {}
    for name, ph in declared.items():
        raw = params.get(name)
        if raw is None:
            value = ph.get("default")
        elif isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise bad_request(f"params.{name}", "must be a string or a number")
        else:
            value = str(raw).strip()
        if value is not None and len(value) > MAX_PARAM_CHARS:
            raise bad_request(f"params.{name}", f"longer than {MAX_PARAM_CHARS} characters")
        if value is not None and ("\n" in value or "\r" in value):
            raise bad_request(f"params.{name}", "must be on one line")
        if not value and ph.get("required"):
            label = f" ({ph['label']})" if ph.get("label") else ""
            raise bad_request(f"params.{name}", f"required{label}")
        values[name] = value or ""
    if level is not None:
        values["level_colour"] = LEVEL_COLOUR[level]
        values["level_grade"] = LEVEL_GRADE[level]

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:  # a level placeholder in a broadcast sent without a level
            raise bad_request("level", f"template {template.id} says {{{name}}}: give a level")
        return values[name]

    # One pass: a value that itself contains braces is spoken as written, not expanded.
    text = _PLACEHOLDER.sub(substitute, template.body).strip()
    if not text:
        raise bad_request("params", "the filled-in template is empty")
    return text


def required_params(template: Template) -> list[str]:
    return [ph["name"] for ph in template.placeholders if ph.get("required")]


def defaults_of(template: Template) -> dict[str, Any]:
    return {
        "template": template.id,
        "version": template.version,
        "name": template.name,
        "category": template.category,
        "priority": template.priority,
        "level": template.level,
        "languages": list(template.languages),
        "repeat": template.repeat,
    }


def template_view(t: Template) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "category": t.category,
        "body": t.body,
        "placeholders": t.placeholders,
        "priority": t.priority,
        "level": t.level,
        "languages": t.languages,
        "repeat": t.repeat,
        "version": t.version,
        "builtin": t.builtin,
        "disabled": t.disabled,
        # Renderable without any parameter: what pre-positioning can push ahead of need.
        "needs_params": required_params(t),
        "created_at": iso(t.created_ms),
        "updated_at": iso(t.updated_ms),
        "updated_by": t.updated_by,
    }


# --------------------------------------------------------------------------- storage


def _from_builtin(spec: Mapping[str, Any], now: int) -> Template:
    fields = _TemplateFields.model_validate({k: v for k, v in spec.items() if k != "id"})
    data = fields.model_dump()
    check_definition(data)
    return Template(
        id=spec["id"], builtin=True, created_ms=now, updated_ms=now, updated_by="system", **data
    )


def builtin_spec(template_id: str) -> Mapping[str, Any] | None:
    return next((t for t in BUILTIN_TEMPLATES if t["id"] == template_id), None)


def seed_builtin_templates(session: Session) -> int:
    """Add the built-in templates that are missing; never touch existing ones (an edited
    built-in keeps its edits). Returns how many were added."""
    existing = set(session.exec(select(Template.id)).all())
    now = now_ms()
    added = 0
    for spec in BUILTIN_TEMPLATES:
        if spec["id"] not in existing:
            session.add(_from_builtin(spec, now))
            added += 1
    return added


def get_template(session: Session, template_id: str) -> Template:
    row = session.get(Template, template_id)
    if row is None:
        raise not_found(f"template {template_id}")
    return row


def _usable(session: Session, template_id: str) -> Template:
    row = session.get(Template, template_id)
    if row is None:
        raise bad_request("template", f"unknown template {template_id!r}")
    if row.disabled:
        raise bad_request("template", f"template {template_id!r} is disabled")
    return row


def list_templates(
    session: Session, *, category: str | None = None, include_disabled: bool = True
) -> list[dict[str, Any]]:
    query = select(Template).order_by(col(Template.category), col(Template.id))
    if category:
        query = query.where(Template.category == category)
    if not include_disabled:
        query = query.where(col(Template.disabled).is_(False))
    return [template_view(t) for t in session.exec(query)]


def create_template(session: Session, principal: Principal, body: TemplateIn) -> dict[str, Any]:
    if body.id in RESERVED_IDS:
        raise bad_request("id", f"{body.id!r} is reserved")
    data = body.model_dump(exclude={"id"})
    check_definition(data)
    if session.get(Template, body.id) is not None:
        raise ApiError(409, "exists", f"id: template {body.id} already exists", "id")
    now = now_ms()
    row = Template(id=body.id, created_ms=now, updated_ms=now, updated_by=principal.user, **data)
    session.add(row)
    audit.record(session, principal, "template.create", body.id, **_audit_detail(row))
    return template_view(row)


def update_template(
    session: Session, principal: Principal, template_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """Apply `changes` (already validated field by field); `version` in them, if any,
    must match the stored one so two editors cannot overwrite each other unknowingly."""
    row = get_template(session, template_id)
    expected = changes.pop("version", None)
    if expected is not None and expected != row.version:
        raise ApiError(
            409,
            "version_conflict",
            f"version: the template is at version {row.version}, not {expected}; reload it",
            "version",
        )
    current = {k: getattr(row, k) for k in _TemplateFields.model_fields}
    merged = {**current, **changes}
    if "priority" in changes and "level" not in changes and merged["priority"] != "emergency":
        merged["level"] = None  # turning an emergency into a notice drops its level
    check_definition(merged)
    changed = {k: v for k, v in merged.items() if current[k] != v}
    if not changed:
        return template_view(row)
    for k, v in changed.items():
        setattr(row, k, v)
    row.version += 1
    row.updated_ms = now_ms()
    row.updated_by = principal.user
    audit.record(
        session,
        principal,
        "template.update",
        template_id,
        version=row.version,
        changed=sorted(changed),
        **_audit_detail(row),
    )
    return template_view(row)


def reset_template(session: Session, principal: Principal, template_id: str) -> dict[str, Any]:
    """A built-in template back to the text it ships with (as a new version)."""
    row = get_template(session, template_id)
    spec = builtin_spec(template_id)
    if not row.builtin or spec is None:
        raise ApiError(409, "not_builtin", f"template {template_id} is not a built-in template")
    fresh = _from_builtin(spec, now_ms()).model_dump(
        include=set(_TemplateFields.model_fields) - {"disabled"}
    )
    return update_template(session, principal, template_id, fresh)


def delete_template(session: Session, principal: Principal, template_id: str) -> None:
    row = get_template(session, template_id)
    if row.builtin:
        raise ApiError(
            409,
            "builtin",
            f"template {template_id} is built in and cannot be deleted; "
            'disable it instead (PATCH {"disabled": true})',
        )
    session.delete(row)
    audit.record(session, principal, "template.delete", template_id, version=row.version)


def _audit_detail(row: Template) -> dict[str, Any]:
    return {
        "name": row.name,
        "category": row.category,
        "priority": row.priority,
        "level": row.level,
        "body": row.body[:200],
        "disabled": row.disabled,
    }


# --------------------------------------------------------------------------- languages


def township_language_settings(session: Session) -> dict[str, list[str]]:
    return {r.township_id: r.languages for r in session.exec(select(TownshipLanguages))}


def set_township_languages(
    session: Session, principal: Principal, township_id: str, languages: list[str] | None
) -> dict[str, Any]:
    """Set (or with None, clear) the languages a township's villages hear."""
    if session.get(Township, township_id) is None:
        raise not_found(f"township {township_id}")
    row = session.get(TownshipLanguages, township_id)
    if languages is None:
        if row is not None:
            session.delete(row)
    else:
        if len(set(languages)) != len(languages):
            raise bad_request("languages", "each language may appear once")
        if row is None:
            row = TownshipLanguages(
                township_id=township_id,
                languages=languages,
                updated_ms=now_ms(),
                updated_by=principal.user,
            )
            session.add(row)
        else:
            row.languages = languages
            row.updated_ms = now_ms()
            row.updated_by = principal.user
    audit.record(session, principal, "township.languages", township_id, languages=languages)
    return {"township_id": township_id, "languages": languages}


def townships_of(session: Session, target: Target) -> set[str]:
    if target.all:
        return set(session.exec(select(Township.id)).all())
    found = set(target.townships)
    if target.villages:
        found |= set(
            session.exec(
                select(Village.township_id).where(col(Village.id).in_(target.villages))
            ).all()
        )
    if target.devices:
        found |= set(
            session.exec(select(Device.township_id).where(col(Device.id).in_(target.devices))).all()
        )
    return found


def languages_for(session: Session, target: Target | None, fallback: Iterable[str]) -> list[str]:
    """The languages an announcement to `target` is spoken in: each township's setting,
    `fallback` for townships without one, all of them together when they differ."""
    fallback = list(fallback)
    if target is None:
        return fallback
    settings = township_language_settings(session)
    if not settings:
        return fallback
    choices = {tuple(settings.get(t, fallback)) for t in townships_of(session, target)}
    if not choices:
        return fallback
    if len(choices) == 1:
        return list(choices.pop())  # one audience: its own order
    return _ordered_languages(lang for choice in choices for lang in choice)


# --------------------------------------------------------------------------- resolving


async def resolve_content(
    db: Database, template_id: str, params: Mapping[str, Any], *, level: int | None = None
) -> tuple[str, dict[str, Any]]:
    """The filled-in text of a template and its defaults (template, version, name,
    category, priority, level, languages, repeat).

    Level placeholders are filled from `level`, else from the template's default level.
    Raises `ApiError` 400 naming `template` or `params.<name>`.
    """

    def load(session: Session) -> Template:
        return _usable(session, template_id)

    template = await db.run(load)
    text = fill_text(template, params, level if level is not None else template.level)
    return text, defaults_of(template)


async def fill_content(
    db: Database, body: BroadcastIn, target: Target | None, *, max_text_chars: int
) -> BroadcastIn:
    """The broadcast body with its template (if any) filled in and every default
    applied, so that rendering and recording need look nowhere else.

    Fields given explicitly in the body win over the template's defaults; languages not
    given come from the townships reached (`target`), then the template, then Mandarin.
    """
    explicit = body.model_fields_set
    if body.template is None:
        if body.category is None:
            raise bad_request("category", "required (or give a template)")
        if body.priority is None:
            raise bad_request("priority", "required (or give a template)")
        if body.text is not None and len(body.text) > max_text_chars:
            raise bad_request("text", f"longer than {max_text_chars} characters")
        if "languages" in explicit or body.media_id is not None or target is None:
            return body
        languages = await db.run(lambda s: languages_for(s, target, body.languages))
        return body.model_copy(update={"languages": languages})

    template_id = body.template

    def load(session: Session) -> tuple[Template, list[str]]:
        template = _usable(session, template_id)
        if "languages" in explicit:
            return template, list(body.languages)
        return template, languages_for(session, target, template.languages)

    template, languages = await db.run(load)
    priority = body.priority if "priority" in explicit and body.priority else template.priority
    if "level" in explicit:
        level = body.level
    else:
        level = template.level if priority == "emergency" else None
    if priority == "emergency" and level is None:
        raise bad_request("level", "required for emergencies (1 = I red ... 4 = IV blue)")
    if priority != "emergency" and level is not None:
        raise bad_request("level", "only emergencies have a level")
    text = fill_text(template, body.params, level)
    if len(text) > max_text_chars:
        raise bad_request(
            "params", f"the filled-in text is longer than {max_text_chars} characters"
        )
    # A self-contained text broadcast: it validates again as it is (a request that waits
    # for a second officer is stored as JSON and sent later), and renders the same.
    return body.model_copy(
        update={
            "template": None,
            "params": {},
            "text": text,
            "category": body.category or template.category,
            "priority": priority,
            "level": level,
            "languages": languages,
            "repeat": body.repeat if "repeat" in explicit else template.repeat,
            "title": body.title or template.name,
        }
    )
