"""Signatures on packages: the county signs what it sends up with its own key, and
accepts from above only what a configured key of the upper platform signed.

The signature is over the exact bytes of the message file (`EBDB_<EBDID>.xml`), so no XML
canonicalisation is needed and nothing between parsing and verifying can be altered. The
schemes are dalaba.signing's: SM2 with SM3 (the standards' scheme; `tongsuopy`, the `sm2`
extra) or Ed25519. A county configured for SM2 without tongsuopy installed fails at start
with the message naming the package to install, never by signing with something else.
"""

from __future__ import annotations

import base64
import binascii
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from controller.upstream import fields as f
from dalaba.signing import (
    KeyFileSigner,
    TrustedKey,
    load_or_create_signer,
    load_trusted,
    verifier_set_from_pem,
)


class SignatureRefused(Exception):
    pass


class PackageSigner:
    def __init__(self, signer: KeyFileSigner) -> None:
        self._signer = signer

    @classmethod
    def load_or_create(cls, scheme: str, path: Path) -> PackageSigner:
        return cls(load_or_create_signer(scheme, path))

    def public_pem(self) -> bytes:
        """What the upper platform must be given to trust this county."""
        return self._signer.trust_pem()

    def signature_file(self, message: bytes, ebd_id: str, when: str) -> bytes:
        signer = self._signer
        cert = ET.Element(f.SIG_CERT)
        if signer.cert_sn:
            ET.SubElement(cert, f.SIG_CERT_SN).text = signer.cert_sn
        ET.SubElement(cert, f.SIG_KEY_ID).text = signer.kid
        root = ET.Element(f.SIG_ROOT)
        ET.SubElement(root, f.EBD_ID).text = ebd_id
        root.append(cert)
        ET.SubElement(root, f.SIG_ALGORITHM).text = signer.alg
        ET.SubElement(root, f.SIG_TIME).text = when
        ET.SubElement(root, f.SIG_VALUE).text = base64.b64encode(signer.sign(message)).decode()
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)


class PackageVerifier:
    """The upper platform's keys (public keys or certificates, PEM). With none
    configured every package is refused: an unconfigured link must not obey anyone."""

    def __init__(self, pems: Sequence[bytes]) -> None:
        self._trusted: list[TrustedKey] = [load_trusted(pem) for pem in pems]
        self._verifiers = verifier_set_from_pem(list(pems))

    @classmethod
    def from_files(cls, paths: Sequence[Path]) -> PackageVerifier:
        pems = []
        for path in paths:
            try:
                pems.append(path.read_bytes())
            except OSError as exc:
                raise ValueError(f"upstream_trusted_keys: {path}: {exc.strerror}") from None
        try:
            return cls(pems)
        except ValueError as exc:
            raise ValueError(f"upstream_trusted_keys: {exc}") from None

    def verify(self, message: bytes, signature: ET.Element, ebd_id: str) -> None:
        if not self._trusted:
            raise SignatureRefused("no key of the upper platform is configured")
        if signature.tag != f.SIG_ROOT:
            raise SignatureRefused(f"the signature file's root is not <{f.SIG_ROOT}>")
        if (signature.findtext(f.EBD_ID) or "").strip() != ebd_id:
            raise SignatureRefused("the signature file names another package")
        alg = (signature.findtext(f.SIG_ALGORITHM) or "").strip()
        key_id = (signature.findtext(f"{f.SIG_CERT}/{f.SIG_KEY_ID}") or "").strip()
        cert_sn = (signature.findtext(f"{f.SIG_CERT}/{f.SIG_CERT_SN}") or "").strip().upper()
        try:
            value = base64.b64decode(signature.findtext(f.SIG_VALUE) or "", validate=True)
        except (binascii.Error, ValueError):
            raise SignatureRefused("the signature value is not base64") from None
        candidates = [
            k
            for k in self._trusted
            if k.alg == alg and ((key_id and k.kid == key_id) or (cert_sn and k.cert_sn == cert_sn))
        ]
        if not candidates:
            raise SignatureRefused(f"signed by a key that is not configured ({alg or 'no alg'})")
        if not any(self._verifiers.verify(alg, k.kid, message, value) for k in candidates):
            raise SignatureRefused("the signature does not verify")
