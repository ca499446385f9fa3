"""CAP 1.2 parsing and mapping without a controller: the specification's three examples
parse to what they say; the Chinese info block is the one spoken; hostile or broken XML
is refused with the field named; severity maps to levels by the documented table; area
maths (polygon, circle, codes) picks the right villages of the demo county."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import Session, SQLModel, create_engine, select

from controller.areas import (
    Circle,
    distance_km,
    point_in_polygon,
    resource_code,
    smallest_target,
    villages_by_codes,
    villages_in_shapes,
)
from controller.auth import Principal, Role
from controller.county import County, seed
from controller.db import table_metadata
from controller.errors import ApiError
from controller.models import Device
from controller.settings import Settings
from controller.targets import TargetsIn, resolve
from controller.warnings.cap import parse_alert, verify_signature, warning_from_alert
from controller.warnings.intake import IncomingWarning, category_of, spoken_text, warning_levels
from dalaba_ops.pki import CertificateAuthority

FIXTURES = Path(__file__).parent.parent / "cap_fixtures"


def fixture(name: str, **values: str) -> bytes:
    text = (FIXTURES / name).read_text()
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text.encode()


BEIJING = timezone(timedelta(hours=8))


def cap_time(delta: timedelta = timedelta()) -> str:
    """A CAP date-time (seconds, explicit offset), in Beijing time as a county writes it."""
    return (datetime.now(BEIJING) + delta).isoformat(timespec="seconds")


def parsed(raw: bytes) -> IncomingWarning:
    return warning_from_alert(
        parse_alert(raw), raw, source_id="qxj", content_type="application/cap+xml"
    )


def refused(raw: bytes) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_alert(raw)
    assert 400 <= caught.value.status < 500
    return caught.value


def test_the_thunderstorm_example() -> None:
    w = parsed(fixture("oasis_thunderstorm.xml"))
    assert (w.identifier, w.sender, w.sent) == (
        "KSTO1055887203",
        "KSTO@NWS.NOAA.GOV",
        "2003-06-17T14:57:00-07:00",
    )
    assert (w.status, w.msg_type, w.severity, w.urgency) == (
        "actual",
        "alert",
        "Severe",
        "Immediate",
    )
    assert w.polygons == [
        [(38.47, -120.14), (38.34, -119.95), (38.52, -119.74), (38.62, -119.89), (38.47, -120.14)]
    ]
    assert w.area_codes == []  # SAME codes are not Chinese administrative codes
    assert w.expires_at_ms == int(datetime(2003, 6, 17, 23, 0, tzinfo=UTC).timestamp() * 1000)
    assert w.headline == "SEVERE THUNDERSTORM WARNING"
    assert "TAKE COVER" in w.instruction


def test_the_earthquake_update_example() -> None:
    w = parsed(fixture("oasis_earthquake.xml"))
    assert (w.identifier, w.msg_type) == ("TRI13970876.2", "update")
    assert w.references == ["TRI13970876.1"]
    assert w.circles == [Circle(32.9525, -115.5527, 0.0)]
    # Past urgency: a notice without a level, by the default table.
    assert warning_levels(Settings(demo=True), w) == ("notice", None)
    assert category_of(w) == "earthquake"


def test_the_bilingual_amber_example_speaks_the_first_info_without_chinese() -> None:
    w = parsed(fixture("oasis_amber.xml"))
    assert w.identifier == "KAR0-0306112239-SW"
    assert w.language == "en-US" and w.headline == "Amber Alert in Los Angeles County"
    assert w.detail["infos"] == 2


def test_the_chinese_info_block_is_the_one_spoken() -> None:
    raw = fixture(
        "cn_rainstorm.xml",
        identifier="430131-1",
        sent=cap_time(),
        expires=cap_time(timedelta(hours=3)),
        status="Actual",
    )
    w = parsed(raw)
    assert w.language == "zh-CN"
    assert w.headline == "示范县气象台发布暴雨橙色预警信号"
    assert warning_levels(Settings(demo=True), w) == ("emergency", 2)  # Severe: orange
    assert category_of(w) == "flood"
    text = spoken_text(w, 2000)
    assert text.splitlines() == [w.headline, w.description, w.instruction]
    cut = spoken_text(w, 60)
    assert len(cut) <= 60 and cut.startswith(w.headline) and cut.endswith(w.instruction)


def test_the_severity_table_is_a_setting() -> None:
    w = parsed(fixture("oasis_thunderstorm.xml"))
    assert warning_levels(Settings(demo=True), w) == ("emergency", 2)
    custom = Settings(demo=True, cap_severity_levels={"Severe": 1})
    assert warning_levels(custom, w) == ("emergency", 1)
    with pytest.raises(ValueError, match="level 1-4"):
        Settings(demo=True, cap_severity_levels={"Severe": 7})


def test_hostile_and_broken_xml_is_refused_naming_the_problem() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&lol2;</identifier>'
        b"</alert>"
    )
    assert refused(bomb).code == "cap_forbidden_xml"
    external = (
        b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&x;</identifier></alert>'
    )
    assert refused(external).code == "cap_forbidden_xml"
    assert refused(b"<alert><identifier>").code == "cap_malformed"
    good = fixture("oasis_thunderstorm.xml")
    wrong_ns = good.replace(b"emergency:cap:1.2", b"emergency:cap:1.1")
    error = refused(wrong_ns)
    assert (error.code, error.field) == ("cap_namespace", "alert")
    no_id = good.replace(b"<identifier>KSTO1055887203</identifier>", b"")
    error = refused(no_id)
    assert (error.code, error.field) == ("cap_missing", "alert.identifier")
    bad_status = good.replace(b"<status>Actual</status>", b"<status>Real</status>")
    error = refused(bad_status)
    assert (error.code, error.field) == ("cap_invalid", "alert.status")
    misplaced = good.replace(
        b"<polygon>", b"<geocode><valueName>x</valueName><value>1</value></geocode><polygon>"
    )
    error = refused(misplaced)
    assert error.code == "cap_invalid" and error.field.startswith("alert.info"), error.field
    open_ring = good.replace(b" 38.47,-120.14</polygon>", b"</polygon>")
    with pytest.raises(ApiError) as caught:
        parsed(open_ring)
    assert caught.value.field == "alert.info.area[0].polygon[0]"


@pytest.fixture
def county_db() -> Session:
    engine = create_engine("sqlite://")
    SQLModel.metadata.create_all(engine, tables=list(table_metadata().tables.values()))
    session = Session(engine)
    seed(session, County.for_size(45))
    session.commit()
    return session


def test_codes_on_places_and_terminals(county_db: Session) -> None:
    covered = villages_by_codes(county_db, ["430131102", "430131101203", "430131", "999"])
    assert len(covered["430131102"]) == 15 and all(
        v.startswith("t02-") for v in covered["430131102"]
    )
    assert covered["430131101203"] == {"t01-v03"}
    assert len(covered["430131"]) == 45 and covered["999"] == set()
    device = county_db.get(Device, "d-t01-v09-2")
    assert device is not None and device.resource_code == "031443013110120902"
    assert resource_code("430131101209", extension=2) == device.resource_code
    with pytest.raises(ValueError):
        resource_code("4301")


def test_polygons_and_circles_select_villages(county_db: Session) -> None:
    w = parsed(
        fixture(
            "cn_rainstorm.xml",
            identifier="x",
            sent=cap_time(),
            expires=cap_time(timedelta(hours=1)),
            status="Actual",
        )
    )
    inside = villages_in_shapes(county_db, w.polygons, [])
    assert {v.split("-")[0] for v in inside} == {"t01", "t02"} and len(inside) == 31
    assert smallest_target(county_db, inside) == {"townships": ["t01", "t02"], "villages": []}
    # t01-v03 兰桥村 is at 28.2184,112.8679: a 1 km circle on it holds it alone.
    assert villages_in_shapes(county_db, [], [Circle(28.2184, 112.8679, 1.0)]) == {"t01-v03"}
    assert smallest_target(county_db, {"t01-v03"}) == {"townships": [], "villages": ["t01-v03"]}
    every = villages_in_shapes(county_db, [], [Circle(28.3, 112.95, 100)])
    assert smallest_target(county_db, every) == {"all": True}


def test_area_maths() -> None:
    square = [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0), (0.0, 0.0)]
    assert point_in_polygon(0.5, 0.5, square)
    assert not point_in_polygon(1.5, 0.5, square)
    # one degree of latitude is ~111.2 km everywhere
    assert distance_km((28.0, 113.0), (29.0, 113.0)) == pytest.approx(111.2, abs=0.2)


def test_targets_by_code_polygon_and_circle(county_db: Session) -> None:
    officer = Principal("duty", Role.DUTY_OFFICER)
    by_code = resolve(county_db, TargetsIn(areas=["430131102", "430131101203"]), officer)
    assert by_code.target.townships == ("t02",) and by_code.target.villages == ("t01-v03",)
    devices = county_db.exec(select(Device)).all()
    assert set(by_code.device_ids) == {
        d.id for d in devices if d.township_id == "t02" or d.village_id == "t01-v03"
    }
    assert resolve(county_db, TargetsIn(areas=["430131"]), officer).target.townships == (
        "t01",
        "t02",
        "t03",
    )
    ring = [(28.21, 112.86), (28.23, 112.86), (28.23, 112.88), (28.21, 112.88), (28.21, 112.86)]
    assert resolve(county_db, TargetsIn(polygons=[ring]), officer).target.villages == ("t01-v03",)
    circle = TargetsIn.model_validate(
        {"circles": [{"lat": 28.2184, "lon": 112.8679, "radius_km": 1}]}
    )
    assert resolve(county_db, circle, officer).target.villages == ("t01-v03",)
    for wrong, field in (
        (TargetsIn(areas=["430132"]), "targets.areas[0]"),
        (
            TargetsIn.model_validate({"circles": [{"lat": 0, "lon": 0, "radius_km": 1}]}),
            "targets.circles[0]",
        ),
    ):
        with pytest.raises(ApiError) as caught:
            resolve(county_db, wrong, officer)
        assert caught.value.field == field
    with pytest.raises(ValueError, match="closed ring"):
        TargetsIn(polygons=[ring[:-1]])
    with pytest.raises(ValueError, match="2-12 digits"):
        TargetsIn(areas=["43013x"])
    # A code reaches only what the caller may reach.
    clerk = Principal("clerk", Role.TOWNSHIP_STAFF, "t01")
    assert resolve(county_db, TargetsIn(areas=["430131101"]), clerk).target.townships == ("t01",)
    with pytest.raises(ApiError) as caught:
        resolve(county_db, TargetsIn(areas=["430131102"]), clerk)
    assert caught.value.status == 403


def _signing_key(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A key and its certificate (our private CA's: ECDSA P-256), as a source would hold."""
    ca = CertificateAuthority.load_or_create(directory)
    key = serialization.load_pem_private_key(ca.key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, ca.cert_file.read_text()


def test_a_sources_signature_over_the_exact_bytes(tmp_path: Path) -> None:
    key, pem = _signing_key(tmp_path / "a")
    other, _ = _signing_key(tmp_path / "b")
    raw = fixture("oasis_amber.xml")

    def sign(k: ec.EllipticCurvePrivateKey, data: bytes) -> str:
        return base64.b64encode(k.sign(data, ec.ECDSA(hashes.SHA256()))).decode()

    verify_signature(raw, sign(key, raw), pem)
    for header, code in (
        (None, "signature_missing"),
        ("not base64!", "signature_invalid"),
        (sign(key, raw + b" "), "signature_invalid"),
        (sign(other, raw), "signature_invalid"),
    ):
        with pytest.raises(ApiError) as caught:
            verify_signature(raw, header, pem)
        assert (caught.value.status, caught.value.code) == (401, code)
