"""/api/session: console login, who am I, logout, change my password."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from controller.api import keys
from controller.auth import PRINCIPAL, SESSION_COOKIE, Permission, Principal, principal_of
from controller.errors import ApiError, json_response, parse_body, read_json
from controller.models import Township
from controller.sessions import MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS

routes = web.RouteTableDef()

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current: str = Field(max_length=256)
    new: str = Field(max_length=256)


@functools.cache
def _networks(trusted: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in trusted)


def _within(address: str | None, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address((address or "").split("%", 1)[0])
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(request: web.Request, trusted: tuple[str, ...]) -> str | None:
    """Who is on the other end: the connection's address, or, when that is one of our
    `trusted_proxies`, the nearest address in X-Forwarded-For that is not (hops further
    left were written by the client and could say anything)."""
    remote = request.remote
    networks = _networks(trusted)
    if not networks or not _within(remote, networks):
        return remote
    hops = [
        hop.strip()
        for line in request.headers.getall("X-Forwarded-For", [])
        for hop in line.split(",")
        if hop.strip()
    ]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop.split("%", 1)[0])
        except ValueError:
            return remote  # not written by a proxy of ours: trust none of it
        if not _within(hop, networks):
            return hop
    return hops[0] if hops else remote


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
            "can_approve": principal.can(Permission.APPROVE),
            "can_control_terminals": principal.can(Permission.TERMINAL_CONTROL),
            "can_manage_users": principal.can(Permission.MANAGE_USERS),
            "can_manage_phone_book": principal.can(Permission.PHONE_BOOK),
            # So the console can say before sending that a second officer must confirm.
            "two_person_levels": list(settings.two_person_levels),
            "two_person_min_townships": settings.two_person_min_townships,
            "two_person_window_s": settings.two_person_window_s,
            "password_min_chars": MIN_PASSWORD_CHARS,
            "password_max_chars": MAX_PASSWORD_CHARS,
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
        body.name,
        body.password,
        request.headers.get("User-Agent", ""),
        client_address(request, settings.trusted_proxies),
    )
    response = json_response(
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
    return json_response(info)


@routes.post("/api/session/logout")
async def logout(request: web.Request) -> web.Response:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        await request.app[keys.SESSIONS].logout(cookie, request[PRINCIPAL])
    response = json_response({"logged_out": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


@routes.post("/api/session/password")
async def change_password(request: web.Request) -> web.Response:
    """Change my password; my other sessions end (this one stays: it proved the old
    password just now)."""
    principal = principal_of(request)
    body = parse_body(PasswordIn, await read_json(request, max_bytes=4096))
    settings = request.app[keys.SETTINGS]
    # A bearer token is not a session: every console session of the user ends.
    cookie = None if "Authorization" in request.headers else request.cookies.get(SESSION_COOKIE)
    await request.app[keys.SESSIONS].change_password(
        principal,
        body.current,
        body.new,
        client=client_address(request, settings.trusted_proxies),
        keep_cookie=cookie,
    )
    return json_response({"changed": True})
