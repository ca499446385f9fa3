"""Who is calling, and what their role lets them reach.

Roles and what they may do are one table, `ROLE_PERMISSIONS` (the role matrix; the
console and docs/architecture.md follow it): `admin` (everything), `duty_officer`
(broadcast anywhere, approve another officer's request, terminal control, read
everything), `township_staff` (broadcast, terminal control and read, only within their own
township), `technician` (terminal control and health: volume, test tone, diagnostics,
resending to unreached terminals; reads everything; never broadcasts), `viewer` (read only).
Machines use bearer tokens; the console uses a session cookie (controller/sessions.py)
on the same roles, with a CSRF token required on every state-changing request.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from aiohttp import web
from sqlmodel import Session, col, select

from controller.db import Database
from controller.errors import ApiError, forbidden
from controller.models import ApiToken, AuditEntry, User
from dalaba.protocol import TIME_PATH, now_ms

TOKEN_PREFIX = "dlb_"


class Role(enum.StrEnum):
    ADMIN = "admin"
    DUTY_OFFICER = "duty_officer"
    TOWNSHIP_STAFF = "township_staff"
    TECHNICIAN = "technician"
    VIEWER = "viewer"
    # A warning source (the warning-release platform, the upper-level platform): may
    # post warnings (POST /api/cap and the EBM endpoint) and nothing else, not even read.
    UPSTREAM = "upstream"


class Permission(enum.StrEnum):
    READ = "read"
    # Send, schedule, cancel, preview, upload audio, edit groups and templates.
    BROADCAST = "broadcast"
    # Speak live through the terminals (实时喊话) from the console's microphone.
    LIVE_PAGING = "live_paging"
    # Be the second officer of the two-person rule.
    APPROVE = "approve"
    # Volume, test tone, diagnostics, resend to a broadcast's unreached terminals.
    TERMINAL_CONTROL = "terminal_control"
    # Assign, annotate and close work orders (controller/workorders.py).
    WORK_ORDERS = "work_orders"
    MANAGE_USERS = "manage_users"
    # Post warnings to the intake (controller/warnings); only the upstream role.
    POST_WARNINGS = "post_warnings"
    # Upload agent releases; start, halt and resume their rollouts (controller/updates.py).
    # Admins only: a release runs on every terminal of the county.
    UPDATES = "updates"
    # Read and change phone-call whitelists (personal numbers) and see callers unmasked.
    PHONE_BOOK = "phone_book"


# The role matrix. Township staff hold theirs only within their township
# (`Principal.township_scope`); everyone else county-wide.
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    # An admin manages sources but is not one: warnings come with a source's token.
    Role.ADMIN: frozenset(Permission) - {Permission.POST_WARNINGS},
    Role.DUTY_OFFICER: frozenset(
        {
            Permission.READ,
            Permission.BROADCAST,
            Permission.LIVE_PAGING,
            Permission.APPROVE,
            Permission.TERMINAL_CONTROL,
            Permission.PHONE_BOOK,
        }
    ),
    Role.TOWNSHIP_STAFF: frozenset(
        {
            Permission.READ,
            Permission.BROADCAST,
            Permission.LIVE_PAGING,
            Permission.TERMINAL_CONTROL,
            Permission.PHONE_BOOK,
        }
    ),
    Role.TECHNICIAN: frozenset(
        {Permission.READ, Permission.TERMINAL_CONTROL, Permission.WORK_ORDERS}
    ),
    Role.VIEWER: frozenset({Permission.READ}),
    Role.UPSTREAM: frozenset({Permission.POST_WARNINGS}),
}


@dataclass(frozen=True)
class Principal:
    user: str
    role: Role
    township_id: str | None = None
    # Set only through `for_test_tone` (controller/api/device_control.py): a test tone is
    # a routine broadcast to one terminal, sent through the same path as any other so it
    # proves that path, and a technician may send exactly that without broadcast rights.
    test_tone: bool = field(default=False, compare=False)
    # Set only through `for_warning_intake` (controller/warnings/intake.py): the intake
    # sends a source's warning as that source, through the same path as any broadcast.
    warning_intake: bool = field(default=False, compare=False)

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]

    @property
    def can_broadcast(self) -> bool:
        return self.can(Permission.BROADCAST) or self.test_tone or self.warning_intake

    @property
    def county_wide(self) -> bool:
        return self.role is not Role.TOWNSHIP_STAFF

    def township_scope(self) -> str | None:
        """None: the whole county; else the only township this principal may see."""
        return None if self.county_wide else self.township_id

    def require_broadcast(self) -> None:
        if not self.can_broadcast:
            raise forbidden(f"role {self.role.value} may not broadcast")

    def require_live_paging(self) -> None:
        if not self.can(Permission.LIVE_PAGING):
            raise forbidden(f"role {self.role.value} may not speak live")

    def require_terminal_control(self) -> None:
        if not self.can(Permission.TERMINAL_CONTROL):
            raise forbidden(f"role {self.role.value} may not control terminals")

    def require_phone_book(self) -> None:
        if not self.can(Permission.PHONE_BOOK):
            raise forbidden(f"role {self.role.value} may not see or change phone whitelists")

    def for_test_tone(self) -> Principal:
        """This principal, allowed to send the one routine test-tone broadcast."""
        self.require_terminal_control()
        return replace(self, test_tone=True)

    def for_warning_intake(self) -> Principal:
        """This upstream source, allowed to have its warning broadcast by the intake."""
        if self.role is not Role.UPSTREAM:
            raise forbidden(f"role {self.role.value} is not a warning source")
        return replace(self, warning_intake=True)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user_and_token(
    session: Session, user_name: str, role: Role, township_id: str | None, label: str = ""
) -> str:
    """Create (or reuse) the user and return a new token: shown once, stored hashed."""
    if role is Role.TOWNSHIP_STAFF and not township_id:
        raise ValueError("--township is required for township_staff")
    user = session.exec(select(User).where(User.name == user_name)).first()
    if user is None:
        user = User(name=user_name, role=role.value, township_id=township_id, created_ms=now_ms())
        session.add(user)
        session.flush()
    elif user.role != role.value or user.township_id != township_id:
        raise ValueError(f"user {user_name} exists with role {user.role}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    assert user.id is not None
    session.add(
        ApiToken(
            user_id=user.id,
            token_hash=hash_token(token),
            prefix=token[:10],
            label=label,
            created_ms=now_ms(),
        )
    )
    return token


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about an API token: never the token or its hash."""

    id: int
    prefix: str
    user: str
    role: str
    label: str
    created_ms: int
    last_used_ms: int | None
    revoked: bool


def _token_info(token: ApiToken, user: User) -> TokenInfo:
    assert token.id is not None
    return TokenInfo(
        token.id,
        token.prefix,
        user.name,
        user.role,
        token.label,
        token.created_ms,
        token.last_used_ms,
        token.revoked,
    )


def list_tokens(session: Session, user_name: str | None = None) -> list[TokenInfo]:
    """Every API token (or one user's), oldest first, revoked ones included."""
    query = select(ApiToken, User).where(ApiToken.user_id == User.id).order_by(col(ApiToken.id))
    if user_name is not None:
        query = query.where(User.name == user_name)
    return [_token_info(token, user) for token, user in session.exec(query)]


def revoke_token(session: Session, prefix_or_id: str, actor: str) -> tuple[TokenInfo, bool]:
    """Revoke the token named by its id, its listed prefix or the whole token. Returns
    it and whether it was live until now. LookupError when nothing matches,
    ValueError when a prefix matches several (then the id tells them apart)."""
    key = prefix_or_id.strip()
    query = select(ApiToken, User).where(ApiToken.user_id == User.id)
    if key.isdigit():
        query = query.where(ApiToken.id == int(key))
    elif key.startswith(TOKEN_PREFIX) and len(key) > len(TOKEN_PREFIX) + 20:
        query = query.where(ApiToken.token_hash == hash_token(key))  # the whole token
    else:
        query = query.where(ApiToken.prefix == key)
    rows = session.exec(query).all()
    if not rows:
        raise LookupError(f"token {key}: no such token (see `dalaba token list`)")
    if len(rows) > 1:
        ids = ", ".join(str(token.id) for token, _ in rows)
        raise ValueError(f"token {key}: {len(rows)} tokens match (ids {ids}): give the id")
    token, user = rows[0]
    was_live = not token.revoked
    if was_live:
        token.revoked = True
        session.add(token)
        session.add(
            AuditEntry(
                at_ms=now_ms(),
                actor=actor,
                # Whoever can open the database from the server's shell: not a role.
                role="cli",
                action="token.revoke",
                target=user.name,
                detail={"token_id": token.id, "prefix": token.prefix, "label": token.label},
            )
        )
    return _token_info(token, user), was_live


class TokenAuthenticator:
    CACHE_S = 5.0  # a revoked token stops working within this long

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def principal_for(self, token: str) -> Principal | None:
        digest = hash_token(token)
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]

        def lookup(session: Session) -> Principal | None:
            row = session.exec(
                select(ApiToken, User)
                .where(ApiToken.token_hash == digest)
                .where(ApiToken.user_id == User.id)
            ).first()
            if row is None:
                return None
            tok, user = row
            if tok.revoked or user.disabled:
                return None
            tok.last_used_ms = now_ms()
            return Principal(user.name, Role(user.role), user.township_id)

        principal = await self._db.run(lookup)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + self.CACHE_S, principal)
        return principal


# /api/enrol: the one-time code is the credential (controller/enrolment.py).
PUBLIC_PATHS = ("/api/health", "/api/session/login", TIME_PATH, "/api/enrol")
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
SESSION_COOKIE = "dalaba_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The only paths a warning source's token opens (least privilege: it cannot even read).
# The EBM endpoint (controller/warnings) lives under /api/ebd.
UPSTREAM_PATHS = ("/api/cap", "/api/ebd")


def _within_role(request: web.Request, principal: Principal) -> Principal:
    if principal.role is Role.UPSTREAM and not request.path.startswith(UPSTREAM_PATHS):
        raise forbidden("role upstream may only post warnings")
    return principal


class SessionLookup(Protocol):
    async def lookup(self, cookie: str) -> tuple[Principal, str] | None:
        """The principal and CSRF token of a live console session, or None."""
        ...


def auth_middleware(
    authenticator: TokenAuthenticator,
    sessions: SessionLookup | None = None,
) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.startswith("/api/") or request.path in PUBLIC_PATHS:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        cookie = request.cookies.get(SESSION_COOKIE)
        if not header and cookie and sessions is not None:
            found = await sessions.lookup(cookie)
            if found is None:
                raise ApiError(401, "unauthenticated", "session: expired or logged out")
            session_principal, csrf = found
            # The cookie rides along on any request the browser makes, even one another
            # site triggers; only script on our own origin can read and send the token.
            sent = request.headers.get(CSRF_HEADER, "")
            if request.method not in SAFE_METHODS and not hmac.compare_digest(
                sent.encode(), csrf.encode()
            ):
                raise ApiError(403, "csrf", f"{CSRF_HEADER}: missing or wrong", CSRF_HEADER)
            request[PRINCIPAL] = _within_role(request, session_principal)
            return await handler(request)
        # Bearer tokens are not sent by browsers on their own, so they need no CSRF check.
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthenticated", "Authorization: a bearer token is required")
        principal = await authenticator.principal_for(token.strip())
        if principal is None:
            raise ApiError(401, "unauthenticated", "Authorization: unknown or revoked token")
        request[PRINCIPAL] = _within_role(request, principal)
        return await handler(request)

    return middleware


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]
