"""One error shape for the whole API: `{"error": {"code", "message", "field"}}`; and one
way of writing JSON (`json_response`), which every handler uses."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def dumps(data: Any) -> str:
    """JSON as a Chinese reader wants it: 村委会, not \\u6751\\u59d4\\u4f1a."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def json_response(
    data: BaseModel | Any,
    *,
    status: int = 200,
    location: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The one way handlers write JSON: UTF-8 with real characters, response models
    (controller/schemas.py) dumped as validated, and `Location` for what a 201 created."""
    if isinstance(data, BaseModel):
        # exclude_unset: optional keys a view left out (e.g. `deliveries` with
        # ?deliveries=0) stay out, as documented, instead of appearing as null.
        data = data.model_dump(mode="json", exclude_unset=True)
    out = dict(headers or {})
    if location is not None:
        out["Location"] = location
    return web.Response(
        text=dumps(data), status=status, content_type="application/json", headers=out
    )


class ApiError(Exception):
    """An answer a person may read: `code` is what the console translates (`err.<code>`
    in web/js/i18n.js, checked by tests/unit/test_message_catalogue.py), `params` the
    parts its wording fills in; `message` is the English sentence for logs and scripts."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        params: Mapping[str, str | int] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.params = dict(params or {})

    def response(self) -> web.Response:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.params:
            body["params"] = self.params
        return json_response({"error": body}, status=self.status)


def bad_request(
    field: str,
    message: str,
    code: str = "invalid",
    params: Mapping[str, str | int] | None = None,
) -> ApiError:
    return ApiError(400, code, f"{field}: {message}", field, params)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def from_validation_error(exc: ValidationError, prefix: str = "") -> ApiError:
    """The first problem, with its field path spelled as the client wrote it."""
    first = exc.errors()[0]
    parts: list[str] = []
    for p in first.get("loc", ()):
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        else:
            parts.append(str(p))
    field = prefix + ".".join(parts) if parts else (prefix.rstrip(".") or "body")
    message = first.get("msg", "invalid")
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    elif first.get("type") == "missing":
        message = "required"
    return bad_request(field, message.removeprefix("Value error, "))


def parse_body(model: type[M], data: object) -> M:
    """Validate a request body into `model`; a problem becomes a 400 naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


async def read_json(request: web.Request, max_bytes: int = 256 * 1024) -> dict[str, object]:
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, "too_large", f"body: larger than {max_bytes} bytes", "body")
    raw = await request.read()
    if len(raw) > max_bytes:
        raise ApiError(413, "too_large", f"body: larger than {max_bytes} bytes", "body")
    try:
        data = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request("body", f"not valid JSON ({exc})", "malformed_json") from None
    except RecursionError:
        raise _too_deep() from None
    if not isinstance(data, dict):
        raise bad_request("body", "must be a JSON object", "malformed_json")
    _check_plain(data)
    return data


async def read_optional_json(
    request: web.Request, max_bytes: int = 256 * 1024
) -> dict[str, object]:
    """A JSON object body that may be left out (no body, or an empty one): `{}` then.

    Use this rather than `request.can_read_body`, which turns false once anything (the
    idempotency middleware, which fingerprints the body) has read the body, even though
    `read_json` still gets it from aiohttp's cache."""
    if not request.body_exists or request.content_length == 0:
        return {}
    if request.content_length is None and not (await request.read()).strip():
        return {}  # chunked, and empty
    return await read_json(request, max_bytes)


# No request of ours nests deeper than a few levels; 3,000-deep JSON is an attack on the
# parser (and on every recursive walk after it).
MAX_JSON_DEPTH = 32


def _check_plain(data: object) -> None:
    """Depth within MAX_JSON_DEPTH and text that is valid Unicode (JSON may carry a lone
    surrogate, `\\ud800`, which no database or response can encode). Iterative, so a
    deep body cannot exhaust the stack here either."""
    stack: list[tuple[object, int, str]] = [(data, 1, "body")]
    while stack:
        value, depth, where = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _too_deep()
        if isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, where)
                stack.append((item, depth + 1, key if where == "body" else f"{where}.{key}"))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, where) for item in value)


def _too_deep() -> ApiError:
    return bad_request("body", f"nested deeper than {MAX_JSON_DEPTH} levels", "malformed_json")


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(where, "contains an invalid character (a lone surrogate)") from None


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except ValidationError as exc:
        return from_validation_error(exc).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status, "http_error"
        )
        return ApiError(exc.status, code, exc.reason).response()
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return ApiError(500, "internal", "internal error; see the controller log").response()
