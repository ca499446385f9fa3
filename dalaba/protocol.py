"""The wire contract between the controller and the terminals: written once, here.

Topic builders, payload models, the signed command envelope and the protocol version
live in this module; the controller, the edge agent and the simulator import it, and no
topic string or payload key is spelled anywhere else. `docs/protocol.md` describes the
same contract for people.

Version rules: `PROTOCOL_VERSION` is in every topic (`dalaba/v1/...`) and every
payload (`v`). Within a major version, fields are only ever added, as optional, and
receivers ignore fields they do not know, so an old terminal keeps working with a newer
controller. A change that an old receiver would misread gets a new topic root
(`dalaba/v2/...`), and the controller publishes both while terminals migrate.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import time
import uuid
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dalaba.signing import Signer, VerifierSet

PROTOCOL_VERSION = 1

M = TypeVar("M", bound=BaseModel)
TOPIC_ROOT = f"dalaba/v{PROTOCOL_VERSION}"

# Commands are small (the audio is fetched, not inlined); anything bigger is hostile or
# broken and is dropped before it is parsed.
MAX_COMMAND_BYTES = 192 * 1024  # a terminal's 48-hour schedule fits with room to spare
MAX_REPORT_BYTES = 16 * 1024

# A terminal accepts commands issued up to this far in its future, to absorb clock skew
# between the controller and an NTP-synchronised terminal.
CLOCK_SKEW_TOLERANCE_MS = 30_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# Bounds for what terminals send. A report is parsed before anything is stored, so a
# number or string outside these bounds (a hostile or broken terminal's `2**70`) is
# dropped at the door instead of failing the database write that carries everyone
# else's reports with it.
MAX_EPOCH_MS = 2**53  # also the largest integer every JSON reader keeps exactly
MAX_COUNTER = 2**53
Epoch = Annotated[int, Field(ge=0, le=MAX_EPOCH_MS)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNTER)]
SignedMs = Annotated[int, Field(ge=-MAX_EPOCH_MS, le=MAX_EPOCH_MS)]
Percent = Annotated[int, Field(ge=0, le=100)]
WireId = Annotated[str, Field(min_length=1, max_length=64)]
ShortText = Annotated[str, Field(max_length=500)]
MAX_DETAIL_BYTES = 4096


# --------------------------------------------------------------------------- topics


class Topics:
    """Every topic in the system. Ids are validated so they cannot smuggle wildcards."""

    COMMAND_ALL = f"{TOPIC_ROOT}/cmd/all"
    # What the controller subscribes to; `+` is the device id.
    ALL_DEVICE_STATUS = f"{TOPIC_ROOT}/device/+/status"
    ALL_DEVICE_ACKS = f"{TOPIC_ROOT}/device/+/ack"
    ALL_DEVICE_TELEMETRY = f"{TOPIC_ROOT}/device/+/telemetry"
    ALL_DEVICE_EVENTS = f"{TOPIC_ROOT}/device/+/event"
    ALL_COMMANDS = f"{TOPIC_ROOT}/cmd/#"
    # Controller replicas share their report subscriptions in this MQTT 5 group: the
    # broker hands each report to one member only, so it is stored once.
    CONTROLLER_SHARE_GROUP = "dalaba-controllers"

    @staticmethod
    def shared(topic_filter: str, group: str) -> str:
        """An MQTT 5 shared subscription (`$share/<group>/<filter>`) of `topic_filter`."""
        return f"$share/{check_id(group)}/{topic_filter}"

    @staticmethod
    def command_township(township_id: str) -> str:
        return f"{TOPIC_ROOT}/cmd/township/{check_id(township_id)}"

    @staticmethod
    def command_village(village_id: str) -> str:
        return f"{TOPIC_ROOT}/cmd/village/{check_id(village_id)}"

    @staticmethod
    def command_device(device_id: str) -> str:
        return f"{TOPIC_ROOT}/cmd/device/{check_id(device_id)}"

    @staticmethod
    def device_status(device_id: str) -> str:
        return f"{TOPIC_ROOT}/device/{check_id(device_id)}/status"

    @staticmethod
    def device_ack(device_id: str) -> str:
        return f"{TOPIC_ROOT}/device/{check_id(device_id)}/ack"

    @staticmethod
    def device_telemetry(device_id: str) -> str:
        return f"{TOPIC_ROOT}/device/{check_id(device_id)}/telemetry"

    @staticmethod
    def device_event(device_id: str) -> str:
        return f"{TOPIC_ROOT}/device/{check_id(device_id)}/event"

    @staticmethod
    def subscriptions_for(device_id: str, village_id: str, township_id: str) -> list[str]:
        """The command topics one terminal listens on: county, its township, village, itself."""
        return [
            Topics.COMMAND_ALL,
            Topics.command_township(township_id),
            Topics.command_village(village_id),
            Topics.command_device(device_id),
        ]

    # ACL patterns for the broker (Mosquitto's `%u` is the client's username, which is
    # its device id): built here so no other module spells a topic.
    ACL_ALL = f"{TOPIC_ROOT}/#"
    DEVICE_REPORT_KINDS = ("status", "ack", "telemetry", "event")

    @staticmethod
    def acl_device_writes() -> list[str]:
        """What any terminal may publish: its own report topics."""
        return [f"{TOPIC_ROOT}/device/%u/{kind}" for kind in Topics.DEVICE_REPORT_KINDS]

    @staticmethod
    def acl_device_reads() -> list[str]:
        """What any terminal may read regardless of place: its own and the county's."""
        return [f"{TOPIC_ROOT}/cmd/device/%u", Topics.COMMAND_ALL]

    @staticmethod
    def parse_device_topic(topic: str) -> tuple[str, str] | None:
        """`dalaba/v1/device/<id>/<kind>` -> (id, kind), or None for anything else."""
        parts = topic.split("/")
        if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or parts[2] != "device":
            return None
        return parts[3], parts[4]


_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def check_id(value: str) -> str:
    """Ids go into topics and file names: letters, digits, `-_.`, at most 64 long."""
    if not value or len(value) > 64 or not set(value) <= _ID_CHARS or value.startswith("."):
        raise ValueError(f"invalid id {value!r}: use 1-64 of a-z A-Z 0-9 - _ .")
    return value


# --------------------------------------------------------------------------- enums


class Priority(enum.StrEnum):
    EMERGENCY = "emergency"
    PAGING = "paging"
    NOTICE = "notice"
    ROUTINE = "routine"


def priority_rank(priority: Priority | str, level: int | None = None) -> int:
    """Higher outranks lower: emergency I > II > III > IV > live paging > notice > routine."""
    p = Priority(priority)
    if p is Priority.EMERGENCY:
        return 100 - (level or 4)  # level I = 99 ... level IV = 96
    return {Priority.PAGING: 50, Priority.NOTICE: 20, Priority.ROUTINE: 10}[p]


class DeliveryState(enum.StrEnum):
    """Where one broadcast stands on one terminal. Terminals report the states from
    `received` on; the controller alone uses `scheduled`, `sent`, `offline` and
    `unknown`. Who may cause which change is `controller/deliveries.py`'s table."""

    SCHEDULED = "scheduled"  # controller-side only: a coming occurrence of a schedule
    SENT = "sent"  # controller-side only: published, nothing heard back yet
    OFFLINE = "offline"  # controller-side only: published to a terminal that is offline
    RECEIVED = "received"
    FETCHED = "fetched"
    PLAYING = "playing"
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"
    PREEMPTED = "preempted"  # interrupted; may return to playing when replayed
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    # controller-side only: was playing, and its audio ended long ago without a word
    # from the terminal. Not `done`: nobody knows whether it finished.
    UNKNOWN = "unknown"

    @property
    def final(self) -> bool:
        return self in _FINAL_STATES


_FINAL_STATES = frozenset(
    {
        DeliveryState.DONE,
        DeliveryState.FAILED,
        DeliveryState.REJECTED,
        DeliveryState.EXPIRED,
        DeliveryState.CANCELLED,
        DeliveryState.UNKNOWN,
    }
)

# Reasons a terminal gives with `failed` that the controller and console recognise.
FAIL_INTERRUPTED = "interrupted"  # the play was cut by a crash or power loss


class RejectReason(enum.StrEnum):
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REPLAYED = "replayed"
    NOT_ADDRESSED = "not_addressed"  # a genuine command re-published onto another's topic
    MALFORMED = "malformed"
    OVERSIZED = "oversized"
    UNSUPPORTED_VERSION = "unsupported_version"


class EventKind(enum.StrEnum):
    COMMAND_REJECTED = "command_rejected"
    FAULT_RAISED = "fault_raised"
    FAULT_CLEARED = "fault_cleared"
    PLAYED_OFFLINE = "played_offline"  # a scheduled item played from the local schedule
    SCHEDULE_APPLIED = "schedule_applied"
    CONFIG_APPLIED = "config_applied"
    PRELOADED = "preloaded"


class Fault(enum.StrEnum):
    AMPLIFIER = "amplifier"
    SPEAKER_LINE = "speaker_line"
    ON_BATTERY = "on_battery"
    CLOCK = "clock"
    NETWORK = "network"


# --------------------------------------------------------------------------- payloads


class _Payload(BaseModel):
    # Unknown fields are ignored (forward compatibility within a major version);
    # payload objects are immutable once validated.
    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class Target(_Payload):
    """Who a command is for. Signed with the command, so a genuine command republished
    on another village's topic is refused by that village's terminals."""

    all: bool = False
    townships: tuple[str, ...] = ()
    villages: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()

    def covers(self, device_id: str, village_id: str, township_id: str) -> bool:
        return (
            self.all
            or township_id in self.townships
            or village_id in self.villages
            or device_id in self.devices
        )


class MediaRef(_Payload):
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    url: str  # absolute http(s) URL, or a path relative to the terminal's media base URL
    size: Annotated[int, Field(ge=0)]
    duration_ms: Annotated[int, Field(ge=0)]
    mime: str = "audio/ogg"
    # Other places to fetch the same bytes from (a mirror, another controller replica),
    # tried in turn when `url` fails; the hash is checked whichever served it.
    mirrors: Annotated[tuple[str, ...], Field(max_length=4)] = ()


class PlayBody(_Payload):
    kind: Literal["play"] = "play"
    broadcast_id: str
    priority: Priority
    level: Annotated[int, Field(ge=1, le=4)] | None = None
    category: str
    drill: bool = False
    title: str = ""
    media: MediaRef
    start_at: int  # epoch ms: terminals holding the audio start at this instant together
    volume: Annotated[int, Field(ge=0, le=100)] | None = None  # forced (emergencies)
    # 0 for the first send; n for the n-th resend of the same broadcast to the terminals
    # it did not reach. A terminal that has not played the broadcast accepts a higher
    # attempt even though it has seen (and claimed) the broadcast id before.
    attempt: Annotated[int, Field(ge=0, le=100)] = 0
    resend_of: str | None = None  # the first command's id, for a resend

    @model_validator(mode="after")
    def _level_only_for_emergencies(self) -> PlayBody:
        if (self.priority is Priority.EMERGENCY) != (self.level is not None):
            raise ValueError("level: required for emergencies and only for them")
        return self

    @property
    def rank(self) -> int:
        return priority_rank(self.priority, self.level)


class CancelBody(_Payload):
    kind: Literal["cancel"] = "cancel"
    broadcast_id: str
    reason: str = ""


class PreloadBody(_Payload):
    """Audio to fetch and keep ahead of need (pre-positioned emergency templates), so
    an emergency that uses one plays without any download."""

    kind: Literal["preload"] = "preload"
    media: tuple[MediaRef, ...]
    purpose: str = "emergency_templates"


class ScheduledItem(_Payload):
    """One coming occurrence of a township schedule, for the terminal to play from its
    own clock if the controller or broker is unreachable when it is due."""

    occurrence_id: str  # also the broadcast id the controller uses if it is online
    schedule_id: str
    priority: Priority
    level: Annotated[int, Field(ge=1, le=4)] | None = None
    category: str
    title: str = ""
    drill: bool = False
    media: MediaRef
    start_at: int
    expires_at: int
    volume: Annotated[int, Field(ge=0, le=100)] | None = None

    @model_validator(mode="after")
    def _level_only_for_emergencies(self) -> ScheduledItem:
        if (self.priority is Priority.EMERGENCY) != (self.level is not None):
            raise ValueError("level: required for emergencies and only for them")
        return self

    def play_body(self) -> PlayBody:
        """The same occurrence as the controller's play command would carry it."""
        return PlayBody(
            broadcast_id=self.occurrence_id,
            priority=self.priority,
            level=self.level,
            category=self.category,
            drill=self.drill,
            title=self.title,
            media=self.media,
            start_at=self.start_at,
            volume=self.volume,
        )


class ScheduleBody(_Payload):
    """A terminal's whole local schedule up to `horizon_until`; replaces the previous
    one. `version` only grows: a terminal keeps the newest it has seen."""

    kind: Literal["schedule"] = "schedule"
    version: int
    horizon_until: int  # epoch ms
    items: tuple[ScheduledItem, ...]


class ConfigBody(_Payload):
    """Settings a technician changes remotely; fields left out stay as they are."""

    kind: Literal["config"] = "config"
    normal_volume: Annotated[int, Field(ge=0, le=100)] | None = None
    emergency_volume: Annotated[int, Field(ge=0, le=100)] | None = None
    telemetry_interval_s: Annotated[float, Field(ge=5, le=3600)] | None = None


CommandBody = Annotated[
    PlayBody | CancelBody | PreloadBody | ScheduleBody | ConfigBody,
    Field(discriminator="kind"),
]


class Command(_Payload):
    v: int = PROTOCOL_VERSION
    id: str  # unique per command; terminals remember it until it expires
    issued_at: int  # epoch ms
    expires_at: int  # epoch ms; never played or obeyed after this
    target: Target
    body: CommandBody

    @classmethod
    def new(
        cls,
        body: PlayBody | CancelBody | PreloadBody | ScheduleBody | ConfigBody,
        target: Target,
        expires_at: int,
    ) -> Command:
        return cls(
            id=uuid.uuid4().hex, issued_at=now_ms(), expires_at=expires_at, target=target, body=body
        )


class SignedEnvelope(_Payload):
    v: int = PROTOCOL_VERSION
    alg: str
    kid: str
    payload: str  # base64 of the exact Command JSON bytes that were signed
    sig: str  # base64
    # Serial (upper-case hex) of the certificate that vouches for the signing key, when
    # the key has one (the national standards name the signer by it). Not signed, so it
    # names, never proves: the terminal trusts the key by `kid` alone.
    cert_sn: Annotated[str, Field(max_length=128)] | None = None


class DeviceStatus(_Payload):
    """Retained on the device's status topic; the broker publishes the offline form as
    the device's last will when its connection dies."""

    v: int = PROTOCOL_VERSION
    device_id: WireId
    online: bool
    at: Epoch
    firmware: Annotated[str, Field(max_length=100)] | None = None
    village_id: WireId | None = None
    township_id: WireId | None = None


class DeliveryReport(_Payload):
    v: int = PROTOCOL_VERSION
    device_id: WireId
    broadcast_id: WireId
    command_id: WireId
    state: DeliveryState
    at: Epoch  # the terminal's clock, epoch ms
    seq: Annotated[int, Field(ge=0, le=2**63 - 1)]  # per terminal, increasing
    reason: ShortText | None = None
    offline: bool = False  # happened while the terminal could not reach the controller
    # `playing` that started after the signed start instant (a late fetch): by how much.
    late_ms: Count | None = None
    # `failed`/`preempted`/`cancelled` mid-play: how far into the audio it got.
    offset_ms: Count | None = None
    attempt: Annotated[int, Field(ge=0, le=100)] = 0  # the PlayBody.attempt it answers


class DeviceEvent(_Payload):
    v: int = PROTOCOL_VERSION
    device_id: WireId
    kind: EventKind
    at: Epoch
    reason: ShortText | None = None
    command_id: WireId | None = None
    broadcast_id: WireId | None = None
    detail: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _small_plain_detail(self) -> DeviceEvent:
        if len(json.dumps(self.detail)) > MAX_DETAIL_BYTES:
            raise ValueError(f"detail: larger than {MAX_DETAIL_BYTES} bytes")
        _check_json_numbers(self.detail)
        return self


def _check_json_numbers(value: Any) -> None:
    """Integers a database JSON column and every JSON reader keep exactly."""
    if isinstance(value, bool):
        return
    if isinstance(value, int) and abs(value) > MAX_COUNTER:
        raise ValueError("detail: number out of range")
    if isinstance(value, dict):
        for item in value.values():
            _check_json_numbers(item)
    elif isinstance(value, list):
        for item in value:
            _check_json_numbers(item)


class Telemetry(_Payload):
    v: int = PROTOCOL_VERSION
    device_id: WireId
    at: Epoch
    firmware: Annotated[str, Field(max_length=100)]
    uptime_s: Count
    amplifier_on: bool
    amplifier_ok: bool
    speaker_line_ok: bool
    power_source: Literal["mains", "battery"]
    battery_pct: Percent | None = None
    temperature_c: Annotated[float, Field(ge=-100, le=200, allow_inf_nan=False)]
    signal_dbm: Annotated[int, Field(ge=-200, le=50)]
    volume: Percent
    playing: WireId | None = None  # broadcast id
    cache_bytes: Count
    cache_items: Count
    clock_offset_ms: SignedMs | None = None  # terminal clock minus controller clock
    faults: Annotated[tuple[Fault, ...], Field(max_length=16)] = ()
    dropped_messages: Count = 0  # malformed/oversized/unsigned payloads dropped so far
    schedule_version: Count = 0  # the local schedule held (0: none, e.g. wiped storage)
    # How often this terminal sends telemetry: the controller calls it offline after
    # three intervals of silence, even if the broker never delivered its last will.
    interval_s: Annotated[float, Field(ge=1, le=86_400)] | None = None
    outbox: Count = 0  # reports waiting on flash to be sent


# --------------------------------------------------------------------------- errors


class ProtocolError(ValueError):
    """A payload that does not follow this contract. Counted and dropped, never raised
    past the message handler."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class CommandRejected(ProtocolError):
    """A well-formed envelope that must not be obeyed; the terminal reports it."""

    def __init__(self, reason: RejectReason, detail: str, command: Command | None = None) -> None:
        super().__init__(reason, detail)
        self.command = command


# --------------------------------------------------------------------------- envelope


def seal(command: Command, signer: Signer) -> bytes:
    """Sign a command and wrap it in the envelope published on a command topic."""
    data = command.to_bytes()
    envelope = SignedEnvelope(
        alg=signer.alg,
        kid=signer.kid,
        payload=base64.b64encode(data).decode(),
        sig=base64.b64encode(signer.sign(data)).decode(),
        cert_sn=signer.cert_sn,
    )
    return envelope.to_bytes()


def open_envelope(raw: bytes, verifiers: VerifierSet, at_ms: int) -> Command:
    """Check size, shape, signature and validity window; return the command.

    Replay (an id seen before) and addressing are the terminal's checks, because they
    need its memory and identity. Raises `ProtocolError` for garbage and
    `CommandRejected` for a well-formed command that must not be obeyed.
    """
    if len(raw) > MAX_COMMAND_BYTES:
        raise ProtocolError(RejectReason.OVERSIZED, f"{len(raw)} bytes > {MAX_COMMAND_BYTES}")
    envelope = parse(SignedEnvelope, raw)
    if envelope.v != PROTOCOL_VERSION:
        raise ProtocolError(RejectReason.UNSUPPORTED_VERSION, f"envelope v{envelope.v}")
    try:
        data = base64.b64decode(envelope.payload, validate=True)
        signature = base64.b64decode(envelope.sig, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(RejectReason.MALFORMED, f"base64: {exc}") from None
    if not verifiers.verify(envelope.alg, envelope.kid, data, signature):
        # Parse what we can so the report names the command a forger claimed to send.
        claimed = _try_parse_command(data)
        raise CommandRejected(
            RejectReason.BAD_SIGNATURE, f"signature check failed (alg={envelope.alg})", claimed
        )
    command = parse(Command, data)
    if command.expires_at <= at_ms:
        raise CommandRejected(
            RejectReason.EXPIRED, f"expired {at_ms - command.expires_at} ms ago", command
        )
    if command.issued_at > at_ms + CLOCK_SKEW_TOLERANCE_MS:
        raise CommandRejected(
            RejectReason.NOT_YET_VALID, f"issued {command.issued_at - at_ms} ms ahead", command
        )
    return command


def _try_parse_command(data: bytes) -> Command | None:
    try:
        return parse(Command, data)
    except ProtocolError:
        return None


def parse(model: type[M], raw: bytes | str) -> M:
    """Validate JSON bytes into a payload model, or raise a `ProtocolError`."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        raise ProtocolError(RejectReason.MALFORMED, f"{where}: {first.get('msg')}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(RejectReason.MALFORMED, str(exc)) from None


def parse_report(kind: str, raw: bytes) -> DeviceStatus | DeliveryReport | DeviceEvent | Telemetry:
    """Parse what a device published on `dalaba/v1/device/<id>/<kind>`."""
    if len(raw) > MAX_REPORT_BYTES:
        raise ProtocolError(RejectReason.OVERSIZED, f"{len(raw)} bytes > {MAX_REPORT_BYTES}")
    model = _REPORT_MODELS.get(kind)
    if model is None:
        raise ProtocolError(RejectReason.MALFORMED, f"unknown device topic kind {kind!r}")
    return parse(model, raw)


_REPORT_MODELS: dict[str, type[DeviceStatus | DeliveryReport | DeviceEvent | Telemetry]] = {
    "status": DeviceStatus,
    "ack": DeliveryReport,
    "event": DeviceEvent,
    "telemetry": Telemetry,
}


# MQTT properties the contract fixes (see docs/protocol.md).
COMMAND_QOS = 1
REPORT_QOS = 1
TELEMETRY_QOS = 0
DEVICE_SESSION_EXPIRY_S = 7 * 24 * 3600  # keeps queued commands for a week-long outage
CONTROLLER_SESSION_EXPIRY_S = 24 * 3600
