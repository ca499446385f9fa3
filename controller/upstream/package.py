"""The package codec: a tar of the message `EBDB_<EBDID>.xml`, its signature file
`EBDS_EBDB_<EBDID>.xml` and, for an EBM that carries its audio, that one file.

A package comes from outside the county, so it is read as an attacker could have written
it: a plain (uncompressed) tar no larger than the configured limit; only regular files
with plain names (no directory, no `..`, no link, no device), at most three of them, each
within the limit and each read into memory (nothing is ever extracted to disk); the XML by
defusedxml with no DTD at all (no entities, so no entity-expansion bomb and no external
entity). Every refusal carries the receipt's result code (fields.ResultCode).
"""

from __future__ import annotations

import io
import re
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from controller.upstream import fields as f
from controller.upstream.signature import PackageSigner, PackageVerifier, SignatureRefused

MAX_MEMBERS = 3
MAX_XML_BYTES = 1024 * 1024
# A member name: letters, digits, `_`, `-` and one dot-suffix; nothing that is a path.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,120}(\.[A-Za-z0-9]{1,8})?$")


class PackageRefused(Exception):
    """The package cannot be processed; `code` is the receipt's result code."""

    def __init__(self, code: f.ResultCode, reason: str, ebd_id: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.ebd_id = ebd_id


@dataclass
class Package:
    ebd_id: str
    ebd_type: f.EbdType
    src: str
    dest: str
    sent: str
    body: ET.Element  # the element named as the type (e.g. <EBM>), or the root if absent
    message: bytes  # EBDB_<id>.xml exactly as received
    files: dict[str, bytes] = field(default_factory=dict)  # other members (audio)


def read_package(data: bytes, verifier: PackageVerifier, *, max_bytes: int) -> Package:
    """Open, check and verify a package; raises PackageRefused."""
    members = _members(data, max_bytes)
    messages = [n for n in members if n.startswith(f.MESSAGE_PREFIX)]
    if len(messages) != 1:
        raise PackageRefused(
            f.ResultCode.CONTENT_MISSING if not messages else f.ResultCode.PARSE_FAILED,
            f"expected one {f.MESSAGE_PREFIX}<EBDID>.xml, found {len(messages)}",
        )
    name = messages[0]
    ebd_id = name[len(f.MESSAGE_PREFIX) : -len(f.XML_SUFFIX)]
    if not name.endswith(f.XML_SUFFIX) or not f.EBD_ID_PATTERN.match(ebd_id):
        raise PackageRefused(f.ResultCode.PARSE_FAILED, f"{name}: not EBDB_<EBDID>.xml")
    message = members.pop(name)
    signature = members.pop(f.signature_member(ebd_id), None)
    if signature is None:
        raise PackageRefused(
            f.ResultCode.SIGNATURE_FAILED, f"{f.signature_member(ebd_id)} missing", ebd_id
        )
    root = parse_xml(message, ebd_id)
    try:
        verifier.verify(message, parse_xml(signature, ebd_id), ebd_id)
    except SignatureRefused as exc:
        raise PackageRefused(f.ResultCode.SIGNATURE_FAILED, str(exc), ebd_id) from None
    header = _header(root, ebd_id)
    if header["ebd_id"] != ebd_id:
        raise PackageRefused(
            f.ResultCode.PARSE_FAILED, f"{f.EBD_ID} differs from the member name", ebd_id
        )
    try:
        ebd_type = f.EbdType(header["type"])
    except ValueError:
        raise PackageRefused(
            f.ResultCode.OTHER, f"{f.EBD_TYPE} {header['type']!r} is not handled", ebd_id
        ) from None
    body = root.find(ebd_type.value)
    if body is None:
        raise PackageRefused(f.ResultCode.CONTENT_MISSING, f"no <{ebd_type.value}>", ebd_id)
    return Package(
        ebd_id=ebd_id,
        ebd_type=ebd_type,
        src=header["src"],
        dest=header["dest"],
        sent=header["time"],
        body=body,
        message=message,
        files=members,
    )


def _members(data: bytes, max_bytes: int) -> dict[str, bytes]:
    if len(data) > max_bytes:
        raise PackageRefused(f.ResultCode.OTHER, f"larger than {max_bytes} bytes")
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise PackageRefused(f.ResultCode.PARSE_FAILED, "too many members")
                if not member.isreg():
                    raise PackageRefused(
                        f.ResultCode.PARSE_FAILED, f"{member.name!r}: not a regular file"
                    )
                if not _PLAIN_NAME.match(member.name) or member.name in out:
                    raise PackageRefused(
                        f.ResultCode.PARSE_FAILED, f"{member.name!r}: not a plain file name"
                    )
                if member.size > max_bytes:
                    raise PackageRefused(f.ResultCode.OTHER, f"{member.name}: too large")
                stream = tar.extractfile(member)
                assert stream is not None  # a regular file
                out[member.name] = stream.read(member.size)
    except (tarfile.TarError, EOFError) as exc:
        raise PackageRefused(f.ResultCode.PARSE_FAILED, f"not a tar: {exc}") from None
    if not out:
        raise PackageRefused(f.ResultCode.CONTENT_MISSING, "an empty package")
    return out


def parse_xml(data: bytes, ebd_id: str = "") -> ET.Element:
    if len(data) > MAX_XML_BYTES:
        raise PackageRefused(f.ResultCode.PARSE_FAILED, "XML larger than 1 MiB", ebd_id)
    try:
        return fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise PackageRefused(
            f.ResultCode.PARSE_FAILED, f"XML refused ({type(exc).__name__})", ebd_id
        ) from None
    except ET.ParseError as exc:
        raise PackageRefused(f.ResultCode.PARSE_FAILED, f"malformed XML: {exc}", ebd_id) from None


def text_of(element: ET.Element, path: str) -> str:
    found = element.find(path) if path else element
    return (found.text or "").strip() if found is not None else ""


def _header(root: ET.Element, ebd_id: str) -> dict[str, str]:
    if root.tag != f.ROOT:
        raise PackageRefused(f.ResultCode.PARSE_FAILED, f"root is not <{f.ROOT}>", ebd_id)
    return {
        "ebd_id": text_of(root, f.EBD_ID),
        "type": text_of(root, f.EBD_TYPE),
        "src": text_of(root, f"{f.SRC}/{f.EBR_ID}"),
        "dest": text_of(root, f"{f.DEST}/{f.EBR_ID}"),
        "time": text_of(root, f.EBD_TIME),
    }


def read_ebm(body: ET.Element) -> f.Ebm:
    """The EBM's fields as sent, by the one table (fields.EBM_FIELDS)."""
    values = {
        attr: text_of(body, f"{parent}/{name}" if parent else name)
        for attr, (parent, name) in f.EBM_FIELDS.items()
    }
    return f.Ebm(**values)


# ------------------------------------------------------------------ writing


def element(tag: str, text: str | int | float | None = None, *children: ET.Element) -> ET.Element:
    node = ET.Element(tag)
    if text is not None:
        node.text = str(text)
    node.extend(children)
    return node


def new_ebd_id(own_id: str) -> str:
    """Our resource code + a 16-digit sequence from the clock (GUESSED shape)."""
    return f"{own_id}{time.time_ns() // 1000 % 10**16:016d}"


def build_package(
    ebd_type: f.EbdType,
    body: ET.Element,
    *,
    own_id: str,
    dest_id: str,
    signer: PackageSigner,
    zone: ZoneInfo,
    now_ms: int,
    ebd_id: str | None = None,
    related: str | None = None,
    files: dict[str, bytes] | None = None,
) -> tuple[str, bytes]:
    """A signed package: (its EBDID, the tar's bytes)."""
    ebd_id = ebd_id or new_ebd_id(own_id)
    root = element(
        f.ROOT,
        None,
        element(f.VERSION, f.EBD_VERSION),
        element(f.EBD_ID, ebd_id),
        element(f.EBD_TYPE, ebd_type.value),
        element(f.SRC, None, element(f.EBR_ID, own_id)),
        element(f.DEST, None, element(f.EBR_ID, dest_id)),
        element(f.EBD_TIME, f.format_time(now_ms, zone)),
    )
    if related:
        root.append(element(f.RELATED_EBD, None, element(f.EBD_ID, related)))
    root.append(body)
    message = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    signature = signer.signature_file(message, ebd_id, f.format_time(now_ms, zone))
    members = {f.message_member(ebd_id): message, f.signature_member(ebd_id): signature}
    members.update(files or {})
    return ebd_id, tar_of(members, now_ms)


def tar_of(members: dict[str, bytes], now_ms: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = now_ms // 1000
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
