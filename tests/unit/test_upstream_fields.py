"""The upper-level platform's names and codes (controller/upstream/fields.py) against the
facts of ../shared/STANDARDS.md, one table each: a change to a name or a code must change
this table too, on purpose."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from controller.upstream import fields as f
from controller.upstream.package import element, read_ebm

ZONE = ZoneInfo("Asia/Shanghai")
EBM_ID = "010000000000000001202611300001"

# (XML path under <EBM>, Ebm attribute) - the facts' field names, and the guessed EBMID.
EBM_TABLE = [
    ("EBMID", "ebm_id"),
    ("MsgBasicInfo/MsgType", "msg_type"),
    ("MsgBasicInfo/SenderName", "sender_name"),
    ("MsgBasicInfo/SenderCode", "sender_code"),
    ("MsgBasicInfo/SendTime", "send_time"),
    ("MsgBasicInfo/EventType", "event_type"),
    ("MsgBasicInfo/Severity", "severity"),
    ("MsgBasicInfo/StartTime", "start_time"),
    ("MsgBasicInfo/EndTime", "end_time"),
    ("MsgContent/LanguageCode", "language"),
    ("MsgContent/MsgTitle", "title"),
    ("MsgContent/MsgDesc", "description"),
    ("MsgContent/AreaCode", "area_codes"),
    ("MsgContent/Auxiliary/AuxiliaryType", "aux_type"),
    ("MsgContent/Auxiliary/AuxiliaryDesc", "aux_desc"),
    ("MsgContent/Auxiliary/Size", "aux_size"),
]


def test_every_ebm_field_is_read_from_its_element() -> None:
    table = {attr: "/".join(p for p in parts if p) for attr, parts in f.EBM_FIELDS.items()}
    assert table == {attr: path for path, attr in EBM_TABLE}
    # Build an EBM with a distinct value in each element; each lands in its attribute.
    root = element("EBM")
    for path, attr in EBM_TABLE:
        node = root
        for name in path.split("/"):
            found = node.find(name)
            node = found if found is not None else _child(node, name)
        node.text = f"v-{attr}"
    ebm = read_ebm(root)
    for _, attr in EBM_TABLE:
        assert getattr(ebm, attr) == f"v-{attr}"


def _child(parent, name):  # type: ignore[no-untyped-def]
    node = element(name)
    parent.append(node)
    return node


CODES = [
    (
        f.ResultCode,
        {
            0: "RECEIVED",
            1: "PARSED",
            2: "PARSE_FAILED",
            3: "CONTENT_MISSING",
            4: "SIGNATURE_FAILED",
            5: "OTHER",
        },
    ),
    (
        f.BroadcastState,
        {
            0: "NOT_PROCESSED",
            1: "WAITING",
            2: "PLAYING",
            3: "SUCCEEDED",
            4: "FAILED",
            5: "CANCELLED",
        },
    ),
    (f.DeviceState, {1: "ON", 2: "OFF", 3: "FAULT", 4: "RECOVERED", 5: "BROADCASTING"}),
    (f.MsgType, {1: "PLAY", 2: "CANCEL"}),
    (f.AuxType, {2: "FILE", 61: "STREAM"}),
]


@pytest.mark.parametrize(("enum", "expected"), CODES, ids=lambda v: getattr(v, "__name__", ""))
def test_codes_are_the_standards(enum, expected) -> None:  # type: ignore[no-untyped-def]
    assert {int(m): m.name for m in enum} == expected


def test_type_names_and_members() -> None:
    assert {t.value for t in f.EbdType} == {
        "EBM",
        "EBMStateRequest",
        "EBMStateResponse",
        "OMDRequest",
        "EBDResponse",
        "ConnectionCheck",
        "EBRPSInfo",
        "EBRPSState",
        "EBRDTInfo",
        "EBRDTState",
        "EBMBrdLog",
    }
    assert f.message_member("123") == "EBDB_123.xml"
    assert f.signature_member("123") == "EBDS_EBDB_123.xml"


def _ebm(**kw: str) -> f.Ebm:
    base = {
        "ebm_id": EBM_ID,
        "msg_type": "1",
        "severity": "2",
        "title": "暴雨橙色预警",
        "description": "请沿河群众转移",
        "area_codes": "500101001201,500101002",
        "start_time": "2026-11-30 08:00:00",
        "end_time": "2026-11-30 09:00:00",
        "sender_name": "省平台",
    }
    return f.Ebm(**{**base, **kw})


ORDER_TABLE = [
    # (EBM fields changed, order attribute, expected)
    ({}, "cancel", False),
    ({"msg_type": "2", "area_codes": ""}, "cancel", True),
    ({}, "area_codes", ("500101001201", "500101002")),
    ({"area_codes": "500101001201，500101001202"}, "area_codes", ("500101001201", "500101001202")),
    ({"severity": "1"}, "level", 1),
    ({"severity": "4"}, "level", 4),
    ({"severity": "9"}, "level", None),
    ({"severity": "9"}, "priority", "notice"),
    ({}, "priority", "emergency"),
    ({}, "text", "暴雨橙色预警。请沿河群众转移"),
    ({}, "starts_ms", 1795996800000),  # 08:00 in Beijing = 00:00 UTC
    ({}, "ends_ms", 1796000400000),
    ({"end_time": ""}, "ends_ms", None),
    ({}, "sender", "省平台"),
]


@pytest.mark.parametrize(("changes", "attr", "expected"), ORDER_TABLE)
def test_ebm_to_order(changes: dict[str, str], attr: str, expected: object) -> None:
    assert getattr(f.to_order(_ebm(**changes), ZONE), attr) == expected


REFUSED = [
    ({"ebm_id": "123"}, "EBMID"),
    ({"msg_type": "3"}, "MsgType"),
    ({"area_codes": ""}, "AreaCode"),
    ({"area_codes": "50010100120x"}, "AreaCode"),
    ({"start_time": "2026-11-30T08:00:00Z"}, "StartTime"),
    ({"title": "", "description": ""}, "MsgDesc"),
    ({"aux_type": "7", "aux_desc": "a.mp3"}, "AuxiliaryType"),
    ({"aux_type": "61", "aux_desc": "rtsp://x/y"}, "AuxiliaryDesc"),
    ({"aux_type": "2", "aux_desc": ""}, "AuxiliaryDesc"),
]


@pytest.mark.parametrize(("changes", "field_name"), REFUSED)
def test_ebm_refused_naming_the_field(changes: dict[str, str], field_name: str) -> None:
    with pytest.raises(f.EbmInvalid) as caught:
        f.to_order(_ebm(**changes), ZONE)
    assert caught.value.field == field_name


STATE_TABLE = [
    ("active", {}, f.BroadcastState.NOT_PROCESSED),
    ("active", {"sent": 3}, f.BroadcastState.WAITING),
    ("active", {"offline": 1, "received": 2}, f.BroadcastState.WAITING),
    ("active", {"playing": 1, "done": 2}, f.BroadcastState.PLAYING),
    ("active", {"done": 2, "fetched": 1}, f.BroadcastState.PLAYING),
    ("active", {"done": 3}, f.BroadcastState.SUCCEEDED),
    ("finished", {"done": 2, "failed": 1}, f.BroadcastState.FAILED),
    ("finished", {"done": 2, "offline": 1}, f.BroadcastState.FAILED),
    ("finished", {"expired": 3}, f.BroadcastState.FAILED),
    ("cancelled", {"done": 1, "cancelled": 2}, f.BroadcastState.CANCELLED),
]


@pytest.mark.parametrize(("status", "by_state", "expected"), STATE_TABLE)
def test_broadcast_state_codes(
    status: str, by_state: dict[str, int], expected: f.BroadcastState
) -> None:
    assert f.broadcast_state(status, by_state) is expected


def test_device_states_and_log_results() -> None:
    assert f.device_state(False, {"x": 1}, True) is f.DeviceState.OFF
    assert f.device_state(True, {"speaker_line": 1}, False) is f.DeviceState.FAULT
    assert f.device_state(True, {}, True) is f.DeviceState.BROADCASTING
    assert f.device_state(True, {}, False) is f.DeviceState.ON
    assert [f.log_result(s) for s in ("done", "playing", "failed", "expired")] == [1, 2, 0, 0]


def test_times_are_local_wall_time() -> None:
    assert f.format_time(1795996800000, ZONE) == "2026-11-30 08:00:00"
    assert f.parse_time("2026-11-30 08:00:00", ZONE) == 1795996800000
    with pytest.raises(ValueError):
        f.parse_time("yesterday", ZONE)
