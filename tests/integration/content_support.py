"""Helpers shared by the content tests (templates, uploads, preview, pre-positioning)."""

from __future__ import annotations

from typing import Any

from sqlmodel import select

from controller.auth import Role, create_user_and_token
from controller.db import Database
from controller.models import AuditEntry


def tokens(county: Any) -> dict[str, str]:
    """Bearer tokens of a township clerk (t01), a viewer and a duty officer."""
    db = Database(county.prepared.settings.db_url)
    db.start()
    try:
        return {
            "staff": db.run_sync(
                lambda s: create_user_and_token(s, "clerk", Role.TOWNSHIP_STAFF, "t01")
            ),
            "viewer": db.run_sync(lambda s: create_user_and_token(s, "watcher", Role.VIEWER, None)),
            "duty": db.run_sync(
                lambda s: create_user_and_token(s, "officer", Role.DUTY_OFFICER, None)
            ),
        }
    finally:
        db.stop()


def audit_actions(county: Any) -> list[tuple[str, str, str]]:
    """(actor, action, target) of every audit entry so far."""
    db = Database(county.prepared.settings.db_url)
    db.start()
    try:
        return db.run_sync(
            lambda s: [(e.actor, e.action, e.target) for e in s.exec(select(AuditEntry))]
        )
    finally:
        db.stop()


async def post_broadcast(county: Any, **body: Any) -> str:
    """POST /api/broadcasts as given (county.broadcast() would add category/priority)."""
    _, created = await county.api("POST", "/api/broadcasts", json_body=body, expect=201)
    return str(created["id"])
