"""/api/session: console login, who am I, logout, change my password."""

from __future__ import annotations

import asyncio

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, select

from controller.api import keys
from controller.auth import PRINCIPAL, SESSION_COOKIE, Principal, principal_of
from controller.errors import ApiError, parse_body, read_json
from controller.models import Township, User
from controller.sessions import check_password, hash_password, verify_password

routes = web.RouteTableDef()


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current: str = Field(max_length=256)
    new: str = Field(max_length=256)


async def me(request: web.Request, principal: Principal) -> dict[str, object]:
    settings = request.app[keys.SETTINGS]

    def load(session: Session) -> dict[str, object]:
        township = session.get(Township, principal.township_id) if principal.township_id else None
        return {
            "user": principal.user,
            "role": principal.role.value,
            "township_id": principal.township_id,
            "township_name": township.name if township else None,
            "county_wide": principal.county_wide,
            "can_broadcast": principal.can_broadcast,
            # So the console can say before sending that a second officer must confirm.
            "two_person_levels": list(settings.two_person_levels),
            "two_person_min_townships": settings.two_person_min_townships,
        }

    return await request.app[keys.DB].run(load)


@routes.post("/api/session/login")
async def login(request: web.Request) -> web.Response:
    # A JSON body cannot be sent cross-site without a CORS preflight we never grant,
    # so a hostile page cannot log a browser in under someone else's account.
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "body: send application/json", "body")
    body = parse_body(LoginIn, await read_json(request, max_bytes=4096))
    settings = request.app[keys.SETTINGS]
    done = await request.app[keys.SESSIONS].login(
        body.name, body.password, request.headers.get("User-Agent", "")
    )
    response = web.json_response(
        {**(await me(request, done.principal)), "csrf_token": done.csrf_token}
    )
    response.set_cookie(
        SESSION_COOKIE,
        done.cookie,
        max_age=settings.session_ttl_s,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=settings.cookie_secure,
    )
    return response


@routes.get("/api/session")
async def whoami(request: web.Request) -> web.Response:
    principal = principal_of(request)
    info = await me(request, principal)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and "Authorization" not in request.headers:
        found = await request.app[keys.SESSIONS].lookup(cookie)
        if found is not None:
            info["csrf_token"] = found[1]
    return web.json_response(info)


@routes.post("/api/session/logout")
async def logout(request: web.Request) -> web.Response:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        await request.app[keys.SESSIONS].logout(cookie, request[PRINCIPAL])
    response = web.json_response({"logged_out": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


@routes.post("/api/session/password")
async def change_password(request: web.Request) -> web.Response:
    principal = principal_of(request)
    body = parse_body(PasswordIn, await read_json(request, max_bytes=4096))
    check_password(body.new, "new")
    db = request.app[keys.DB]
    user = await db.run(lambda s: s.exec(select(User).where(User.name == principal.user)).first())
    if user is None or not verify_password(user.password_hash, body.current):
        raise ApiError(403, "invalid_credentials", "current: wrong password", "current")
    new_hash = await asyncio.to_thread(hash_password, body.new)

    def save(session: Session) -> None:
        from controller import audit

        row = session.get(User, user.id)
        assert row is not None
        row.password_hash = new_hash
        audit.record(session, principal, "user.password_changed", principal.user)

    await db.run(save)
    return web.json_response({"changed": True})
