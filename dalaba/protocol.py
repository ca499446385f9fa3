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
import hashlib
import json
import struct
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dalaba.signing import Signer, VerifierSet

PROTOCOL_VERSION = 1

M = TypeVar("M", bound=BaseModel)
TOPIC_ROOT = f"dalaba/v{PROTOCOL_VERSION}"

# Commands are small (the audio is fetched, or inlined only when it is short); anything
# bigger is hostile or broken and is dropped before it is parsed.
MAX_COMMAND_BYTES = 192 * 1024  # a terminal's 48-hour schedule fits with room to spare
MAX_REPORT_BYTES = 16 * 1024
# Audio carried inline in a play command (`MediaRef.inline`): the command JSON holds it
# base64-encoded and the envelope base64-encodes that JSON again, so N bytes of audio
# take about 16/9 N on the wire; at this bound the envelope stays under
# MAX_COMMAND_BYTES, which older terminals enforce too.
MAX_INLINE_MEDIA_BYTES = 96 * 1024
MAX_INLINE_B64_CHARS = 4 * ((MAX_INLINE_MEDIA_BYTES + 2) // 3)

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
    def live(broadcast_id: str) -> str:
        """One live paging session's audio frames (QoS 0, signed frame by frame)."""
        return f"{TOPIC_ROOT}/live/{check_id(broadcast_id)}"

    @staticmethod
    def parse_live_topic(topic: str) -> str | None:
        """`dalaba/v1/live/<broadcast id>` -> the id, or None for anything else."""
        prefix = f"{TOPIC_ROOT}/live/"
        if not topic.startswith(prefix):
            return None
        broadcast_id = topic[len(prefix) :]
        return broadcast_id if broadcast_id and "/" not in broadcast_id else None

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
        # Any live session's frames: a terminal subscribes to the one its signed start
        # command names, and plays only frames signed by that command's session key.
        return [f"{TOPIC_ROOT}/cmd/device/%u", Topics.COMMAND_ALL, f"{TOPIC_ROOT}/live/+"]

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
    # Played to its end, but the output monitor found no sound on the speaker line for
    # part or all of it (amplifier or line failed mid-play). Not `done`: people did not
    # hear it all. `silent_ms` says how much.
    SILENT = "silent"

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
        DeliveryState.SILENT,
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
    UPDATE_STATE = "update_state"  # an agent update moved (detail: UpdateProgress)
    CALL = "call"  # a phone call to the terminal's modem: detail says caller and outcome


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
    # Short audio carried in the signed command itself (base64 of the file's bytes), so
    # every terminal holds it the moment it holds the command and no fetch lead is
    # needed. Covered by the envelope's signature; the terminal still checks the bytes
    # against `sha256` before it stores or plays them, and refuses the play if they do
    # not match. An older terminal ignores the field and fetches `url` as before.
    inline: Annotated[str, Field(max_length=MAX_INLINE_B64_CHARS)] | None = None


class LiveStream(_Payload):
    """Live paging: after the media (the paging chime) the terminal plays the frames
    published on `Topics.live(broadcast_id)`, each signed with this session's own
    Ed25519 key. The key arrives inside the signed command, so only the controller
    that signed the command can speak through it (see `open_live_frame`)."""

    session_key: Annotated[str, Field(min_length=40, max_length=48)]  # base64, 32 bytes raw
    codec: Literal["pcmu"] = "pcmu"  # G.711 mu-law
    sample_rate: Literal[16000] = 16000
    frame_ms: Annotated[int, Field(ge=10, le=120)] = 40
    # A frame stamped `t` (controller clock, epoch ms) sounds at `t + playout_delay_ms`
    # on every terminal's clock: the jitter buffer's depth, and what keeps poles in step.
    playout_delay_ms: Annotated[int, Field(ge=50, le=5000)] = 500
    # No frame for this long: the session is lost here; silence until then.
    loss_timeout_ms: Annotated[int, Field(ge=500, le=60_000)] = 5000

    def public_key(self) -> Ed25519PublicKey:
        try:
            raw = base64.b64decode(self.session_key, validate=True)
            return Ed25519PublicKey.from_public_bytes(raw)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(RejectReason.MALFORMED, f"live.session_key: {exc}") from None


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
    # Live paging: `media` is the chime, then the session's frames (older terminals
    # that ignore the field play the chime alone).
    live: LiveStream | None = None

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
    # False: fetch and verify into the cache but do not keep it pinned: audio staged for
    # a real emergency that waits for a second officer and may never be sent, evicted
    # like any unpinned entry if it is not. Older terminals ignore the field and keep
    # it under `purpose` until the next preload of that purpose replaces it.
    keep: bool = True


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


# --- agent updates (issue 13): the offer and the progress a terminal reports.

# What a release's version may look like: numbers only, so every side compares them the
# same way without a packaging library on the terminal.
AGENT_VERSION_PATTERN = r"^[0-9]{1,6}(\.[0-9]{1,6}){0,3}$"
AgentVersion = Annotated[str, Field(pattern=AGENT_VERSION_PATTERN)]
# A release is the agent's wheel (a few hundred kB); anything near this is not one.
MAX_RELEASE_BYTES = 64 * 1024 * 1024


def version_key(version: str) -> tuple[int, ...]:
    """`1.2` < `1.2.1` < `1.10`: numeric, trailing zeros ignored."""
    parts = [int(x) for x in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


class UpdateBody(_Payload):
    """Install agent release `version` beside the running one, switch to it, and keep it
    only if it comes online and passes its self-test within `self_test_s`. The package
    is fetched like audio (by sha256, from the media base URL and its mirrors); the
    signature of this command is what vouches for the hash."""

    kind: Literal["update"] = "update"
    rollout_id: WireId
    release_id: WireId
    version: AgentVersion
    min_version: AgentVersion  # a terminal running an older version refuses (failed)
    package: MediaRef
    self_test_s: Annotated[int, Field(ge=10, le=3600)] = 120

    @model_validator(mode="after")
    def _bounded_package(self) -> UpdateBody:
        if self.package.size > MAX_RELEASE_BYTES:
            raise ValueError(f"package.size: larger than {MAX_RELEASE_BYTES} bytes")
        return self


class UpdateState(enum.StrEnum):
    """Where one agent update stands on one terminal. `offered` is the controller's
    alone (sent, nothing heard yet); the terminal reports the others."""

    OFFERED = "offered"
    DOWNLOADING = "downloading"
    INSTALLED = "installed"  # unpacked beside the running version, waiting to switch
    DONE = "done"  # switched; the new version came online and passed its self-test
    ROLLED_BACK = "rolled_back"  # switched, failed to come up in time: back on the old
    FAILED = "failed"  # refused or could not download/install; still on the old

    @property
    def final(self) -> bool:
        return self in (UpdateState.DONE, UpdateState.ROLLED_BACK, UpdateState.FAILED)


class UpdateProgress(_Payload):
    """The `detail` of an `update_state` event; the event's `reason` says why for
    `failed` and `rolled_back`."""

    rollout_id: WireId
    release_id: WireId
    version: AgentVersion  # the release's
    state: UpdateState
    running: Annotated[str, Field(max_length=32)]  # the version the terminal now runs


# A phone number as a modem's caller id gives it: digits, an optional leading `+`.
PhoneNumber = Annotated[str, Field(pattern=r"^\+?[0-9]{3,20}$")]
# Numbers a terminal keeps (per terminal, its village and its township together).
MAX_PHONE_BOOK = 500


class CallOutcome(enum.StrEnum):
    PLAYED = "played"  # answered and played live until the caller hung up
    REJECTED = "rejected"  # not on the whitelist: not answered
    WRONG_PIN = "wrong_pin"  # answered, the DTMF PIN was wrong or not given
    BUSY = "busy"  # something of higher rank kept the speaker the whole time it waited
    ABANDONED = "abandoned"  # the caller hung up while waiting for the speaker
    PREEMPTED = "preempted"  # an emergency took the speaker mid-call
    FAILED = "failed"  # the amplifier or speaker line failed


def normalise_phone(number: str) -> str:
    """One form for comparing numbers: digits only, a mainland `+86`/`0086` dropped
    (caller ids arrive both ways)."""
    digits = "".join(c for c in number if c.isdigit())
    for prefix in ("0086", "86"):
        if digits.startswith(prefix) and len(digits) - len(prefix) == 11:
            return digits[len(prefix) :]
    return digits


def phone_pin_digest(salt: str, pin: str) -> str:
    """What a terminal holds instead of the PIN itself (it compares what is keyed in)."""
    return hashlib.sha256(f"{salt}:{pin}".encode()).hexdigest()


class PhoneBookBody(_Payload):
    """Who may speak through this terminal by phone (电话广播): its whole whitelist,
    replacing the previous one; `version` only grows. Sent on the terminal's own topic,
    so no other terminal sees the numbers."""

    kind: Literal["phone_book"] = "phone_book"
    version: Annotated[int, Field(ge=0)]
    numbers: Annotated[tuple[PhoneNumber, ...], Field(max_length=MAX_PHONE_BOOK)]
    # Optional DTMF PIN asked after answering: a salted digest, never the PIN itself.
    pin_salt: Annotated[str, Field(min_length=8, max_length=64)] | None = None
    pin_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    pin_length: Annotated[int, Field(ge=4, le=8)] | None = None


# The longest clip of what it last played a terminal uploads on request.
MAX_CLIP_MS = 30_000


class ClipRequestBody(_Payload):
    """Upload the first `max_ms` of what the loopback captured of the last play, so a
    technician can hear the pole from the duty room. `token` authorises exactly one
    upload to `upload_path` (on the controller that serves the terminal's media); it
    travels only on this terminal's own topic."""

    kind: Literal["clip_request"] = "clip_request"
    request_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
    upload_path: Annotated[str, Field(pattern=r"^/device-clips/[A-Za-z0-9_-]{8,64}$")]
    token: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{32,128}$")]
    max_ms: Annotated[int, Field(ge=1000, le=MAX_CLIP_MS)] = 10_000


class ReportAgainBody(_Payload):
    """Publish again the final delivery reports made since `since` (the terminal's
    clock, epoch ms). The controller sends it when its broker session was gone on
    reconnect (a broker that restarted without its saved state, or a new broker): a
    report a terminal published before the controller had subscribed again was
    acknowledged by the broker and delivered to nobody, so the terminal's outbox let
    go of it. Reports the controller already has are ignored by their `seq`."""

    kind: Literal["report_again"] = "report_again"
    since: Epoch


CommandBody = Annotated[
    PlayBody
    | CancelBody
    | PreloadBody
    | ScheduleBody
    | ConfigBody
    | UpdateBody
    | PhoneBookBody
    | ClipRequestBody
    | ReportAgainBody,
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
        body: PlayBody
        | CancelBody
        | PreloadBody
        | ScheduleBody
        | ConfigBody
        | UpdateBody
        | PhoneBookBody
        | ClipRequestBody
        | ReportAgainBody,
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
    # `playing` on a terminal that could not estimate its clock's offset from the
    # controller's (see TimeAnswer): it played on receipt, not on the signed instant.
    on_receipt: bool = False
    # `silent`: how long the output monitor found the line without sound (offset_ms is
    # where into the audio the silence began).
    silent_ms: Count | None = None



# The controller's clock, for terminals that estimate their offset from it (NTP-style:
# several requests, the shortest round trip kept; see edge_agent/clocksync.py). Plain
# HTTP(S) GET, no login: the time is no secret, and an answer only moves a terminal's
# start instants, never what it plays.
TIME_PATH = "/api/time"


class TimeAnswer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = PROTOCOL_VERSION
    now_ms: Epoch  # the controller's clock when it answered, epoch ms


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
    # A reading the terminal's board has no sensor for is absent (None), never zero.
    power_source: Literal["mains", "battery"] | None = None
    battery_pct: Percent | None = None
    temperature_c: Annotated[float, Field(ge=-100, le=200, allow_inf_nan=False)] | None = None
    signal_dbm: Annotated[int, Field(ge=-200, le=50)] | None = None
    operator: Annotated[str, Field(max_length=64)] | None = None  # the mobile network's name
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


# --------------------------------------------------------------------------- live frames

# One live audio frame, binary (JSON and base64 would add a third to every frame):
#   magic "DLF1" | seq u32 | t_ms u64 (controller clock) | flags u8 | audio | sig (64)
# The Ed25519 signature covers LIVE_FRAME_CONTEXT, the broadcast id, and every byte
# before it, so a frame cannot be replayed into another session or altered.
LIVE_FRAME_MAGIC = b"DLF1"
LIVE_FRAME_CONTEXT = b"dalaba-live-frame-v1\0"
LIVE_FLAG_END = 0x01
_LIVE_HEADER = struct.Struct(">4sIQB")
LIVE_SIG_BYTES = 64
MAX_LIVE_AUDIO_BYTES = 16_000 * 120 // 1000  # 120 ms of 16 kHz mu-law
LIVE_QOS = 0  # a late frame is worthless: loss is silence, never a resend


class LiveFrame(BaseModel):
    model_config = ConfigDict(frozen=True)

    seq: int
    t_ms: int
    end: bool
    audio: bytes


def _live_signed_part(broadcast_id: str, header_and_audio: bytes) -> bytes:
    return LIVE_FRAME_CONTEXT + broadcast_id.encode() + b"\0" + header_and_audio


def seal_live_frame(
    broadcast_id: str,
    seq: int,
    t_ms: int,
    audio: bytes,
    sign: Callable[[bytes], bytes],
    *,
    end: bool = False,
) -> bytes:
    if len(audio) > MAX_LIVE_AUDIO_BYTES:
        raise ValueError(f"live frame audio {len(audio)} bytes > {MAX_LIVE_AUDIO_BYTES}")
    body = _LIVE_HEADER.pack(LIVE_FRAME_MAGIC, seq, t_ms, LIVE_FLAG_END if end else 0) + audio
    return body + sign(_live_signed_part(broadcast_id, body))


def open_live_frame(raw: bytes, broadcast_id: str, key: Ed25519PublicKey) -> LiveFrame:
    """Check a live frame's shape and signature against the session key from the
    signed start command; raise `ProtocolError` for anything else."""
    if len(raw) > _LIVE_HEADER.size + MAX_LIVE_AUDIO_BYTES + LIVE_SIG_BYTES:
        raise ProtocolError(RejectReason.OVERSIZED, f"live frame of {len(raw)} bytes")
    if len(raw) < _LIVE_HEADER.size + LIVE_SIG_BYTES:
        raise ProtocolError(RejectReason.MALFORMED, "live frame too short")
    body, sig = raw[:-LIVE_SIG_BYTES], raw[-LIVE_SIG_BYTES:]
    magic, seq, t_ms, flags = _LIVE_HEADER.unpack_from(body)
    if magic != LIVE_FRAME_MAGIC:
        raise ProtocolError(RejectReason.MALFORMED, "live frame: bad magic")
    try:
        key.verify(sig, _live_signed_part(broadcast_id, body))
    except InvalidSignature:
        raise ProtocolError(RejectReason.BAD_SIGNATURE, "live frame signature") from None
    return LiveFrame(
        seq=seq, t_ms=t_ms, end=bool(flags & LIVE_FLAG_END), audio=body[_LIVE_HEADER.size :]
    )


# MQTT properties the contract fixes (see docs/protocol.md).
COMMAND_QOS = 1
REPORT_QOS = 1
TELEMETRY_QOS = 0
DEVICE_SESSION_EXPIRY_S = 7 * 24 * 3600  # keeps queued commands for a week-long outage
CONTROLLER_SESSION_EXPIRY_S = 24 * 3600
