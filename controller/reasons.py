"""Delivery reasons as machine codes a console can word in its reader's language.

Terminals and the controller write a delivery's reason as an English sentence (the wire
protocol carries free text, dalaba/protocol.py, and a technician reads it in logs). People
read it on the board, in records and on a terminal's page, in Chinese first: so every
known sentence maps here, once, to a code (`reason.<code>` in web/js/i18n.js) and the
parts that vary (who cancelled, which attempt, the media error). A sentence no pattern
knows keeps the code `other` and is shown as written, never dropped.

tests/unit/test_message_catalogue.py fails when a code here has no translation.
"""

from __future__ import annotations

import re
from typing import Any

# Order matters: the first match wins, so the specific before the general.
REASONS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), code)
    for pattern, code in (
        (r"^never reached", "never_reached"),
        (r"^interrupted by a higher priority", "preempted"),
        (r"^interrupted", "interrupted"),
        (r"^not played before expiry", "not_played"),
        (r"^expired before it could play", "expired_before_play"),
        (r"^amplifier failed to power on", "amplifier_no_power"),
        (r"^amplifier failed while warming up", "amplifier_warming"),
        (r"^amplifier failed during the play", "amplifier_during"),
        (r"^amplifier failed", "amplifier"),
        (r"^speaker line cut during the play", "line_cut_during"),
        (r"^speaker line cut", "line_cut"),
        (r"^no report from the terminal", "no_report"),
        (r"^the terminal went silent", "silent"),
        (r"^the terminal was offline when it was sent", "offline_at_send"),
        (r"^terminal online", "terminal_online"),
        (r"^resent \(attempt (?P<n>\d+)\) by (?P<by>.+)$", "resent"),
        (r"^cancelled by the controller", "cancelled_by_controller"),
        (r"^cancelled by (?P<by>.+)$", "cancelled_by"),
        (r"^stopped$", "stopped"),
        (r"^terminal refused the command: (?P<detail>\w+)", "refused"),
        (r"^media: could not fetch before start", "media_deadline"),
        (r"^media: inline audio refused", "media_inline_refused"),
        # A schedule's occurrence (controller/schedules): why it did not play as planned.
        (
            r"^quiet hours (?P<start>\d\d:\d\d)–(?P<end>\d\d:\d\d) in township "
            r"(?P<township>\S+)$",
            "quiet_hours",
        ),
        (r"^skip date$", "skip_date"),
        (r"^broadcast cancelled by (?P<by>.+)$", "cancelled_by"),
        (r"^no longer in the schedule after the edit by (?P<by>\S+)", "schedule_edited"),
        (r"^schedule paused by (?P<by>\S+)$", "schedule_paused"),
        (r"^schedule deleted by (?P<by>\S+)$", "schedule_deleted"),
        (r"^firing failed", "firing_failed"),
        (r"^media: (?P<detail>.*)$", "media"),
    )
)

OTHER = "other"
CODES: tuple[str, ...] = (*(code for _, code in REASONS), OTHER)


def reason_code(reason: str | None) -> tuple[str | None, dict[str, str]]:
    """(code, parts) for a reason sentence; (None, {}) when there is no reason."""
    if not reason:
        return None, {}
    for pattern, code in REASONS:
        m = pattern.match(reason)
        if m:
            return code, {k: v for k, v in m.groupdict().items() if v is not None}
    return OTHER, {}


def with_code(view: dict[str, Any], key: str = "reason") -> dict[str, Any]:
    """The view with `reason_code` and `reason_params` beside its reason sentence."""
    code, params = reason_code(view.get(key))
    view["reason_code"] = code
    view["reason_params"] = params
    return view
