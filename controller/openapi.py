"""The OpenAPI 3.1 description of the running API, generated from the application's own
router: every route the app registers is described, with the pydantic models that
validate its request body and shape its answers (controller/schemas.py).

A handler is described where it is defined, with `@describe(...)`; routes of modules
that describe themselves elsewhere are listed in `_external()`. A route with neither is
still listed, marked `x-undescribed`, and the test in tests/integration/test_openapi.py
fails on it.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from controller import schemas as s
from controller.idempotency import HEADER as IDEMPOTENCY_HEADER
from controller.idempotency import IDEMPOTENT_ROUTES

H = TypeVar("H", bound=Callable[..., Any])

ATTRIBUTE = "__openapi__"
REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Content:
    """A body that is not one of our models: a file, CSV, an event stream, or JSON not
    yet given a model (`GENERIC`)."""

    media_type: str
    schema: Mapping[str, Any]
    description: str = ""


GENERIC = Content("application/json", {"type": "object"}, "not yet described in detail")

Shape = type[BaseModel] | Content
# One status may answer in several media types (JSON or the audio itself).
Answer = Shape | tuple[Shape, ...] | None


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


def integer(minimum: int, maximum: int, default: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer", "minimum": minimum, "maximum": maximum}
    if default is not None:
        out["default"] = default
    return out


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    responses: Mapping[int, Answer]
    body: Shape | None = None
    body_required: bool = True
    query: tuple[Param, ...] = ()
    description: str = ""
    public: bool = False

    @property
    def typed(self) -> bool:
        return GENERIC not in (*_shapes(self.responses.values()), self.body)


def _shapes(answers: Iterable[Answer]) -> list[Shape]:
    out: list[Shape] = []
    for answer in answers:
        if isinstance(answer, tuple):
            out.extend(answer)
        elif answer is not None:
            out.append(answer)
    return out


def describe(
    summary: str,
    *,
    tag: str,
    responses: Mapping[int, Answer],
    body: Shape | None = None,
    body_required: bool = True,
    query: tuple[Param, ...] = (),
    description: str = "",
    public: bool = False,
) -> Callable[[H], H]:
    """Attach the handler's description (put it below `@routes.get(...)`)."""
    op = Operation(summary, tag, responses, body, body_required, query, description, public)

    def mark(handler: H) -> H:
        setattr(handler, ATTRIBUTE, op)
        return handler

    return mark


# --------------------------------------------------------------------------- routes


def api_routes(app: web.Application) -> list[tuple[str, str, Any]]:
    """(method, path, handler) of every route the app serves; HEAD goes with GET."""
    found: list[tuple[str, str, Any]] = []
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        resource = route.resource
        if resource is None:
            continue
        if isinstance(resource, web.StaticResource):
            path = resource.canonical.rstrip("/") + "/{filename}"
        else:
            path = resource.canonical
        found.append((route.method, path, route.handler))
    return found


def operation_for(method: str, path: str, handler: Any) -> Operation | None:
    op = getattr(handler, ATTRIBUTE, None)
    if isinstance(op, Operation):
        return op
    return _external().get((method, path))


_STATIC = Operation(
    "The console's files (scripts, styles, the vendored API-docs renderer)",
    "console",
    {200: Content("application/octet-stream", {"type": "string", "format": "binary"})},
    public=True,
)


def _external() -> dict[tuple[str, str], Operation]:
    """Routes described from here because their modules are kept by others, and the
    console's own pages. Imported late so a renamed model breaks only the description
    (and its test), never the controller's start."""
    from controller.api.approvals import DecisionIn
    from controller.api.session import LoginIn, PasswordIn
    from controller.api.users import UserIn, UserPatch

    html = Content("text/html", {"type": "string"})
    media = {"type": "object", "description": "an uploaded or rendered recording"}
    return {
        ("GET", "/"): Operation("The console (web page)", "console", {200: html}, public=True),
        ("GET", "/static/{filename}"): _STATIC,
        ("POST", "/api/session/login"): Operation(
            "Log in to the console: sets the session cookie; answers the CSRF token",
            "session",
            {200: GENERIC},
            body=LoginIn,
            public=True,
        ),
        ("GET", "/api/session"): Operation("Who is logged in", "session", {200: GENERIC}),
        ("POST", "/api/session/logout"): Operation("Log out", "session", {200: GENERIC}),
        ("POST", "/api/session/password"): Operation(
            "Change one's own password", "session", {200: GENERIC}, body=PasswordIn
        ),
        ("GET", "/api/users"): Operation("Console users (admins)", "users", {200: GENERIC}),
        ("POST", "/api/users"): Operation(
            "Create a console user (admins)", "users", {201: GENERIC}, body=UserIn
        ),
        ("PATCH", "/api/users/{id}"): Operation(
            "Change a user's role, township, password or disable them (admins)",
            "users",
            {200: GENERIC},
            body=UserPatch,
        ),
        ("POST", "/api/media"): Operation(
            "Upload a recording (multipart `file` or a raw audio body); sniffed, "
            "normalised to Ogg/Opus, stored content-addressed",
            "media",
            {201: Content("application/json", media)},
            body=Content(
                "multipart/form-data",
                {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "title": {"type": "string"},
                    },
                    "required": ["file"],
                },
            ),
        ),
        ("GET", "/metrics"): Operation(
            "Prometheus metrics (text exposition format); counts only, no login",
            "system",
            {200: Content("text/plain", {"type": "string"}, "Prometheus text format 0.0.4")},
            public=True,
        ),
        ("GET", "/api/media"): Operation(
            "Stored recordings, newest first",
            "media",
            {200: GENERIC},
            query=(Param("limit", "at most this many", integer(1, 500, 100)),),
        ),
        ("GET", "/api/media/{id}"): Operation(
            "One stored recording", "media", {200: Content("application/json", media)}
        ),
        ("GET", "/api/approvals"): Operation(
            "Emergencies waiting for (or decided by) a second duty officer",
            "approvals",
            {200: s.ApprovalList},
            query=(
                Param(
                    "status",
                    "pending (default), approved, rejected, withdrawn, expired, failed or all",
                ),
            ),
        ),
        ("GET", "/api/approvals/{id}"): Operation(
            "One approval request", "approvals", {200: s.ApprovalOut}
        ),
        ("POST", "/api/approvals/{id}/approve"): Operation(
            "Approve as the second officer: the broadcast is created and sent with the "
            "audio both officers heard",
            "approvals",
            {201: s.ApprovedBroadcast},
            body=DecisionIn,
            body_required=False,
        ),
        ("POST", "/api/approvals/{id}/reject"): Operation(
            "Reject (another officer) or withdraw (the requester)",
            "approvals",
            {200: s.ApprovalOut},
            body=DecisionIn,
            body_required=False,
        ),
    }


# --------------------------------------------------------------------------- document


def version() -> str:
    try:
        return importlib.metadata.version("dalaba")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app`."""
    routes = sorted(api_routes(app), key=lambda r: (r[1], r[0]))
    ops = [(m, p, h, operation_for(m, p, h)) for m, p, h in routes]

    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(s.ErrorOut, "serialization")]
    for _m, _p, _h, op in ops:
        if op is None:
            continue
        if isinstance(op.body, type):
            wanted.append((op.body, "validation"))
        wanted.extend(
            (shape, "serialization")
            for shape in _shapes(op.responses.values())
            if isinstance(shape, type)
        )
    refs, top = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF)

    def shape_schema(shape: Shape, mode: JsonSchemaMode) -> tuple[str, Mapping[str, Any]]:
        if isinstance(shape, Content):
            return shape.media_type, shape.schema
        return "application/json", refs[(shape, mode)]

    error = {
        "description": "an error: the same envelope whatever the status",
        "content": {"application/json": {"schema": refs[(s.ErrorOut, "serialization")]}},
    }
    paths: dict[str, dict[str, Any]] = {}
    for method, path, handler, op in ops:
        entry: dict[str, Any] = {
            "operationId": f"{handler.__module__.rsplit('.', 1)[-1]}_{handler.__name__}",
        }
        if op is None:
            entry.update(
                summary="(not described)",
                responses={"default": error},
                **{"x-undescribed": True},
            )
            paths.setdefault(path, {})[method.lower()] = entry
            continue
        entry["summary"] = op.summary
        if op.description:
            entry["description"] = op.description
        entry["tags"] = [op.tag]
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{([^}:]+)", path)
        ]
        params += [
            {
                "name": q.name,
                "in": "query",
                "required": q.required,
                "description": q.description,
                "schema": dict(q.schema),
            }
            for q in op.query
        ]
        idempotent = (method, path) in IDEMPOTENT_ROUTES
        if idempotent:
            params.append(
                {
                    "name": IDEMPOTENCY_HEADER,
                    "in": "header",
                    "required": False,
                    "description": (
                        "a retry with the same key (same user, same request, within 24 h) "
                        "gets the first answer again and sends nothing; a different request "
                        "with the same key is a 422"
                    ),
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                }
            )
        if params:
            entry["parameters"] = params
        if op.body is not None:
            media_type, schema = shape_schema(op.body, "validation")
            entry["requestBody"] = {
                "required": op.body_required,
                "content": {media_type: {"schema": dict(schema)}},
            }
        responses: dict[str, Any] = {}
        for status, answer in sorted(op.responses.items()):
            shapes = _shapes([answer])
            first = shapes[0] if shapes else None
            described: dict[str, Any] = {"description": _describe_status(status, first)}
            if shapes:
                described["content"] = {
                    media_type: {"schema": dict(schema)}
                    for media_type, schema in (
                        shape_schema(shape, "serialization") for shape in shapes
                    )
                }
            if status == 201:
                described["headers"] = {
                    "Location": {
                        "description": "where the created resource is",
                        "schema": {"type": "string"},
                    }
                }
            if idempotent and status < 300:
                described.setdefault("headers", {})["Idempotent-Replayed"] = {
                    "description": "`true` when this is the stored first answer to the key",
                    "schema": {"type": "string"},
                }
            responses[str(status)] = described
        responses["default"] = error
        entry["responses"] = responses
        if op.public:
            entry["security"] = []
        if not op.typed:
            entry["x-generic-response"] = True
        paths.setdefault(path, {})[method.lower()] = entry

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Dalaba (大喇叭) controller API",
            "version": version(),
            "description": _INTRO,
        },
        "tags": [{"name": name, "description": text} for name, text in TAGS],
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API token (`dalaba token create`), `dlb_…`",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "dalaba_session",
                    "description": (
                        "the console's session cookie; state-changing requests also send "
                        "the CSRF token from the login answer as `X-CSRF-Token`"
                    ),
                },
            },
        },
        "security": [{"bearer": []}, {"session": []}],
    }


def _describe_status(status: int, shape: Shape | None) -> str:
    if isinstance(shape, type) and shape.__doc__ and shape.__module__ == s.__name__:
        first = shape.__doc__.strip().splitlines()[0]
        if first and not first.startswith("Usage docs"):
            return first
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return str(status)


# In the order a reader needs them.
TAGS = (
    ("broadcasts", "push, watch, cancel and resend announcements; preview them"),
    ("approvals", "real emergencies waiting for a second duty officer"),
    ("upstream", "the upper-level emergency-broadcast platform: its packages in, reports up"),
    ("devices", "the terminals: state, telemetry, volume, test tone, diagnostics"),
    ("workorders", "technicians' jobs opened by faults that last"),
    ("updates", "agent releases and their rollouts to terminals in waves"),
    ("phone", "phone-call broadcast: whitelists of callers, and the calls terminals took"),
    ("stats", "figures for any period and the year-end report"),
    ("schedules", "township programmes, their occurrences, quiet hours"),
    ("templates", "announcement templates and their pre-positioning on terminals"),
    ("county", "townships and villages"),
    ("groups", "saved target areas"),
    ("records", "the broadcast log and the audit log, as JSON and CSV"),
    ("media", "recordings: upload, list, and the audio terminals fetch"),
    ("speech", "pronunciations and the languages each township hears"),
    ("live", "server-sent events for live views"),
    ("system", "health, metrics, security events"),
    ("session", "console log-in"),
    ("users", "console users and roles"),
    ("docs", "this description"),
    ("console", "the web console's own files"),
)

_INTRO = """\
The county controller's REST API. JSON in and out, UTF-8 with real Chinese characters;
times are ISO 8601 in UTC with milliseconds. Every error has one shape,
`{"error": {"code", "message", "field"}}`, and a 400 names the offending field.

Authenticate with a bearer token (`Authorization: Bearer dlb_…`, made with
`dalaba token create`) or, from the console, the session cookie plus `X-CSRF-Token`.

The POSTs that create or send take an `Idempotency-Key` header: retrying with the same
key returns the first answer and sends nothing twice. Lists that page take `limit` and
`before` (a cursor the previous page returned as `next_before`) or `limit` and `offset`.
"""
