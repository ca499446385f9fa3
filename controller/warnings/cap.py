"""CAP 1.2 in: bytes -> a validated `IncomingWarning`, or an `ApiError` (4xx) naming what
is wrong, before anything is stored.

The XML is parsed by defusedxml with DTDs forbidden outright (no entity expansion, no
external entity, no "billion laughs"), then validated against the OASIS CAP 1.2 schema
shipped in schema/ by xmlschema, which is given the parsed tree, never the raw bytes.

Mapping (docs/upstream.md, "CAP 1.2"): the `<info>` in Chinese (zh-CN, zh, zho, any
zh-*) is the one spoken, else the first; its `<area>`s target: geocode values of 6, 9 or
12 digits are administrative codes (prefixes), polygons and circles select villages by
their coordinates. References ("sender,identifier,sent" triples) become identifiers.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as safe_et
import xmlschema
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from controller.areas import Circle, Point
from controller.errors import ApiError
from controller.warnings.intake import IncomingWarning

NS = "urn:oasis:names:tc:emergency:cap:1.2"
SCHEMA_FILE = Path(__file__).parent / "schema" / "CAP-v1.2.xsd"
CONTENT_TYPES = frozenset({"application/cap+xml", "application/xml", "text/xml"})
SIGNATURE_HEADER = "X-CAP-Signature"
# The alert's header elements, in the schema's order: each is named when missing.
REQUIRED = ("identifier", "sender", "sent", "status", "msgType", "scope")
CHINESE = ("zh", "zho", "chi", "cmn")
# Geocode names that are not Chinese administrative codes although numeric (US examples).
FOREIGN_GEOCODES = frozenset({"SAME", "FIPS6", "UGC"})
MAX_POINTS = 2000


def _q(name: str) -> str:
    return f"{{{NS}}}{name}"


@cache
def schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(SCHEMA_FILE))


def cap_error(code: str, field: str, message: str, status: int = 400) -> ApiError:
    return ApiError(status, code, f"{field}: {message}", field)


def parse_alert(raw: bytes) -> Element:
    """The `<alert>` element of `raw`, refused unless it is well-formed XML without any
    DTD, in the CAP 1.2 namespace, valid against the schema."""
    try:
        root = safe_et.fromstring(raw, forbid_dtd=True, forbid_entities=True)
    except defusedxml.DefusedXmlException as exc:
        raise cap_error(
            "cap_forbidden_xml", "body", f"DTDs and entities are refused ({type(exc).__name__})"
        ) from None
    except (ParseError, ValueError) as exc:
        raise cap_error("cap_malformed", "body", f"not well-formed XML ({exc})") from None
    if root.tag != _q("alert"):
        raise cap_error(
            "cap_namespace",
            "alert",
            f"the root must be <alert> in {NS}, not {root.tag}",
        )
    for name in REQUIRED:
        found = root.find(_q(name))
        if found is None or not (found.text or "").strip():
            raise cap_error("cap_missing", f"alert.{name}", "missing or empty")
    error = next(schema().iter_errors(root), None)
    if error is not None:
        where = (error.path or "alert").strip("/").replace("/", ".")
        where = where.replace(f"{{{NS}}}", "").replace("cap:", "")
        reason = (error.reason or str(error.message)).splitlines()[0][:300]
        raise cap_error("cap_invalid", where, reason)
    return root


def _text(el: Element | None, name: str) -> str:
    if el is None:
        return ""
    found = el.find(_q(name))
    return (found.text or "").strip() if found is not None else ""


def _instant_ms(value: str, field: str) -> int | None:
    if not value:
        return None
    try:
        return int(datetime.fromisoformat(value).timestamp() * 1000)
    except ValueError:
        raise cap_error("cap_invalid", field, f"not a date-time: {value!r}") from None


def chosen_info(root: Element) -> Element | None:
    """The Chinese `<info>` if there is one, else the first."""
    infos = root.findall(_q("info"))
    for info in infos:
        language = _text(info, "language").lower()
        if language.split("-")[0] in CHINESE:
            return info
    return infos[0] if infos else None


def _point(pair: str, field: str) -> Point:
    try:
        lat_s, lon_s = pair.split(",")
        lat, lon = float(lat_s), float(lon_s)
    except ValueError:
        raise cap_error("cap_area", field, f"{pair!r} is not lat,lon") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise cap_error("cap_area", field, f"{pair!r} is outside WGS84 range")
    return lat, lon


def parse_polygon(value: str, field: str) -> list[Point]:
    pairs = value.split()
    if len(pairs) > MAX_POINTS:
        raise cap_error("cap_area", field, f"more than {MAX_POINTS} points")
    ring = [_point(pair, field) for pair in pairs]
    if len(ring) < 4 or ring[0] != ring[-1]:
        raise cap_error("cap_area", field, "a closed ring of at least 4 points is required")
    return ring


def parse_circle(value: str, field: str) -> Circle:
    try:
        centre, radius_s = value.split()
        radius = float(radius_s)
    except ValueError:
        raise cap_error("cap_area", field, f"{value!r} is not 'lat,lon radius-km'") from None
    if not 0 <= radius <= 2000:
        raise cap_error("cap_area", field, "radius in km, 0-2000")
    lat, lon = _point(centre, field)
    return Circle(lat, lon, radius)


def warning_from_alert(
    root: Element, raw: bytes, *, source_id: str, content_type: str
) -> IncomingWarning:
    info = chosen_info(root)
    references = []
    for triple in _text(root, "references").split():
        parts = triple.split(",")
        if len(parts) != 3:
            raise cap_error(
                "cap_invalid", "alert.references", f"{triple!r}: sender,identifier,sent"
            )
        references.append(parts[1])
    codes: list[str] = []
    polygons: list[list[Point]] = []
    circles: list[Circle] = []
    descs: list[str] = []
    audio = None
    if info is not None:
        for a, area in enumerate(info.findall(_q("area"))):
            descs.append(_text(area, "areaDesc"))
            for p_, poly in enumerate(area.findall(_q("polygon"))):
                field = f"alert.info.area[{a}].polygon[{p_}]"
                polygons.append(parse_polygon(poly.text or "", field))
            for c, circ in enumerate(area.findall(_q("circle"))):
                circles.append(parse_circle(circ.text or "", f"alert.info.area[{a}].circle[{c}]"))
            for geo in area.findall(_q("geocode")):
                name, value = _text(geo, "valueName"), _text(geo, "value")
                numeric = value.isdigit() and len(value) in (6, 9, 12)
                if numeric and name.upper() not in FOREIGN_GEOCODES:
                    codes.append(value)
        for res in info.findall(_q("resource")):
            if _text(res, "mimeType").startswith("audio/") and _text(res, "uri"):
                audio = _text(res, "uri")
    onset = _text(info, "onset") or _text(info, "effective")
    return IncomingWarning(
        source_id=source_id,
        protocol="cap",
        identifier=_text(root, "identifier"),
        sender=_text(root, "sender"),
        sent=_text(root, "sent"),
        msg_type=_text(root, "msgType").lower(),  # type: ignore[arg-type]  # schema-checked
        status=_text(root, "status").lower(),  # type: ignore[arg-type]
        raw=raw,
        content_type=content_type,
        references=references,
        severity=_text(info, "severity") or None,
        urgency=_text(info, "urgency") or None,
        certainty=_text(info, "certainty") or None,
        event=_text(info, "event"),
        category_hint=" ".join(
            (c.text or "") for c in (info.findall(_q("category")) if info is not None else [])
        ),
        language=_text(info, "language"),
        headline=_text(info, "headline"),
        description=_text(info, "description"),
        instruction=_text(info, "instruction"),
        audio_url=audio,
        area_codes=codes,
        polygons=polygons,
        circles=circles,
        area_desc="; ".join(d for d in descs if d)[:500],
        starts_at_ms=_instant_ms(onset, "alert.info.onset"),
        expires_at_ms=_instant_ms(_text(info, "expires"), "alert.info.expires"),
        detail={
            "sender_name": _text(info, "senderName"),
            "severity": _text(info, "severity"),
            "urgency": _text(info, "urgency"),
            "certainty": _text(info, "certainty"),
            "language": _text(info, "language"),
            "infos": len(root.findall(_q("info"))),
        },
    )


def verify_signature(raw: bytes, header: str | None, certificate_pem: str) -> None:
    """A detached signature over the exact bytes posted (base64 in `X-CAP-Signature`),
    by the key of the source's configured certificate: RSA (PKCS#1 v1.5, SHA-256),
    ECDSA (SHA-256) or Ed25519. Enveloped XML-DSig is not checked (docs/upstream.md)."""
    if not header:
        raise cap_error("signature_missing", SIGNATURE_HEADER, "this source must sign", 401)
    try:
        signature = base64.b64decode(header, validate=True)
    except (binascii.Error, ValueError):
        raise cap_error("signature_invalid", SIGNATURE_HEADER, "not base64", 401) from None
    key: Any = x509.load_pem_x509_certificate(certificate_pem.encode()).public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, raw, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, raw, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, raw)
        else:
            raise cap_error("signature_invalid", SIGNATURE_HEADER, "unsupported key", 401)
    except InvalidSignature:
        raise cap_error(
            "signature_invalid", SIGNATURE_HEADER, "does not match the certificate", 401
        ) from None
