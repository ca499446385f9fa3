"""Times on the API: ISO 8601 with milliseconds, UTC; epoch milliseconds inside."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def parse_instant(value: object, field: str) -> int:
    """An ISO 8601 string with a timezone, or epoch milliseconds -> epoch ms."""
    from controller.errors import bad_request

    if isinstance(value, bool):
        raise bad_request(field, "must be an ISO 8601 time or epoch milliseconds")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise bad_request(field, f"{value!r} is not an ISO 8601 time") from None
        if dt.tzinfo is None:
            raise bad_request(field, "needs a timezone (e.g. +08:00 or Z)", "time_needs_timezone")
        return int(dt.timestamp() * 1000)
    raise bad_request(field, "must be an ISO 8601 time or epoch milliseconds")
