"""Phone-call broadcast (电话广播), the controller's side: whitelists and the call records.

A whitelist belongs to a township, a village or one terminal; a terminal answers the
union of its own, its village's and its township's, and asks for the PIN of the most
specific one that has a PIN. The controller sends each affected terminal its whole book
(`PhoneBookBody`) on that terminal's own command topic, signed like every command, with
a version that only grows (the send time). The PIN is kept only as a salted digest.

Whitelists hold personal phone numbers: only roles with `phone_book` read or change
them (township staff within their township); every call a terminal reports is kept in
`PhoneCall`, and readers without that permission see the caller masked.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable
from typing import Any

from sqlalchemy import JSON, BigInteger, Column
from sqlmodel import Field, Session, SQLModel, col, select

from controller.models import Device
from dalaba import protocol as p

# Numbers one whitelist may hold (the issue asks for at least 32).
MAX_NUMBERS_PER_LIST = 200
# How long a terminal that is offline has to come back and still get its new book.
BOOK_VALID_MS = 7 * 24 * 3600 * 1000


class Scope(enum.StrEnum):
    TOWNSHIP = "township"
    VILLAGE = "village"
    DEVICE = "device"


class PhoneWhitelist(SQLModel, table=True):
    scope: str = Field(primary_key=True)  # Scope
    scope_id: str = Field(primary_key=True)
    numbers: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    pin_salt: str | None = None
    pin_sha256: str | None = None
    pin_length: int | None = None
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_by: str = ""


class PhoneCall(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(index=True)
    village_id: str = Field(index=True)
    township_id: str = Field(index=True)
    caller: str
    outcome: str  # p.CallOutcome
    rang_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    ended_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    played_ms: int = 0
    rx_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


def normalise_numbers(raw: Iterable[str]) -> list[str]:
    """The stored form of a list as typed (spaces, dashes, +86 allowed); raises
    ValueError naming the entry that is not a phone number. Duplicates dropped."""
    out: list[str] = []
    for i, number in enumerate(raw):
        if not isinstance(number, str) or any(c not in "0123456789+- ()" for c in number):
            raise ValueError(f"numbers[{i}]: not a phone number")
        digits = p.normalise_phone(number)
        if not 3 <= len(digits) <= 20:
            raise ValueError(f"numbers[{i}]: not a phone number")
        if digits not in out:
            out.append(digits)
    if len(out) > MAX_NUMBERS_PER_LIST:
        raise ValueError(f"numbers: more than {MAX_NUMBERS_PER_LIST}")
    return out


def set_pin(row: PhoneWhitelist, pin: str | None) -> None:
    if not pin:
        row.pin_salt = row.pin_sha256 = row.pin_length = None
        return
    row.pin_salt = secrets.token_hex(8)
    row.pin_sha256 = p.phone_pin_digest(row.pin_salt, pin)
    row.pin_length = len(pin)


def mask(number: str) -> str:
    """A caller as people without the phone-book permission see it."""
    return number[:3] + "****" + number[-4:] if len(number) >= 8 else "****"


def _lists_for(session: Session, device: Device) -> list[PhoneWhitelist]:
    """The device's lists, most specific first."""
    wanted = [
        (Scope.DEVICE.value, device.id),
        (Scope.VILLAGE.value, device.village_id),
        (Scope.TOWNSHIP.value, device.township_id),
    ]
    rows = [session.get(PhoneWhitelist, key) for key in wanted]
    return [r for r in rows if r is not None]


def book_for(session: Session, device: Device, version: int) -> p.PhoneBookBody:
    lists = _lists_for(session, device)
    numbers: list[str] = []
    for row in lists:
        numbers.extend(n for n in row.numbers if n not in numbers)
    pin: dict[str, Any] = {}
    with_pin = next((r for r in lists if r.pin_sha256 is not None), None)
    if with_pin is not None:
        pin = {
            "pin_salt": with_pin.pin_salt,
            "pin_sha256": with_pin.pin_sha256,
            "pin_length": with_pin.pin_length,
        }
    return p.PhoneBookBody(version=version, numbers=tuple(numbers[: p.MAX_PHONE_BOOK]), **pin)


def devices_in(session: Session, scope: Scope, scope_id: str) -> list[Device]:
    column = {
        Scope.DEVICE: Device.id,
        Scope.VILLAGE: Device.village_id,
        Scope.TOWNSHIP: Device.township_id,
    }[scope]
    return list(session.exec(select(Device).where(col(column) == scope_id)).all())


def record_call(session: Session, device: Device, event: p.DeviceEvent, rx: int) -> None:
    """Keep a `call` event; a detail that does not say what a call report says is
    dropped (counted by the caller) rather than stored half-read."""
    d = event.detail
    caller, outcome = d.get("caller"), d.get("outcome")
    if not isinstance(caller, str) or outcome not in {o.value for o in p.CallOutcome}:
        raise ValueError("call event without caller or outcome")
    rang, ended, played = d.get("rang_at"), d.get("ended_at"), d.get("played_ms")
    session.add(
        PhoneCall(
            device_id=device.id,
            village_id=device.village_id,
            township_id=device.township_id,
            caller=caller[:32],
            outcome=str(outcome),
            rang_at_ms=rang if isinstance(rang, int) else event.at,
            ended_at_ms=ended if isinstance(ended, int) else event.at,
            played_ms=played if isinstance(played, int) and played >= 0 else 0,
            rx_ms=rx,
        )
    )
