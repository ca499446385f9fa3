"""The API's response shapes.

Request bodies are validated by the pydantic models beside the code that uses them
(`BroadcastIn`, `TemplateIn`, ...); the answers are the models below. The OpenAPI
description (controller/openapi.py) is generated from both, so what is documented is
what is checked.

Response models accept fields they do not declare and pass them through (`extra="allow"`):
a field added to a service's view reaches clients at once instead of being dropped or
failing the request. tests/integration/test_openapi.py validates real answers against the
description with undeclared fields forbidden, so an addition that is not documented here
fails the tests, not the duty officer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.deliveries import BroadcastStatus, DispatchStatus, Source
from controller.errors import ApiError, json_response
from controller.targets import TargetsIn
from dalaba.protocol import DeliveryState

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

# Times on the API are ISO 8601 strings in UTC with milliseconds (controller/timefmt.py).
Instant = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
PriorityName = Literal["emergency", "paging", "notice", "routine"]


def respond(
    model: type[M],
    view: Mapping[str, Any],
    *,
    status: int = 200,
    location: str | None = None,
    bulk: str | None = None,
) -> web.Response:
    """Check a service's view against its documented shape and write it.

    `bulk` names a list (a county's thousands of deliveries or terminals) written as the
    service built it, unchecked: validating every row would hold the event loop for
    hundreds of milliseconds at 10,000 terminals. Its rows are checked against the same
    schema by tests/integration/test_openapi.py instead."""
    rows = view.get(bulk) if bulk is not None else None
    if bulk is not None and rows is not None:
        view = {**view, bulk: []}  # the rest is checked; the rows go out as they are
    try:
        checked = model.model_validate(view)
    except ValidationError as exc:
        # Our answer, not the client's request, is wrong: a 500, never a 400.
        log.error("answer does not match %s: %s", model.__name__, exc)
        raise ApiError(500, "internal", "internal error; see the controller log") from None
    if bulk is None or rows is None:
        return json_response(checked, status=status, location=location)
    out = checked.model_dump(mode="json", exclude_unset=True)
    out[bulk] = rows
    return json_response(out, status=status, location=location)


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="allow")


# --------------------------------------------------------------------------- errors


class ErrorDetail(ApiModel):
    code: str = Field(description="machine-readable, e.g. `invalid`, `not_found`, `csrf`")
    message: str = Field(description="for people; a 400's message starts with the field")
    field: str | None = Field(
        default=None, description="the offending field, as the client spelled it"
    )
    why: TwoPersonReach | None = Field(
        default=None, description="two_person_rule refusals: the numbers behind it"
    )
    params: dict[str, str | int] | None = Field(
        default=None, description="the parts the console's wording of `code` fills in"
    )


class TwoPersonReach(ApiModel):
    """Why the two-person rule holds a real emergency: the townships one officer's
    sends reach together (empty when the rule did not apply)."""

    townships: int | None = Field(default=None, description="townships reached together")
    of: int | None = Field(default=None, description="townships in the county")
    threshold: int | None = Field(default=None, description="from how many a second officer")
    window_s: int | None = Field(default=None, description="how far back sends are added up")
    own: list[str] | None = Field(default=None, description="this request's townships")
    earlier: list[str] | None = Field(default=None, description="reached by earlier sends")
    sends: list[Any] | None = None
    schedules: list[Any] | None = None
    message: str | None = Field(default=None, description="the reason in one sentence")
    # A warning from upstream held for review (controller/warnings/intake.py).
    upstream: str | None = Field(default=None, description="the upstream message held")
    source: str | None = Field(default=None, description="the warning source")
    source_name: str | None = None
    reason: str | None = Field(default=None, description="review_mode, source_hold_level")
    identifier: str | None = None
    sender: str | None = None
    sent: str | None = None
    cap_text: str | None = Field(default=None, description="the CAP XML as received")
    village_ids: list[str] | None = None


class ErrorOut(ApiModel):
    """Every error the API answers, whatever the status."""

    error: ErrorDetail


# --------------------------------------------------------------------------- broadcasts


class ResendOut(ApiModel):
    attempt: int
    command_id: str
    at: Instant | None
    by: str
    devices: int


class Reach(ApiModel):
    targeted: int = Field(description="terminals the broadcast was sent to")
    reached: int = Field(description="terminals that answered about it at least once")
    done: int = Field(description="terminals that played it to the end")
    rate: float
    done_rate: float


class BroadcastSummary(ApiModel):
    id: str
    title: str
    text: str
    category: str
    priority: PriorityName
    level: int | None = Field(description="emergencies: 1 = I (red) ... 4 = IV (blue)")
    drill: bool
    targets: TargetsIn = Field(description="as requested")
    created_at: Instant
    created_by: str
    start_at: Instant
    expires_at: Instant
    status: BroadcastStatus
    dispatch: DispatchStatus = Field(description="whether the broker confirmed the publish")
    media_id: str
    voices: list[str]
    device_count: int
    cancelled_at: Instant | None
    cancelled_by: str | None
    target: dict[str, Any] = Field(description="the normalised target, as signed")
    attempt: int = Field(description="resends so far (0: sent once)")
    resends: list[ResendOut]
    corrects: str | None = Field(
        default=None, description="the broadcast this one corrects or updates"
    )
    approved_by: str | None = Field(
        default=None, description="the second duty officer who confirmed it"
    )


class BroadcastProgress(BroadcastSummary):
    summary: dict[DeliveryState, int] = Field(description="deliveries per state")
    settled: bool = Field(description="nothing left to wait for but offline terminals")
    reach: Reach
    resendable: int = Field(description="deliveries a resend would try again")


class TransitionOut(ApiModel):
    state: DeliveryState
    at: Instant | None = Field(description="when it happened, by the reporter's clock")
    rx: Instant | None = Field(default=None, description="when the controller learnt it")
    reason: str | None = None
    inferred: bool | None = Field(default=None, description="set by the controller")
    cause: str | None = None
    offline: bool | None = Field(
        default=None, description="the terminal played it while cut off from the broker"
    )
    late_ms: int | None = Field(default=None, description="how late the play started")
    offset_ms: int | None = Field(default=None, description="where in the audio it started")
    on_receipt: bool | None = Field(
        default=None,
        description="played on receipt: the terminal could not estimate its clock's offset",
    )
    stale: bool | None = Field(
        default=None,
        description="stored after a newer report of the terminal: history in its place by "
        "`at`, the delivery's state did not move",
    )


class DeliveryOut(ApiModel):
    device_id: str
    village_id: str
    township_id: str
    state: DeliveryState
    reason: str | None
    reason_code: str | None = Field(
        default=None, description="the reason as a code the console translates (reason.<code>)"
    )
    reason_params: dict[str, str] = Field(
        default_factory=dict, description="the varying parts of the reason (who, attempt)"
    )
    updated_at: Instant
    source: Source
    attempt: int
    transitions: list[TransitionOut]


class CorrectionRef(ApiModel):
    id: str
    title: str
    created_at: Instant


class BroadcastDetail(BroadcastProgress):
    deliveries: list[DeliveryOut] | None = Field(
        default=None,
        description="one page of them (one per terminal, by device id); left out with "
        "?deliveries=0",
    )
    deliveries_next: str | None = Field(
        default=None, description="`after` for the next page of deliveries; null at the end"
    )
    corrections: list[CorrectionRef] = Field(
        default_factory=list, description="later broadcasts that correct or update this one"
    )


class BroadcastCreated(ApiModel):
    id: str
    device_count: int
    start_at_ms: int = Field(description="epoch milliseconds: when every terminal starts")
    expires_at_ms: int
    dispatch: DispatchStatus
    drill: bool


class BroadcastPage(ApiModel):
    broadcasts: list[BroadcastSummary] = Field(description="newest first")
    limit: int
    next_before: str | None = Field(
        description="pass as ?before= for the next (older) page; null on the last page"
    )


class StagedAudio(ApiModel):
    held: int = Field(description="terminals whose latest preload report holds the audio")
    of: int = Field(description="terminals it was staged on")


class ApprovalOut(ApiModel):
    id: str
    status: Literal["pending", "approved", "rejected", "withdrawn", "expired", "failed"]
    created_at: Instant
    expires_at: Instant
    requested_by: str
    title: str
    text: str
    category: str | None
    priority: str | None
    level: int | None
    drill: bool
    targets: dict[str, Any] | None
    townships: list[str]
    device_count: int
    media_id: str
    media_url: str
    decided_by: str | None
    decided_at: Instant | None
    reason: str
    broadcast_id: str | None
    why: TwoPersonReach | None = None
    staged: StagedAudio | None = Field(
        default=None,
        description="while pending: terminals holding its audio, staged while it waits",
    )


class PendingApproval(ApiModel):
    """202: a real emergency at a two-person level waits for a second duty officer."""

    status: Literal["pending_approval"]
    approval_id: str
    message: str | None = Field(default=None, description="why it waits, in one sentence")
    why: TwoPersonReach | None = None
    approval: ApprovalOut


class ApprovalList(ApiModel):
    approvals: list[ApprovalOut]


class ApprovedBroadcast(BroadcastSummary):
    approval: ApprovalOut


class PreviewOut(ApiModel):
    media_id: str
    url: str
    mime: str
    size: int
    duration_ms: int
    voices: list[str]
    text: str | None
    spoken: str | None = Field(
        default=None, description="the words as the villages hear them, drill framing included"
    )
    title: str
    category: str | None
    priority: PriorityName | None
    level: int | None
    drill: bool
    languages: list[str]
    repeat: int | None
    template: str | None


# --------------------------------------------------------------------------- devices


class DeviceOut(ApiModel):
    id: str
    name: str
    village_id: str
    township_id: str
    resource_code: str | None = Field(
        default=None, description="18 digits: type, subtype, 12-digit area, extension"
    )
    online: bool
    last_seen: Instant | None
    status_changed_at: Instant | None
    firmware: str | None
    volume: int | None
    playing: str | None = Field(description="the broadcast it plays now")
    faults: dict[str, Instant | None] = Field(description="fault name -> since when")
    telemetry: dict[str, Any] | None = Field(description="as the terminal last sent it")


class DeviceList(ApiModel):
    devices: list[DeviceOut]
    online: int
    total: int


class TelemetrySampleOut(ApiModel):
    """One sample: `at` and the telemetry fields as the terminal sent them."""

    # Open by design: the fields are the terminal's (dalaba.protocol.Telemetry).
    model_config = ConfigDict(extra="allow", json_schema_extra={"x-open": True})

    at: Instant


class TelemetryList(ApiModel):
    samples: list[TelemetrySampleOut] = Field(description="oldest first")


class DeviceDeliveryOut(ApiModel):
    broadcast_id: str
    title: str
    category: str
    priority: PriorityName
    level: int | None
    drill: bool
    created_at: Instant
    state: DeliveryState
    reason: str | None
    reason_code: str | None = Field(
        default=None, description="the reason as a code the console translates (reason.<code>)"
    )
    reason_params: dict[str, str] = Field(
        default_factory=dict, description="the varying parts of the reason (who, attempt)"
    )
    updated_at: Instant
    states: list[DeliveryState] = Field(description="every state it went through, in order")


class DeviceDeliveries(ApiModel):
    deliveries: list[DeviceDeliveryOut] = Field(description="newest broadcast first")


class VolumeSent(ApiModel):
    command_id: str
    published: bool
    normal_volume: int | None = None
    emergency_volume: int | None = None


class TestToneCreated(ApiModel):
    id: str = Field(description="the broadcast carrying the tone")
    device_id: str
    media_id: str
    delivery_state: DeliveryState | None = Field(
        default=None,
        description="`offline`: queued by the broker, plays only if the terminal returns "
        "before `expires_in_s`; `sent`: on its way, the terminal reports what happens",
    )
    expires_in_s: int | None = None


class LocalScheduleOut(ApiModel):
    device_id: str
    pushed_at: Instant | None
    version: int | None = None
    items: list[dict[str, Any]] | None = None
    bytes: int | None = None
    dropped: Any = None
    horizon_until: Instant | None = None
    published: bool | None = None


# --------------------------------------------------------------------------- county


class TownshipOut(ApiModel):
    id: str
    name: str
    name_en: str
    code: str | None = Field(default=None, description="9-digit administrative code")
    lat: float
    lon: float
    quiet_start: str | None
    quiet_end: str | None


class TownshipList(ApiModel):
    townships: list[TownshipOut]


class VillageOut(ApiModel):
    id: str
    township_id: str
    name: str
    code: str | None = Field(default=None, description="12-digit administrative code")
    lat: float
    lon: float
    device_count: int


class VillageList(ApiModel):
    villages: list[VillageOut]


class GroupOut(ApiModel):
    id: int | None
    name: str
    description: str
    township_id: str | None = Field(description="null: a county-wide group")
    villages: list[str]
    townships: list[str]
    created_by: str
    updated_at: Instant


class GroupList(ApiModel):
    groups: list[GroupOut]


class Deleted(ApiModel):
    deleted: bool | str = Field(description="true, or the id of what was deleted")


# --------------------------------------------------------------------------- schedules


class ScheduleOut(ApiModel):
    id: str
    name: str
    status: Literal["active", "paused", "deleted"]
    version: int
    recurrence: dict[str, Any]
    township_ids: list[str]
    text: str
    media_id: str
    voices: list[str]
    template: str | None
    params: dict[str, Any]
    title: str
    category: str
    priority: PriorityName
    level: int | None
    drill: bool
    languages: list[str]
    repeat: int | None
    targets: TargetsIn
    expires_in_s: int
    misfire_grace_s: int
    created_at: Instant
    created_by: str
    updated_at: Instant
    updated_by: str
    editable: bool = Field(description="whether the caller may change it")
    next: list[Instant] = Field(description="the next few fire times")
    occurrences: dict[str, int] | None = Field(
        default=None, description="occurrences per outcome (single schedule only)"
    )


class ScheduleList(ApiModel):
    schedules: list[ScheduleOut]


class NextItem(ApiModel):
    at: Instant
    local: str
    occurrence_id: str
    outcome: str
    plays: bool = Field(description="false when quiet hours silence it everywhere")
    suppressed: list[str] = Field(description="where quiet hours keep it silent")


class NextOut(ApiModel):
    schedule_id: str
    status: str
    next: list[NextItem]


class OccurrenceOut(ApiModel):
    id: str
    schedule_id: str
    due_at: Instant
    local: str
    expires_at: Instant | None
    outcome: str
    reason: str | None
    reason_code: str | None = Field(default=None, description="the reason as a code")
    reason_params: dict[str, str] = Field(default_factory=dict)
    suppressed: dict[str, Any]
    broadcast_id: str | None
    device_count: int | None
    schedule_version: int | None
    fired_at: Instant | None
    start_at: Instant | None
    late_ms: int | None
    dispatch: str | None
    deliveries: dict[str, int]


class OccurrenceList(ApiModel):
    schedule_id: str
    occurrences: list[OccurrenceOut] = Field(description="newest first")


class QuietHoursOut(ApiModel):
    township_id: str
    start: str | None = Field(description="HH:MM local; null: no quiet hours")
    end: str | None


class QuietHoursSpan(ApiModel):
    start: str | None
    end: str | None


class TimelineEntry(ApiModel):
    occurrence_id: str
    at: Instant
    local_time: str
    end_at: Instant
    duration_ms: int
    schedule_id: str
    schedule_name: str
    schedule_status: str
    title: str
    category: str
    priority: PriorityName
    level: int | None
    drill: bool
    rank: int
    outcome: str
    reason: str | None
    reason_code: str | None = Field(default=None, description="the reason as a code")
    reason_params: dict[str, str] = Field(default_factory=dict)
    fired_at: Instant | None = None
    start_at: Instant | None = None
    deliveries: dict[str, int] | None = None
    conflicts_with: list[str]


class TimelineOut(ApiModel):
    township_id: str
    date: str
    timezone: str
    quiet_hours: QuietHoursSpan | None
    entries: list[TimelineEntry]


# --------------------------------------------------------------------------- templates


class PlaceholderOut(ApiModel):
    name: str
    label: str
    required: bool
    default: str | None
    example: str | None


class TemplateOut(ApiModel):
    id: str
    name: str
    category: str
    body: str
    placeholders: list[PlaceholderOut]
    priority: PriorityName
    level: int | None
    languages: list[str]
    repeat: int | None
    version: int
    builtin: bool
    disabled: bool
    needs_params: list[str] = Field(description="placeholders a broadcast must fill")
    created_at: Instant
    updated_at: Instant
    updated_by: str


class TemplateList(ApiModel):
    templates: list[TemplateOut]


# --------------------------------------------------------------------------- records


class BroadcastRecord(BroadcastSummary):
    outcomes: dict[str, int] = Field(description="deliveries per state, in the caller's reach")
    townships: list[str]


class BroadcastRecordPage(ApiModel):
    broadcasts: list[BroadcastRecord]
    total: int
    limit: int
    offset: int


class AuditEntryOut(ApiModel):
    id: int
    at: Instant
    actor: str
    role: str
    action: str
    target: str
    detail: dict[str, Any]


class AuditPage(ApiModel):
    entries: list[AuditEntryOut] = Field(description="newest first")
    total: int
    limit: int
    offset: int


class SecurityEventOut(ApiModel):
    id: int
    at: Instant
    device_id: str
    kind: str
    reason: str | None
    command_id: str | None
    broadcast_id: str | None
    known_command: bool
    detail: dict[str, Any]


class SecurityEventList(ApiModel):
    events: list[SecurityEventOut] = Field(description="newest first")
    limit: int
    next_before: int | None = Field(description="pass as ?before= for older events")


class HealthOut(ApiModel):
    status: Literal["ok", "degraded"]
    broker_connected: bool


class TimeOut(ApiModel):
    v: int = Field(description="protocol version")
    now_ms: int = Field(description="the controller's clock when it answered, epoch ms")


class EnrolCodeOut(ApiModel):
    device_id: str
    code: str = Field(description="shown once: only its hash is kept")
    expires_at: Instant


class RevokedOut(ApiModel):
    device_id: str
    revoked_at: Instant


class EnrolledOut(ApiModel):
    device_id: str
    village_id: str
    township_id: str
    broker_url: str
    mqtt_username: str
    mqtt_password: str = Field(description="new; any earlier password stops working")
    broker_ca_pem: str | None = Field(description="the CA of an mqtts:// broker, if private")
    media_base_url: str
    controller_public_keys: list[str]


class PronunciationsOut(ApiModel):
    custom: dict[str, str] = Field(description="the county's entries: written -> spoken")
    builtin: dict[str, str]
    applies_to: list[str] = Field(description="the languages the dictionary is used for")


class PronunciationsIn(BaseModel):
    """PUT /api/pronunciations (checked entry by entry by controller.pronunciations)."""

    entries: dict[str, str] = Field(description="written form -> spoken form")


# --------------------------------------------------------------------------- upstream


class IntakeOutcomeOut(ApiModel):
    """What became of a warning (controller/warnings/intake.py)."""

    message_id: str = Field(description="the stored message: /api/upstream/messages/{id}")
    outcome: Literal[
        "played", "review", "recorded", "refused", "no_area", "cancelled", "duplicate", "failed"
    ]
    reason: str = Field(description="machine code: sent, review_mode, test, no_area, ...")
    message: str = Field(description="the reason in one sentence (English)")
    broadcast_id: str | None
    approval_id: str | None = Field(description="the request held for review, if any")
    villages: int = Field(description="villages the warning's area covers")
    cancelled: list[str] = Field(description="broadcasts (and held requests) it cancelled")


class UpstreamMessageOut(ApiModel):
    id: str
    source_id: str
    source_name: str
    protocol: Literal["cap", "ebm"]
    received_at: Instant
    identifier: str
    sender: str
    sent: str = Field(description="as the sender wrote it")
    msg_type: Literal["alert", "update", "cancel", "ack", "error"]
    status: Literal["actual", "exercise", "test", "system", "draft"]
    mode: Literal["automatic", "review"]
    outcome: str
    reason: str
    headline: str
    level: int | None
    priority: str | None
    drill: bool
    villages: int
    references: list[str]
    cancelled: list[str]
    broadcast_id: str | None = Field(description="also once an officer released it")
    approval_id: str | None
    approval_status: str | None
    expires_at: Instant | None


class UpstreamMessageList(ApiModel):
    messages: list[UpstreamMessageOut] = Field(description="newest first")


class UpstreamMessageDetail(UpstreamMessageOut):
    content_type: str
    raw: str = Field(description="the message as received (UTF-8)")
    text: str = Field(description="what is (or would be) spoken")
    village_ids: list[str]
    detail: dict[str, Any]
    starts_at: Instant | None


class UpstreamSourceOut(ApiModel):
    id: str = Field(description="also the name of its user (role upstream)")
    name: str
    mode: Literal["automatic", "review"]
    hold_levels: list[int] = Field(description="levels held for an officer in automatic mode")
    signature_required: bool
    enabled: bool
    created_at: Instant
    updated_at: Instant


class UpstreamSourceCreated(UpstreamSourceOut):
    token: str = Field(description="the source's API token, shown this once")


class UpstreamSourceList(ApiModel):
    sources: list[UpstreamSourceOut]
