"""The package codec (controller/upstream/package.py, signature.py): round trips signed
with Ed25519 and with SM2/SM3, and every refusal with its receipt result code."""

from __future__ import annotations

import tarfile
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from controller.upstream import fields as f
from controller.upstream.package import (
    PackageRefused,
    build_package,
    element,
    read_ebm,
    read_package,
    tar_of,
)
from controller.upstream.signature import PackageSigner, PackageVerifier
from tests.upstream_standin import members_of, with_odd_member

ZONE = ZoneInfo("Asia/Shanghai")
NOW = 1795996800000
LIMIT = 1_000_000


def signer(tmp_path: Path, scheme: str = "ed25519", name: str = "p") -> PackageSigner:
    return PackageSigner.load_or_create(scheme, tmp_path / f"{name}-{scheme}.pem")


def ebm_package(s: PackageSigner, **kw: object) -> bytes:
    body = element(
        "EBM",
        None,
        element("EBMID", "0" * 30),
        element("MsgBasicInfo", None, element("MsgType", 1)),
        element("MsgContent", None, element("MsgTitle", "暴雨"), element("AreaCode", "500101")),
    )
    return build_package(
        f.EbdType.EBM,
        body,
        own_id="1" * 18,
        dest_id="2" * 18,
        signer=s,
        zone=ZONE,
        now_ms=NOW,
        **kw,  # type: ignore[arg-type]
    )[1]


@pytest.mark.parametrize("scheme", ["ed25519", "sm2"])
def test_round_trip(tmp_path: Path, scheme: str) -> None:
    if scheme == "sm2":
        pytest.importorskip("tongsuopy", reason="SM2 needs the sm2 extra (tongsuopy)")
    s = signer(tmp_path, scheme)
    package = read_package(ebm_package(s), PackageVerifier([s.public_pem()]), max_bytes=LIMIT)
    assert package.ebd_type is f.EbdType.EBM
    assert (package.src, package.dest) == ("1" * 18, "2" * 18)
    ebm = read_ebm(package.body)
    assert (ebm.msg_type, ebm.title, ebm.area_codes) == ("1", "暴雨", "500101")
    signature = members_of(ebm_package(s))
    sig_name = next(n for n in signature if n.startswith("EBDS_"))
    assert (b"SM2-SM3" if scheme == "sm2" else b"ed25519") in signature[sig_name]


def refused(data: bytes, verifier: PackageVerifier) -> PackageRefused:
    with pytest.raises(PackageRefused) as caught:
        read_package(data, verifier, max_bytes=LIMIT)
    return caught.value


def test_refusals_carry_their_result_code(tmp_path: Path) -> None:
    s = signer(tmp_path)
    trust = PackageVerifier([s.public_pem()])
    good = members_of(ebm_package(s))
    msg = next(n for n in good if n.startswith("EBDB_"))
    sig = next(n for n in good if n.startswith("EBDS_"))
    other = signer(tmp_path, name="other")

    def tar(m: dict[str, bytes]) -> bytes:
        return tar_of(m, NOW)

    tampered = good[msg].replace("暴雨".encode(), "晴天".encode())
    cases: list[tuple[str, bytes, PackageVerifier, f.ResultCode]] = [
        ("no key configured", tar(good), PackageVerifier([]), f.ResultCode.SIGNATURE_FAILED),
        ("another key", ebm_package(other), trust, f.ResultCode.SIGNATURE_FAILED),
        ("tampered", tar({**good, msg: tampered}), trust, f.ResultCode.SIGNATURE_FAILED),
        ("no signature file", tar({msg: good[msg]}), trust, f.ResultCode.SIGNATURE_FAILED),
        ("no message", tar({sig: good[sig]}), trust, f.ResultCode.CONTENT_MISSING),
        ("not a tar", b"not a tar at all" * 50, trust, f.ResultCode.PARSE_FAILED),
        ("empty tar", b"\x00" * 1024, trust, f.ResultCode.CONTENT_MISSING),
        ("gzip", _gzip(tar(good)), trust, f.ResultCode.PARSE_FAILED),
        (
            "traversal",
            tar({"../" + msg: good[msg], sig: good[sig]}),
            trust,
            f.ResultCode.PARSE_FAILED,
        ),
        (
            "absolute",
            tar({"/tmp/" + msg: good[msg], sig: good[sig]}),
            trust,
            f.ResultCode.PARSE_FAILED,
        ),
        ("too many", tar({**good, "a.mp3": b"1", "b.mp3": b"2"}), trust, f.ResultCode.PARSE_FAILED),
        ("too big", tar(good) + b"\x00" * LIMIT, trust, f.ResultCode.OTHER),
        ("malformed", tar({**good, msg: b"<EBD>"}), trust, f.ResultCode.PARSE_FAILED),
        (
            "dtd",
            tar(
                {
                    **good,
                    msg: b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><EBD>&e;</EBD>',
                }
            ),
            trust,
            f.ResultCode.PARSE_FAILED,
        ),
    ]
    for name, data, verifier, code in cases:
        assert refused(data, verifier).code is code, name


def test_links_directories_and_devices_are_refused(tmp_path: Path) -> None:
    s = signer(tmp_path)
    good = ebm_package(s)
    for kind in (
        tarfile.SYMTYPE,
        tarfile.LNKTYPE,
        tarfile.DIRTYPE,
        tarfile.CHRTYPE,
        tarfile.FIFOTYPE,
    ):
        caught = refused(with_odd_member(good, kind), PackageVerifier([s.public_pem()]))
        assert caught.code is f.ResultCode.PARSE_FAILED, kind


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)


def test_a_long_broadcast_log_goes_up_in_several_packages() -> None:
    from controller.upstream.service import MAX_LOG_ITEMS, Snapshot, _report_bodies

    row = {
        "ebm_id": "0" * 30,
        "resource_code": "1" * 18,
        "state": "done",
        "start_ms": NOW,
        "updated_ms": NOW,
        "title": "暴雨",
    }
    snap = Snapshot(
        start_ms=NOW - 3_600_000,
        end_ms=NOW,
        full=False,
        log=[row] * (2 * MAX_LOG_ITEMS + 1),
        truncated=False,
        devices=[],
        online_rate=None,
        online=0,
        total=0,
        now_ms=NOW,
    )
    bodies = _report_bodies(snap, "3" * 18, ZONE)
    logs = [(body, n) for kind, body, n in bodies if kind is f.EbdType.BROADCAST_LOG]
    assert [n for _, n in logs] == [MAX_LOG_ITEMS, MAX_LOG_ITEMS, 1]
    assert [len(body.findall(f.LOG_ITEM)) for body, _ in logs] == [MAX_LOG_ITEMS, MAX_LOG_ITEMS, 1]
    empty = _report_bodies(Snapshot(**{**snap.__dict__, "log": []}), "3" * 18, ZONE)
    assert [n for kind, _, n in empty if kind is f.EbdType.BROADCAST_LOG] == [0]


def test_reports_up_need_the_county_resource_code() -> None:
    from pydantic import ValidationError

    from controller.settings import Settings

    with pytest.raises(ValidationError, match="upstream_resource_code"):
        Settings(demo=True, upstream_url="https://platform.example/ebd")
    with pytest.raises(ValidationError, match="upstream_resource_code"):
        Settings(demo=True, upstream_resource_code="12345")
    ok = Settings(demo=True, upstream_url="https://p.example/ebd", upstream_resource_code="1" * 18)
    assert ok.upstream_key_path.name == "upstream-ed25519.pem"
