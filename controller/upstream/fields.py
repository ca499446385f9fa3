"""Every name and code of the upper-level platform's messages, in one module.

What `../shared/STANDARDS.md` gives as fact (package members, EBDType names, the EBM's
MsgBasicInfo/MsgContent fields, the receipt and state codes) is used as given. Where the
standards' texts are not public here (the root element, the signature file's fields, the
state response's coverage block, the report elements, the time format), the names below are
inferred and each such entry is marked GUESSED, and listed in docs/upstream.md: correcting
one is a change to this module (and its table test, tests/unit/test_upstream_fields.py)
only. Nothing else in the controller spells an element name.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

# ------------------------------------------------------------------ package members

EBD_VERSION = "1"  # GUESSED: the version string the county writes in EBDVersion
MESSAGE_PREFIX = "EBDB_"  # fact: EBDB_<EBDID>.xml
SIGNATURE_PREFIX = "EBDS_EBDB_"  # fact: EBDS_EBDB_<EBDID>.xml
XML_SUFFIX = ".xml"


def message_member(ebd_id: str) -> str:
    return f"{MESSAGE_PREFIX}{ebd_id}{XML_SUFFIX}"


def signature_member(ebd_id: str) -> str:
    return f"{SIGNATURE_PREFIX}{ebd_id}{XML_SUFFIX}"


# ------------------------------------------------------------------ the message header

ROOT = "EBD"  # GUESSED: the message document's root element
VERSION = "EBDVersion"  # fact
EBD_ID = "EBDID"  # fact
EBD_TYPE = "EBDType"  # fact
SRC = "SRC"  # fact, with EBRID inside
DEST = "DEST"  # fact, with EBRID inside
EBR_ID = "EBRID"  # fact
EBD_TIME = "EBDTime"  # fact
RELATED_EBD = "RelatedEBD"  # GUESSED: a receipt's reference to the package it answers

# An EBDID: GUESSED to be the sender's 18-digit resource code + a 16-digit sequence, as the
# EBM ID is a resource code + date + sequence; only its shape is checked (digits), since it
# also names the package's members.
EBD_ID_PATTERN = re.compile(r"^[0-9]{18,40}$")
RESOURCE_CODE_PATTERN = re.compile(r"^[0-9]{18}$")  # fact: 18 digits
EBM_ID_PATTERN = re.compile(r"^[0-9]{30}$")  # fact: resource code (18) + YYYYMMDD + 4
AREA_CODE_PATTERN = re.compile(r"^[0-9]{6}([0-9]{3}){0,2}$")  # 6, 9 or 12 digits (prefixes)


class EbdType(enum.StrEnum):
    """EBDType values (all fact)."""

    EBM = "EBM"
    EBM_STATE_REQUEST = "EBMStateRequest"
    EBM_STATE_RESPONSE = "EBMStateResponse"
    OMD_REQUEST = "OMDRequest"
    EBD_RESPONSE = "EBDResponse"
    CONNECTION_CHECK = "ConnectionCheck"
    PLATFORM_INFO = "EBRPSInfo"
    PLATFORM_STATE = "EBRPSState"
    TERMINAL_INFO = "EBRDTInfo"
    TERMINAL_STATE = "EBRDTState"
    BROADCAST_LOG = "EBMBrdLog"


# What the county accepts from above; the rest it only sends.
INBOUND_TYPES = frozenset(
    {
        EbdType.EBM,
        EbdType.EBM_STATE_REQUEST,
        EbdType.OMD_REQUEST,
        EbdType.CONNECTION_CHECK,
        EbdType.EBD_RESPONSE,
    }
)


# ------------------------------------------------------------------ receipts


class ResultCode(enum.IntEnum):
    """EBDResponse result codes (fact). 2-5 stop further processing."""

    RECEIVED = 0  # received, not processed
    PARSED = 1  # parsed and validated
    PARSE_FAILED = 2
    CONTENT_MISSING = 3
    SIGNATURE_FAILED = 4
    OTHER = 5


RESULT_CODE = "ResultCode"  # GUESSED element names of the receipt
RESULT_DESC = "ResultDesc"  # GUESSED

# ------------------------------------------------------------------ the EBM

EBM = "EBM"  # fact: the body element is named as its type
EBM_ID = "EBMID"  # GUESSED spelling of the "EBM ID"
BASIC = "MsgBasicInfo"  # fact
MSG_TYPE = "MsgType"  # fact
SENDER_NAME = "SenderName"  # fact
SENDER_CODE = "SenderCode"  # fact
SEND_TIME = "SendTime"  # fact
EVENT_TYPE = "EventType"  # fact
SEVERITY = "Severity"  # fact
START_TIME = "StartTime"  # fact
END_TIME = "EndTime"  # fact
CONTENT = "MsgContent"  # fact
LANGUAGE = "LanguageCode"  # fact
TITLE = "MsgTitle"  # fact
DESC = "MsgDesc"  # fact
AREA_CODE = "AreaCode"  # fact: comma list of 12-digit codes
PROGRAM_NUM = "ProgramNum"  # fact
AUXILIARY = "Auxiliary"  # fact
AUX_TYPE = "AuxiliaryType"  # fact
AUX_DESC = "AuxiliaryDesc"  # fact (GUESSED: it carries the file name or the URL)
AUX_SIZE = "Size"  # fact


class MsgType(enum.IntEnum):
    PLAY = 1  # fact
    CANCEL = 2  # fact


class AuxType(enum.IntEnum):
    FILE = 2  # fact
    STREAM = 61  # fact


# Severity 1-4 = 特别重大, 重大, 较大, 一般 (the event levels of GD/J 089) = the controller's
# levels 1 (I, red) ... 4 (IV, blue); GUESSED that EBM Severity uses the same 1-4 scale.
SEVERITY_TO_LEVEL: dict[str, int] = {"1": 1, "2": 2, "3": 3, "4": 4}
# GUESSED: 9 (unknown) and anything else become a notice without a level.

# ------------------------------------------------------------------ state request/response

STATE_EBM = "EBM"  # GUESSED: the request names the EBM as <EBM><EBMID>..</EBMID></EBM>
STATE_CODE = "BrdStateCode"  # GUESSED
STATE_DESC = "BrdStateDesc"  # GUESSED
COVERAGE = "Coverage"  # fact: "a coverage block"; element names inside GUESSED
COVERAGE_RATE = "CoverageRate"  # GUESSED; a fraction 0..1 with 4 decimals
COVERAGE_AREA = "AreaCode"  # GUESSED
TARGETED = "ResBrdTotal"  # GUESSED: terminals asked
SUCCEEDED = "ResBrdSucceeded"  # GUESSED: terminals that played it to the end


class BroadcastState(enum.IntEnum):
    """EBMStateResponse broadcast state codes (fact)."""

    NOT_PROCESSED = 0
    WAITING = 1
    PLAYING = 2
    SUCCEEDED = 3
    FAILED = 4  # partial failure included
    CANCELLED = 5


# ------------------------------------------------------------------ operational data

REPORT_TYPE = "RptType"  # GUESSED; values fact: Full, Incremental
REPORT_START = "RptStartTime"  # GUESSED
REPORT_END = "RptEndTime"  # GUESSED
REPORT_TIME = "RptTime"  # GUESSED
FULL, INCREMENTAL = "Full", "Incremental"  # fact
OMD_TYPE = "OMDType"  # GUESSED: which EBDType the request asks for


class DeviceState(enum.IntEnum):
    """Device/platform state codes (fact)."""

    ON = 1
    OFF = 2
    FAULT = 3
    RECOVERED = 4
    BROADCASTING = 5


# Elements of the reports (all GUESSED but the container names, which are EBDTypes).
LOG_ITEM = "EBMBrd"
DEVICE_ITEM = "EBRDT"
DEVICE_ID = "EBRDTID"
STATE = "StateCode"
STATE_TEXT = "StateDesc"
PLATFORM_ITEM = "EBRPS"
PLATFORM_ID = "EBRPSID"
ONLINE_RATE = "OnlineRate"  # a fraction 0..1 with 4 decimals over the report's period
TERMINALS_TOTAL = "TerminalTotal"
TERMINALS_ONLINE = "TerminalOnline"
LOG_RESULT = "BrdResult"  # 0 failed, 1 succeeded, 2 playing: the play record's (fact)
LOG_COVERAGE = COVERAGE_RATE

# ------------------------------------------------------------------ times

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # GUESSED: local wall time, seconds, no zone


def format_time(ms: int, zone: ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, zone).strftime(TIME_FORMAT)


def parse_time(text: str, zone: ZoneInfo) -> int:
    """Raises ValueError naming the format."""
    try:
        local = dt.datetime.strptime(text.strip(), TIME_FORMAT)
    except ValueError:
        raise ValueError(f"{text!r} is not a time like 2026-11-30 08:00:00") from None
    return int(local.replace(tzinfo=zone).timestamp() * 1000)


# ------------------------------------------------------------------ EBM -> warning


@dataclass(frozen=True)
class Ebm:
    """An EBM, as read (strings as sent; checked by `to_warning`)."""

    ebm_id: str
    msg_type: str
    sender_name: str = ""
    sender_code: str = ""
    send_time: str = ""
    event_type: str = ""
    severity: str = ""
    start_time: str = ""
    end_time: str = ""
    language: str = ""
    title: str = ""
    description: str = ""
    area_codes: str = ""
    aux_type: str = ""
    aux_desc: str = ""
    aux_size: str = ""


@dataclass(frozen=True)
class Audio:
    kind: AuxType
    ref: str  # a member of the package (FILE) or an http(s) URL (STREAM)
    size: int | None


@dataclass(frozen=True)
class EbmOrder:
    """What an EBM asks of the county, checked: the intake's input."""

    ebm_id: str
    cancel: bool
    sender: str
    sent: str
    title: str
    text: str
    area_codes: tuple[str, ...]
    level: int | None
    priority: str  # emergency | notice
    event_type: str
    starts_ms: int | None
    ends_ms: int | None
    audio: Audio | None = None
    problems: tuple[str, ...] = field(default=())


class EbmInvalid(ValueError):
    """The EBM is readable but lacks what it must carry (receipt: content missing)."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name


def to_order(ebm: Ebm, zone: ZoneInfo) -> EbmOrder:
    """Check an EBM and say what it asks for; raises EbmInvalid naming the field."""
    if not EBM_ID_PATTERN.match(ebm.ebm_id):
        raise EbmInvalid(EBM_ID, "must be 30 digits")
    try:
        msg_type = MsgType(int(ebm.msg_type))
    except ValueError:
        raise EbmInvalid(MSG_TYPE, "must be 1 (play) or 2 (cancel)") from None
    times: dict[str, int | None] = {}
    for name, value in ((START_TIME, ebm.start_time), (END_TIME, ebm.end_time)):
        try:
            times[name] = parse_time(value, zone) if value.strip() else None
        except ValueError as exc:
            raise EbmInvalid(name, str(exc)) from None
    common = {
        "ebm_id": ebm.ebm_id,
        "sender": ebm.sender_name or ebm.sender_code,
        "sent": ebm.send_time,
        "event_type": ebm.event_type,
        "starts_ms": times[START_TIME],
        "ends_ms": times[END_TIME],
    }
    if msg_type is MsgType.CANCEL:
        return EbmOrder(
            cancel=True,
            title=ebm.title,
            text="",
            area_codes=(),
            level=None,
            priority="emergency",
            **common,  # type: ignore[arg-type]
        )
    codes = tuple(c.strip() for c in ebm.area_codes.replace("，", ",").split(",") if c.strip())
    if not codes:
        raise EbmInvalid(AREA_CODE, "missing: a play needs at least one area code")
    bad = [c for c in codes if not AREA_CODE_PATTERN.match(c)]
    if bad:
        raise EbmInvalid(AREA_CODE, f"not administrative codes: {', '.join(bad[:3])}")
    audio = _audio(ebm)
    text = "。".join(t.strip() for t in (ebm.title, ebm.description) if t.strip())
    if audio is None and not text:
        raise EbmInvalid(DESC, "missing: neither text nor audio to play")
    level = SEVERITY_TO_LEVEL.get(ebm.severity.strip())
    return EbmOrder(
        cancel=False,
        title=ebm.title.strip()[:100],
        text=text,
        area_codes=codes,
        level=level,
        priority="emergency" if level is not None else "notice",
        audio=audio,
        **common,  # type: ignore[arg-type]
    )


def _audio(ebm: Ebm) -> Audio | None:
    if not ebm.aux_type.strip():
        return None
    try:
        kind = AuxType(int(ebm.aux_type))
    except ValueError:
        raise EbmInvalid(AUX_TYPE, "must be 2 (file) or 61 (stream)") from None
    ref = ebm.aux_desc.strip()
    if not ref:
        raise EbmInvalid(AUX_DESC, "missing: the file name or the stream URL")
    size = int(ebm.aux_size) if ebm.aux_size.strip().isdigit() else None
    if kind is AuxType.STREAM and not ref.lower().startswith(("http://", "https://")):
        # rtsp:// and others are for terminals that pull streams themselves; ours play files.
        raise EbmInvalid(AUX_DESC, "only http(s) URLs are fetched")
    return Audio(kind, ref, size)


# The EBM element -> Ebm attribute table (read by package.py, checked by the table test).
EBM_FIELDS: dict[str, tuple[str, str]] = {
    "ebm_id": ("", EBM_ID),
    "msg_type": (BASIC, MSG_TYPE),
    "sender_name": (BASIC, SENDER_NAME),
    "sender_code": (BASIC, SENDER_CODE),
    "send_time": (BASIC, SEND_TIME),
    "event_type": (BASIC, EVENT_TYPE),
    "severity": (BASIC, SEVERITY),
    "start_time": (BASIC, START_TIME),
    "end_time": (BASIC, END_TIME),
    "language": (CONTENT, LANGUAGE),
    "title": (CONTENT, TITLE),
    "description": (CONTENT, DESC),
    "area_codes": (CONTENT, AREA_CODE),
    "aux_type": (f"{CONTENT}/{AUXILIARY}", AUX_TYPE),
    "aux_desc": (f"{CONTENT}/{AUXILIARY}", AUX_DESC),
    "aux_size": (f"{CONTENT}/{AUXILIARY}", AUX_SIZE),
}


# ------------------------------------------------------------------ delivery -> state


def broadcast_state(status: str, by_state: dict[str, int]) -> BroadcastState:
    """A broadcast's state code from its status and its deliveries' states (the
    controller's words: controller/deliveries.py). Succeeded only when every terminal
    played it to the end; any terminal that did not, once nothing is open, is a failure
    (the code includes partial failure)."""
    if status == "cancelled":
        return BroadcastState.CANCELLED
    total = sum(by_state.values())
    if total == 0:
        return BroadcastState.NOT_PROCESSED
    if by_state.get("playing", 0):
        return BroadcastState.PLAYING
    open_states = ("sent", "received", "fetched", "preempted", "scheduled")
    still_open = sum(by_state.get(s, 0) for s in open_states)
    if still_open or (status == "active" and by_state.get("offline", 0)):
        # Under way once some terminal has played it; before that, waiting.
        return BroadcastState.PLAYING if by_state.get("done", 0) else BroadcastState.WAITING
    if by_state.get("done", 0) == total:
        return BroadcastState.SUCCEEDED
    return BroadcastState.FAILED


def device_state(online: bool, faults: dict[str, int], playing: bool) -> DeviceState:
    if not online:
        return DeviceState.OFF
    if faults:
        return DeviceState.FAULT
    return DeviceState.BROADCASTING if playing else DeviceState.ON


def log_result(state: str) -> int:
    """A delivery's play-record result (fact: 0 failed, 1 succeeded, 2 playing)."""
    return {"done": 1, "playing": 2}.get(state, 0)


# ------------------------------------------------------------------ the signature file
# All GUESSED but its existence and name: the standards sign with SM2/SM3 and name the
# certificate by serial; the county also names the key (KeyID, dalaba.signing.key_id) so a
# bare public key can be configured where the platform has no certificate.
SIG_ROOT = "EBDS"
SIG_CERT = "SignatureCert"
SIG_CERT_SN = "CertSN"
SIG_KEY_ID = "KeyID"
SIG_ALGORITHM = "SignatureAlgorithm"  # SM2-SM3 or ed25519 (dalaba.signing's names)
SIG_TIME = "SignatureTime"
SIG_VALUE = "SignatureValue"  # base64 of the signature over the EBDB file's exact bytes
