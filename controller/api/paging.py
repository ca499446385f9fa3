"""Query parameters shared by the lists that page."""

from __future__ import annotations

from aiohttp import web

from controller.errors import bad_request
from controller.openapi import Param, integer


def query_int(request: web.Request, name: str, default: int, minimum: int, maximum: int) -> int:
    """An integer query parameter within bounds; anything else is a 400 naming it."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(name, f"{raw[:40]!r} is not a whole number") from None
    if not minimum <= value <= maximum:
        raise bad_request(name, f"must be between {minimum} and {maximum}")
    return value


def limit_param(default: int, maximum: int) -> Param:
    return Param("limit", "at most this many items", integer(1, maximum, default))


def offset_param(maximum: int) -> Param:
    return Param(
        "offset", "skip this many items (with `total`, for numbered pages)", integer(0, maximum, 0)
    )
