"""/api/users: console users and their roles, managed by an admin; an admin also clears
a user's log-in back-off (`POST /api/users/{name}/unlock`)."""

from __future__ import annotations

import asyncio
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from controller import audit
from controller.api import keys
from controller.auth import Permission, Principal, Role, principal_of
from controller.errors import (
    ApiError,
    bad_request,
    forbidden,
    json_response,
    not_found,
    parse_body,
    read_json,
)
from controller.models import Township, User
from controller.openapi import describe
from controller.sessions import Backoff, hash_password
from controller.timefmt import iso

routes = web.RouteTableDef()

RoleName = Literal["admin", "duty_officer", "township_staff", "technician", "viewer"]


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[^\s/]+$")
    role: RoleName
    township_id: str | None = None
    password: str


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: RoleName | None = None
    township_id: str | None = None
    disabled: bool | None = None
    password: str | None = None


def require_admin(principal: Principal) -> None:
    if not principal.can(Permission.MANAGE_USERS):
        raise forbidden("only an admin manages users")


def user_view(u: User, blocked: list[Backoff] | None = None) -> dict[str, object]:
    return {
        "id": u.id,
        "name": u.name,
        "role": u.role,
        "township_id": u.township_id,
        "disabled": u.disabled,
        "has_password": bool(u.password_hash),
        "created_at": iso(u.created_ms),
        # Addresses slowed down after failed logins for this name (see controller/sessions.py).
        "login_backoff": [
            {
                "client": b.client,
                "failures": b.failures,
                "refused": b.refused,
                "last_failure_at": iso(b.last_failure_ms),
                "blocked_until": iso(b.blocked_until_ms),
            }
            for b in blocked or []
        ],
    }


def _check_township(session: Session, role: str, township_id: str | None) -> str | None:
    if role != Role.TOWNSHIP_STAFF.value:
        return None
    if not township_id:
        raise bad_request("township_id", "required for township_staff", "township_required")
    if session.get(Township, township_id) is None:
        raise bad_request(
            "township_id",
            f"unknown township {township_id!r}",
            "unknown_township",
            {"id": township_id},
        )
    return township_id


@routes.get("/api/users")
async def list_users(request: web.Request) -> web.Response:
    require_admin(principal_of(request))

    db = request.app[keys.DB]
    users = await db.run(lambda s: list(s.exec(select(User).order_by(col(User.name)))))
    blocked = await request.app[keys.SESSIONS].blocked([u.name for u in users])
    return json_response({"users": [user_view(u, blocked.get(u.name)) for u in users]})


@routes.post("/api/users")
async def create_user(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_admin(principal)
    body = parse_body(UserIn, await read_json(request))
    password_hash = await asyncio.to_thread(hash_password, body.password, body.name)

    def create(session: Session) -> dict[str, object]:
        from dalaba.protocol import now_ms

        if session.exec(select(User).where(User.name == body.name)).first() is not None:
            raise ApiError(409, "exists", f"name: user {body.name} already exists", "name")
        township = _check_township(session, body.role, body.township_id)
        user = User(
            name=body.name,
            role=body.role,
            township_id=township,
            password_hash=password_hash,
            created_ms=now_ms(),
        )
        session.add(user)
        session.flush()
        audit.record(
            session, principal, "user.create", body.name, role=body.role, township=township
        )
        return user_view(user)

    created = await request.app[keys.DB].run(create)
    return json_response(created, status=201, location=f"/api/users/{created['id']}")


@routes.patch("/api/users/{id}")
async def update_user(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_admin(principal)
    try:
        user_id = int(request.match_info["id"])
    except ValueError:
        raise bad_request("id", "must be a number") from None
    body = parse_body(UserPatch, await read_json(request))
    sessions = request.app[keys.SESSIONS]
    password_hash = None
    if body.password is not None:
        db = request.app[keys.DB]
        existing = await db.run(lambda s: s.get(User, user_id))
        if existing is None:
            raise not_found(f"user {user_id}")
        password_hash = await asyncio.to_thread(hash_password, body.password, existing.name)

    def update(session: Session) -> dict[str, object]:
        user = session.get(User, user_id)
        if user is None:
            raise not_found(f"user {user_id}")
        if user.name == principal.user and (body.disabled or body.role not in (None, "admin")):
            raise bad_request("role", "an admin cannot lock themselves out", "self_lockout")
        if user.role == Role.UPSTREAM.value and (
            body.role is not None or body.password is not None
        ):
            # A warning source is a token, not a person: it gets no console password, and
            # its role stays the one that may only post warnings.
            field = "role" if body.role is not None else "password"
            raise bad_request(field, "a warning source is managed under /api/upstream/sources")
        changes: dict[str, object] = {}
        role = body.role or user.role
        if body.role is not None or "township_id" in body.model_fields_set:
            user.township_id = _check_township(
                session,
                role,
                body.township_id if "township_id" in body.model_fields_set else user.township_id,
            )
            user.role = role
            changes.update(role=role, township=user.township_id)
        if body.disabled is not None:
            user.disabled = body.disabled
            changes["disabled"] = body.disabled
        if password_hash is not None:
            user.password_hash = password_hash
            changes["password"] = "reset"
        session.add(user)
        assert user.id is not None
        # Whatever changed, the user's open console sessions end with the old rights.
        sessions.forget_user_sessions(session, user.id)
        audit.record(session, principal, "user.update", user.name, **changes)
        return user_view(user)

    return json_response(await request.app[keys.DB].run(update))


class Unlocked(BaseModel):
    name: str
    cleared: list[str] = Field(description="the addresses whose back-off was cleared")


@routes.post("/api/users/{name}/unlock")
@describe(
    "Clear a user's log-in back-off from every address (admins)",
    tag="users",
    responses={200: Unlocked},
)
async def unlock_user(request: web.Request) -> web.Response:
    """Clear the log-in back-off of every address for this user name (an officer who
    mistyped, or the address an attacker used, once dealt with)."""
    principal = principal_of(request)
    require_admin(principal)
    name = request.match_info["name"]
    db = request.app[keys.DB]
    exists = await db.run(lambda s: s.exec(select(User.id).where(User.name == name)).first())
    if exists is None:
        raise not_found(f"user {name}")
    cleared = await request.app[keys.SESSIONS].unlock(name, principal)
    return json_response({"name": name, "cleared": cleared})
