"""/api/phone/whitelists and /api/calls: phone-call broadcast (controller/phone.py).

Whitelists (personal numbers) are read and changed only with the `phone_book`
permission, township staff within their township. Saving one sends every terminal it
covers its new book at once (signed, on the terminal's own topic). Calls are listed to
every reader; without `phone_book` the caller is masked.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlmodel import Session, col, select

from controller import audit
from controller import schemas as s
from controller.api import keys
from controller.auth import Permission, Principal, principal_of
from controller.errors import bad_request, forbidden, not_found, parse_body, read_json
from controller.models import Device, Township, Village
from controller.openapi import Param, describe, integer
from controller.phone import (
    BOOK_VALID_MS,
    PhoneCall,
    PhoneWhitelist,
    Scope,
    book_for,
    devices_in,
    mask,
    normalise_numbers,
    set_pin,
)
from dalaba import protocol as p

routes = web.RouteTableDef()

MAX_CALLS = 1000


class WhitelistIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    numbers: list[str] = Field(max_length=1000, description="as typed: digits, +, -, spaces")
    pin: str | None = Field(
        default=None,
        pattern=r"^[0-9]{4,8}$",
        description="a new DTMF PIN; left out: the PIN stays as it is",
    )
    clear_pin: bool = False

    @field_validator("numbers")
    @classmethod
    def _numbers(cls, value: list[str]) -> list[str]:
        return normalise_numbers(value)


class WhitelistOut(BaseModel):
    scope: Scope
    scope_id: str
    numbers: list[str]
    has_pin: bool
    updated_ms: int
    updated_by: str


class WhitelistSaved(WhitelistOut):
    devices: int
    published: int


class WhitelistList(BaseModel):
    whitelists: list[WhitelistOut]


class CallOut(BaseModel):
    id: int
    device_id: str
    village_id: str
    township_id: str
    caller: str
    outcome: str
    rang_at_ms: int
    ended_at_ms: int
    played_ms: int


class CallList(BaseModel):
    calls: list[CallOut]
    callers_masked: bool


def _view(row: PhoneWhitelist) -> dict[str, Any]:
    return {
        "scope": row.scope,
        "scope_id": row.scope_id,
        "numbers": row.numbers,
        "has_pin": row.pin_sha256 is not None,
        "updated_ms": row.updated_ms,
        "updated_by": row.updated_by,
    }


def _township_of(session: Session, scope: Scope, scope_id: str) -> str:
    """The township a scope lies in (404 if the scope does not exist)."""
    if scope is Scope.TOWNSHIP:
        if session.get(Township, scope_id) is None:
            raise not_found(f"township {scope_id}")
        return scope_id
    found: Village | Device | None = (
        session.get(Village, scope_id) if scope is Scope.VILLAGE else session.get(Device, scope_id)
    )
    if found is None:
        raise not_found(f"{scope.value} {scope_id}")
    return found.township_id


@routes.get("/api/phone/whitelists")
@describe(
    "Phone-call whitelists (personal numbers: phone_book permission)",
    tag="phone",
    responses={200: WhitelistList},
)
async def list_whitelists(request: web.Request) -> web.Response:
    principal = principal_of(request)
    principal.require_phone_book()
    scope = principal.township_scope()

    def load(session: Session) -> list[dict[str, Any]]:
        rows = session.exec(select(PhoneWhitelist)).all()
        return [
            _view(r)
            for r in rows
            if scope is None or _township_of(session, Scope(r.scope), r.scope_id) == scope
        ]

    rows = await request.app[keys.DB].run(load)
    return s.respond(WhitelistList, {"whitelists": rows})


@routes.put("/api/phone/whitelists/{scope}/{scope_id}")
@describe(
    "Replace one township's, village's or terminal's whitelist (and optional PIN); every "
    "terminal it covers gets its new book as a signed command",
    tag="phone",
    body=WhitelistIn,
    responses={200: WhitelistSaved},
)
async def put_whitelist(request: web.Request) -> web.Response:
    principal = principal_of(request)
    principal.require_phone_book()
    try:
        scope = Scope(request.match_info["scope"])
    except ValueError:
        raise bad_request("scope", "township, village or device") from None
    scope_id = request.match_info["scope_id"]
    body = parse_body(WhitelistIn, await read_json(request))
    version = p.now_ms()

    def save(session: Session) -> tuple[dict[str, Any], list[tuple[str, p.PhoneBookBody]]]:
        township = _township_of(session, scope, scope_id)
        _require_reach(principal, township)
        row = session.get(PhoneWhitelist, (scope.value, scope_id))
        if row is None:
            row = PhoneWhitelist(scope=scope.value, scope_id=scope_id, updated_ms=version)
        row.numbers = body.numbers
        if body.clear_pin:
            set_pin(row, None)
        elif body.pin is not None:
            set_pin(row, body.pin)
        row.updated_ms, row.updated_by = version, principal.user
        session.add(row)
        session.flush()
        books = [
            (d.id, book_for(session, d, version)) for d in devices_in(session, scope, scope_id)
        ]
        # The count, not the numbers: the audit log has more readers than whitelists.
        audit.record(
            session,
            principal,
            "phone.whitelist",
            f"{scope.value}:{scope_id}",
            numbers=len(body.numbers),
            pin="cleared" if body.clear_pin else "set" if body.pin else "unchanged",
        )
        return _view(row), books

    view, books = await request.app[keys.DB].run(save)
    published = await _send_books(request.app, books, version)
    return s.respond(WhitelistSaved, {**view, "devices": len(books), "published": published})


def _require_reach(principal: Principal, township: str) -> None:
    scope = principal.township_scope()
    if scope is not None and township != scope:
        raise forbidden("outside your township")


async def _send_books(
    app: web.Application, books: list[tuple[str, p.PhoneBookBody]], version: int
) -> int:
    dispatcher = app[keys.DISPATCHER]

    async def one(device_id: str, book: p.PhoneBookBody) -> bool:
        command = p.Command.new(book, p.Target(devices=(device_id,)), version + BOOK_VALID_MS)
        return await dispatcher.send(command, (p.Topics.command_device(device_id),))

    sent = await asyncio.gather(*(one(d, b) for d, b in books))
    return sum(sent)


@routes.get("/api/calls")
@describe(
    "Phone calls the terminals reported, newest first (callers masked without phone_book)",
    tag="phone",
    query=(
        Param("device_id", "only this terminal's"),
        Param("limit", "at most this many", integer(1, MAX_CALLS, 200)),
    ),
    responses={200: CallList},
)
async def list_calls(request: web.Request) -> web.Response:
    principal = principal_of(request)
    scope = principal.township_scope()
    device_id = request.query.get("device_id")
    try:
        limit = int(request.query.get("limit", "200"))
    except ValueError:
        raise bad_request("limit", "a whole number") from None
    if not 1 <= limit <= MAX_CALLS:
        raise bad_request("limit", f"between 1 and {MAX_CALLS}")
    masked = not principal.can(Permission.PHONE_BOOK)

    def load(session: Session) -> list[dict[str, Any]]:
        q = select(PhoneCall).order_by(col(PhoneCall.rang_at_ms).desc()).limit(limit)
        if scope is not None:
            q = q.where(PhoneCall.township_id == scope)
        if device_id:
            q = q.where(PhoneCall.device_id == device_id)
        rows = session.exec(q).all()
        return [
            {**r.model_dump(exclude={"rx_ms"}), "caller": mask(r.caller) if masked else r.caller}
            for r in rows
        ]

    calls = await request.app[keys.DB].run(load)
    return s.respond(CallList, {"calls": calls, "callers_masked": masked})
