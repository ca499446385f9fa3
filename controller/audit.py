"""The audit log: who did what, when. Written in the same transaction as the action."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from controller.auth import Principal
from controller.models import AuditEntry
from dalaba.protocol import now_ms


def record(
    session: Session, who: Principal | str, action: str, target: str = "", **detail: Any
) -> None:
    actor, role = (who.user, who.role.value) if isinstance(who, Principal) else (who, "system")
    session.add(
        AuditEntry(
            at_ms=now_ms(), actor=actor, role=role, action=action, target=target, detail=detail
        )
    )
