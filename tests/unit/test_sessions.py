"""Console sessions on a real SQLite database: argon2 passwords, lock-out after repeated
failures, session expiry, logout and disabled users; and the two-person rule's scope."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from controller.approvals import needs_second_person
from controller.auth import Role
from controller.db import Database
from controller.errors import ApiError
from controller.models import AuditEntry, Township, User
from controller.sessions import (
    ConsoleSession,
    SessionStore,
    hash_password,
    set_console_password,
    verify_password,
)
from controller.settings import Settings

PASSWORD = "reservoir-gate-7"


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'sessions.db'}")
    database.start()

    def seed(session):
        session.add(Township(id="t01", name="城关镇", lat=28.2, lon=112.9))
        session.flush()
        set_console_password(session, "duty1", Role.DUTY_OFFICER, None, PASSWORD)
        set_console_password(session, "clerk", Role.TOWNSHIP_STAFF, "t01", PASSWORD)

    database.run_sync(seed)
    yield database
    database.stop()


def store(db: Database, **settings: object) -> SessionStore:
    base = {"demo": True, "login_max_failures": 3, "login_lockout_s": 60}
    return SessionStore(db, Settings(**{**base, **settings}))  # type: ignore[arg-type]


def actions(db: Database, actor: str) -> list[str]:
    return db.run_sync(
        lambda s: [
            e.action
            for e in s.exec(
                select(AuditEntry).where(AuditEntry.actor == actor).order_by(AuditEntry.id)
            )
        ]
    )


def test_passwords_are_argon2_and_verified_in_constant_shape():
    hashed = hash_password(PASSWORD)
    assert hashed.startswith("$argon2id$") and PASSWORD not in hashed
    assert verify_password(hashed, PASSWORD)
    assert not verify_password(hashed, PASSWORD + "x")
    assert not verify_password(None, PASSWORD)  # no such user: a dummy hash is checked
    assert not verify_password("not-a-hash", PASSWORD)
    with pytest.raises(ApiError) as err:
        hash_password("short")
    assert err.value.field == "password"


def test_cli_helper_refuses_staff_without_township_and_role_changes(db: Database):
    with pytest.raises(ValueError, match="township"):
        db.run_sync(lambda s: set_console_password(s, "x", Role.TOWNSHIP_STAFF, None, PASSWORD))
    with pytest.raises(ValueError, match="exists with role"):
        db.run_sync(lambda s: set_console_password(s, "duty1", Role.ADMIN, None, PASSWORD))
    with pytest.raises(ValueError, match="already exists"):
        db.run_sync(
            lambda s: set_console_password(
                s, "duty1", Role.DUTY_OFFICER, None, PASSWORD, create_only=True
            )
        )


async def test_login_opens_a_hashed_session_that_lookup_and_logout_honour(db: Database):
    sessions = store(db)
    done = await sessions.login("duty1", PASSWORD, "pytest")
    assert done.principal.user == "duty1" and done.principal.role is Role.DUTY_OFFICER
    rows = db.run_sync(lambda s: list(s.exec(select(ConsoleSession))))
    assert len(rows) == 1 and rows[0].token_hash != done.cookie  # only the hash is kept
    found = await sessions.lookup(done.cookie)
    assert found is not None and found[1] == done.csrf_token
    assert await sessions.lookup("forged-cookie") is None

    await sessions.logout(done.cookie, done.principal)
    assert await sessions.lookup(done.cookie) is None
    assert actions(db, "duty1") == ["session.login", "session.logout"]


async def test_sessions_expire(db: Database):
    sessions = store(db, session_ttl_s=60)
    done = await sessions.login("clerk", PASSWORD)
    assert done.principal.township_id == "t01"

    def age(session):
        for row in session.exec(select(ConsoleSession)):
            row.expires_ms -= 61_000

    db.run_sync(age)
    sessions._cache.clear()
    assert await sessions.lookup(done.cookie) is None


async def test_disabled_users_cannot_log_in_or_keep_their_session(db: Database):
    sessions = store(db)
    done = await sessions.login("clerk", PASSWORD)

    def disable(session):
        user = session.exec(select(User).where(User.name == "clerk")).one()
        user.disabled = True
        sessions.forget_user_sessions(session, user.id)

    db.run_sync(disable)
    assert await sessions.lookup(done.cookie) is None
    with pytest.raises(ApiError) as err:
        await sessions.login("clerk", PASSWORD)
    assert err.value.status == 401


@pytest.mark.parametrize(
    ("levels", "minimum", "kw", "expected"),
    [
        ((1, 2), 0, {"priority": "emergency", "level": 1, "drill": False}, True),
        ((1, 2), 0, {"priority": "emergency", "level": 2, "drill": False}, True),
        ((1, 2), 0, {"priority": "emergency", "level": 3, "drill": False}, False),
        ((1, 2), 0, {"priority": "emergency", "level": 1, "drill": True}, False),
        ((1, 2), 0, {"priority": "notice", "level": None, "drill": False}, False),
        ((), 0, {"priority": "emergency", "level": 1, "drill": False}, False),
    ],
)
def test_two_person_rule_applies_to_real_county_wide_alerts_at_configured_levels(
    levels, minimum, kw, expected
):
    settings = Settings(demo=True, two_person_levels=levels, two_person_min_townships=minimum)
    assert needs_second_person(settings, townships_reached=12, townships_total=12, **kw) is expected
    # One township of twelve is not county-wide.
    assert not needs_second_person(settings, townships_reached=1, townships_total=12, **kw)


def test_two_person_rule_can_start_below_the_whole_county():
    settings = Settings(demo=True, two_person_levels=(1,), two_person_min_townships=3)
    real = {"priority": "emergency", "level": 1, "drill": False}
    assert needs_second_person(settings, townships_reached=3, townships_total=12, **real)
    assert not needs_second_person(settings, townships_reached=2, townships_total=12, **real)
