"""Signature schemes for commands sent to terminals.

Everything else talks to the small `Signer` / `Verifier` interfaces; each scheme is one
pair of classes registered under its own `alg` name, so the protocol, the controller
and the agent do not change with the scheme. Two are here:

- `ed25519` (the default): Ed25519 from `cryptography`.
- `SM2-SM3`: the national scheme the Chinese emergency-broadcast standards ask for
  (GB/T 32918.2 / GM/T 0003.2 signature, SM3 digest over Z‖M with the default signer
  id `1234567812345678` of GM/T 0009), from `tongsuopy`, the Python binding of Tongsuo
  (formerly BabaSSL: the OpenAtom Foundation's OpenSSL fork for the national
  algorithms; `cryptography` has SM3 but no SM2 curve). Signatures are DER
  `SEQUENCE { r INTEGER, s INTEGER }` (GM/T 0009's SM2Signature), as OpenSSL and
  national CA tooling write them. `tongsuopy` is imported on first use only, so an
  Ed25519-only terminal does not need it installed.

A controller key may come with an X.509 certificate (`<key>.crt` beside the key file):
its serial then travels in every envelope (`cert_sn`), and terminals may hold that
certificate instead of the bare public key. Either way a terminal trusts exactly the keys
in its key file, by key id; it does not validate certificate chains or dates, because
a terminal that stopped obeying emergencies when a certificate lapsed would be worse
than one that trusts a pinned key.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, Protocol, Self

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

ED25519 = "ed25519"
SM2_SM3 = "SM2-SM3"
# GM/T 0009-2012's default signer id, hashed into Z; what national-crypto libraries and
# CAs use unless told otherwise. Tongsuo uses it when none is set (tongsuopy cannot set
# another); tests/unit/test_signing.py pins it with signatures made by OpenSSL and GmSSL.
SM2_USER_ID = b"1234567812345678"
# The SM2 curve's order n: r and s of a valid signature lie in [1, n-1].
_SM2_N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
# DER of the SM2 curve's OID 1.2.156.10197.1.301, as it appears in a public key's
# SubjectPublicKeyInfo (id-ecPublicKey with this named curve).
_SM2_CURVE_OID_DER = bytes.fromhex("06082a811ccf5501822d")


class Signer(Protocol):
    alg: str
    kid: str
    cert_sn: str | None  # serial of the certificate that vouches for the key, if any

    def sign(self, data: bytes) -> bytes: ...


class Verifier(Protocol):
    alg: str

    def verify(self, kid: str, data: bytes, signature: bytes) -> bool: ...


def key_id(public_bytes: bytes) -> str:
    """A short, stable name for a public key, so keys can be rotated side by side: the
    first 16 hex digits of SHA-256 of the raw Ed25519 key (32 bytes) or of the SM2 point
    uncompressed (65 bytes, 04‖x‖y)."""
    return hashlib.sha256(public_bytes).hexdigest()[:16]


@functools.cache
def _sm2() -> SimpleNamespace:
    try:
        from tongsuopy.crypto import exceptions, hashes
        from tongsuopy.crypto import serialization as tser
        from tongsuopy.crypto.asymciphers import ec
    except ImportError:
        raise RuntimeError(
            "SM2-SM3 signatures need the tongsuopy package (pip install tongsuopy==1.0.1)"
        ) from None
    return SimpleNamespace(ec=ec, hashes=hashes, ser=tser, exc=exceptions)


# --------------------------------------------------------------------------- signers


class KeyFileSigner:
    """What both controller signers share: a PKCS#8 PEM key file, created on first run,
    and an optional certificate beside it."""

    alg: str
    public_bytes: bytes
    kid: str
    cert_sn: str | None = None
    certificate: bytes | None = None  # PEM, as read

    def sign(self, data: bytes) -> bytes:
        raise NotImplementedError

    def public_pem(self) -> bytes:
        raise NotImplementedError

    def _private_pem(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def generate(cls) -> Self:
        raise NotImplementedError

    @classmethod
    def _from_private_pem(cls, pem: bytes, path: Path) -> Self:
        raise NotImplementedError

    def trust_pem(self) -> bytes:
        """What a terminal's key file holds for this signer (`controller_public_keys`):
        the certificate when there is one, else the public key."""
        return self.certificate or self.public_pem()

    def attach_certificate(self, pem: bytes) -> None:
        """Carry this certificate's serial in envelopes; refused unless it is for this
        very key (a certificate for another key would name the wrong signer)."""
        trusted = load_trusted(pem)
        if trusted.cert_sn is None:
            raise ValueError("not a certificate")
        if (trusted.alg, trusted.public_bytes) != (self.alg, self.public_bytes):
            raise ValueError("the certificate is for another key")
        self.certificate = pem
        self.cert_sn = trusted.cert_sn

    @staticmethod
    def certificate_path(key_path: Path) -> Path:
        return key_path.with_suffix(".crt")

    @classmethod
    def load_or_create(cls, path: Path) -> Self:
        """Load the controller's key, creating it (mode 0600) on first run, and the
        certificate at `<key>.crt` if there is one."""
        cert = cls.certificate_path(path)
        if path.exists():
            signer = cls._from_private_pem(path.read_bytes(), path)
        elif cert.exists():
            # A new key could never match it: the key it was issued for is missing.
            raise ValueError(f"{cert}: there, but not the key it was issued for ({path})")
        else:
            signer = cls._create(path)
        if cert.exists():
            try:
                signer.attach_certificate(cert.read_bytes())
            except ValueError as exc:
                raise ValueError(f"{cert}: {exc}") from None
        return signer

    @classmethod
    def _create(cls, path: Path) -> Self:
        """A new key at `path`, unless another process got there first: then its key.
        Controller replicas sharing a data directory start at the same moment, and a
        key file seen half-written would be a key no terminal trusts. So the key is
        written whole to a private temporary file and linked into place, which fails
        if the name exists; the loser reads the winner's complete file."""
        signer = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(signer._private_pem())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return cls._from_private_pem(path.read_bytes(), path)
        finally:
            tmp.unlink(missing_ok=True)
        return signer


class Ed25519Signer(KeyFileSigner):
    alg = ED25519

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.kid = key_id(self.public_bytes)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def public_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def _private_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def generate(cls) -> Ed25519Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def _from_private_pem(cls, pem: bytes, path: Path) -> Ed25519Signer:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError(f"{path}: not an Ed25519 private key (unencrypted PEM)") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return cls(key)


class Sm2Signer(KeyFileSigner):
    """SM2 with SM3 and the default signer id; DER signatures (see the module notes)."""

    alg = SM2_SM3

    def __init__(self, private_key: Any) -> None:
        sm2 = _sm2()
        if not isinstance(private_key, sm2.ec.EllipticCurvePrivateKey) or not isinstance(
            private_key.curve, sm2.ec.SM2
        ):
            raise ValueError("not an SM2 private key")
        self._key = private_key
        self._algorithm = sm2.ec.ECDSA(sm2.hashes.SM3())  # SM2 signing for an SM2 key
        self.public_bytes = _sm2_point(private_key.public_key())
        self.kid = key_id(self.public_bytes)

    def sign(self, data: bytes) -> bytes:
        signature: bytes = self._key.sign(data, self._algorithm)
        return signature

    def public_pem(self) -> bytes:
        sm2 = _sm2()
        pem: bytes = self._key.public_key().public_bytes(
            sm2.ser.Encoding.PEM, sm2.ser.PublicFormat.SubjectPublicKeyInfo
        )
        return pem

    def _private_pem(self) -> bytes:
        sm2 = _sm2()
        pem: bytes = self._key.private_bytes(
            sm2.ser.Encoding.PEM, sm2.ser.PrivateFormat.PKCS8, sm2.ser.NoEncryption()
        )
        return pem

    @classmethod
    def generate(cls) -> Sm2Signer:
        sm2 = _sm2()
        return cls(sm2.ec.generate_private_key(sm2.ec.SM2()))

    @classmethod
    def _from_private_pem(cls, pem: bytes, path: Path) -> Sm2Signer:
        sm2 = _sm2()
        try:
            key = sm2.ser.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, sm2.exc.UnsupportedAlgorithm):
            raise ValueError(f"{path}: not an SM2 private key (unencrypted PEM)") from None
        try:
            return cls(key)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


# What a county may set as Settings.signing_scheme.
SigningScheme = Literal["ed25519", "sm2"]

# Settings.signing_scheme -> the controller's signer. The key file differs per scheme
# (controller-<scheme>.pem), so switching a county's scheme never reads the other key.
SIGNERS: dict[str, type[KeyFileSigner]] = {
    "ed25519": Ed25519Signer,
    "sm2": Sm2Signer,
}


def load_or_create_signer(scheme: str, path: Path) -> KeyFileSigner:
    signer_class = SIGNERS.get(scheme)
    if signer_class is None:
        raise ValueError(f"signing_scheme: {scheme!r} is not one of {', '.join(SIGNERS)}")
    return signer_class.load_or_create(path)


# --------------------------------------------------------------------------- trusted keys


@dataclass(frozen=True)
class TrustedKey:
    """One entry of a terminal's key file, understood."""

    alg: str
    public_bytes: bytes  # raw Ed25519 key, or the SM2 point uncompressed
    key: Any  # the library's public key object
    cert_sn: str | None = None  # set when the key came inside a certificate

    @property
    def kid(self) -> str:
        return key_id(self.public_bytes)


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


def load_trusted(pem: str | bytes) -> TrustedKey:
    """Read one PEM block: an Ed25519 or SM2 `PUBLIC KEY`, or a `CERTIFICATE` for one.

    Exactly one block, so a pasted certificate chain cannot quietly make its CA's key a
    trusted command signer. Raises ValueError for anything else."""
    data = pem.encode() if isinstance(pem, str) else pem
    kinds = _PEM_BLOCK.findall(data)
    if len(kinds) != 1:
        raise ValueError(
            f"expected one PEM block (a public key or a certificate), got {len(kinds)}"
        )
    if kinds[0] == b"CERTIFICATE":
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError:
            raise ValueError("unreadable certificate") from None
        trusted = _from_spki(_spki_of_certificate(cert.tbs_certificate_bytes))
        return replace(trusted, cert_sn=serial_hex(cert.serial_number))
    if kinds[0] == b"PUBLIC KEY":
        try:
            der = serialization.load_pem_public_key(data).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        except UnsupportedAlgorithm:
            # cryptography parses the PEM but knows no SM2 curve; hand over the DER.
            der = _pem_body(data)
        except ValueError:
            raise ValueError("unreadable public key") from None
        return _from_spki(der)
    raise ValueError(
        f"unsupported PEM block {kinds[0].decode()!r}: give a PUBLIC KEY or a CERTIFICATE"
    )


def serial_hex(serial: int) -> str:
    """A certificate serial as OpenSSL prints it: upper-case hex, whole bytes."""
    text = f"{serial:X}"
    return text if len(text) % 2 == 0 else "0" + text


def _from_spki(der: bytes) -> TrustedKey:
    if _SM2_CURVE_OID_DER in der:
        sm2 = _sm2()
        try:
            key = sm2.ser.load_der_public_key(der)
        except (ValueError, sm2.exc.UnsupportedAlgorithm):
            raise ValueError("unreadable SM2 public key") from None
        if not isinstance(key.curve, sm2.ec.SM2):
            raise ValueError("not an SM2 public key")
        return TrustedKey(SM2_SM3, _sm2_point(key), key)
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("not an Ed25519 or SM2 public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"not an Ed25519 or SM2 public key ({type(key).__name__})")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return TrustedKey(ED25519, raw, key)


def _sm2_point(public_key: Any) -> bytes:
    sm2 = _sm2()
    point: bytes = public_key.public_bytes(
        sm2.ser.Encoding.X962, sm2.ser.PublicFormat.UncompressedPoint
    )
    return point


def _pem_body(data: bytes) -> bytes:
    found = re.search(rb"-----BEGIN [A-Z0-9 ]+-----(.*?)-----END ", data, re.DOTALL)
    if found is None:
        raise ValueError("unreadable public key")
    try:
        return base64.b64decode(b"".join(found.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("unreadable public key") from None


def _der_split(buf: bytes) -> tuple[int, bytes, bytes, bytes]:
    """The first DER element of `buf`: (tag, the element, its content, what follows)."""
    if len(buf) < 2:
        raise ValueError("truncated certificate")
    tag, first = buf[0], buf[1]
    if first < 0x80:
        start, length = 2, first
    else:
        n = first & 0x7F
        if not 1 <= n <= 4 or len(buf) < 2 + n:
            raise ValueError("bad length in certificate")
        start, length = 2 + n, int.from_bytes(buf[2 : 2 + n], "big")
    end = start + length
    if end > len(buf):
        raise ValueError("truncated certificate")
    return tag, buf[:end], buf[start:end], buf[end:]


def _spki_of_certificate(tbs: bytes) -> bytes:
    """The SubjectPublicKeyInfo of a TBSCertificate (RFC 5280 4.1), for keys that
    `cryptography` cannot load itself. The certificate has already been parsed by
    `cryptography`; this only steps over the fields before the key."""
    tag, _, body, rest = _der_split(tbs)
    if tag != 0x30 or rest:
        raise ValueError("bad certificate")
    fields: list[tuple[int, bytes]] = []
    while body and len(fields) < 7:
        tag, element, _, body = _der_split(body)
        fields.append((tag, element))
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    # serial, signature, issuer, validity, subject, subjectPublicKeyInfo
    if len(fields) < 6 or fields[5][0] != 0x30:
        raise ValueError("bad certificate")
    return fields[5][1]


# --------------------------------------------------------------------------- verifiers

# Signatures already verified in this process, by (public key, signature, exact bytes).
# A verification is a pure function of those, so remembering a success changes no
# outcome; it matters where one process holds many terminals (the simulator), which
# otherwise verify the same county-wide command thousands of times over. Only successes
# are kept, and only the most recent few.
_VERIFIED: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()
_VERIFIED_MAX = 256


def _seen(memo_key: tuple[bytes, bytes, bytes]) -> bool:
    if memo_key in _VERIFIED:
        _VERIFIED.move_to_end(memo_key)
        return True
    return False


def _remember(memo_key: tuple[bytes, bytes, bytes]) -> None:
    _VERIFIED[memo_key] = None
    if len(_VERIFIED) > _VERIFIED_MAX:
        _VERIFIED.popitem(last=False)


def _keys_for(alg: str, pems: tuple[bytes | str, ...]) -> list[Any]:
    keys = []
    for pem in pems:
        trusted = load_trusted(pem)
        if trusted.alg != alg:
            raise ValueError(f"not an {alg} public key")
        keys.append(trusted.key)
    return keys


class Ed25519Verifier:
    """Holds the controller public keys a terminal trusts, by key id."""

    alg = ED25519

    def __init__(self, public_keys: list[Ed25519PublicKey]) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._raw: dict[str, bytes] = {}
        for key in public_keys:
            raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            self._keys[key_id(raw)] = key
            self._raw[key_id(raw)] = raw

    @classmethod
    def from_pem(cls, *pems: bytes | str) -> Ed25519Verifier:
        """Ed25519 public keys, or certificates for them."""
        return cls(_keys_for(ED25519, pems))

    def verify(self, kid: str, data: bytes, signature: bytes) -> bool:
        key = self._keys.get(kid)
        if key is None:
            return False
        memo_key = (self._raw[kid], signature, data)
        if _seen(memo_key):
            return True
        try:
            key.verify(signature, data)
        except InvalidSignature:
            return False
        _remember(memo_key)
        return True


class Sm2Verifier:
    """Holds the controller's SM2 public keys a terminal trusts, by key id."""

    alg = SM2_SM3

    def __init__(self, public_keys: list[Any]) -> None:
        sm2 = _sm2()
        self._algorithm = sm2.ec.ECDSA(sm2.hashes.SM3())
        self._errors = (sm2.exc.InvalidSignature, sm2.exc.InternalError)
        self._keys: dict[str, Any] = {}
        self._point: dict[str, bytes] = {}
        for key in public_keys:
            if not isinstance(key, sm2.ec.EllipticCurvePublicKey) or not isinstance(
                key.curve, sm2.ec.SM2
            ):
                raise ValueError("not an SM2 public key")
            point = _sm2_point(key)
            self._keys[key_id(point)] = key
            self._point[key_id(point)] = point

    @classmethod
    def from_pem(cls, *pems: bytes | str) -> Sm2Verifier:
        """SM2 public keys, or certificates for them."""
        return cls(_keys_for(SM2_SM3, pems))

    def verify(self, kid: str, data: bytes, signature: bytes) -> bool:
        key = self._keys.get(kid)
        if key is None:
            return False
        memo_key = (self._point[kid], signature, data)
        if _seen(memo_key):
            return True
        # Only the one DER form is accepted, so a signature has one spelling (no
        # re-encoded look-alike of a genuine command gets past a replay check keyed on
        # bytes), and Tongsuo never sees the malformed input it answers with an
        # internal error rather than a plain "invalid".
        if not _canonical_sm2_der(signature):
            return False
        try:
            key.verify(signature, data, self._algorithm)
        except self._errors:
            return False
        _remember(memo_key)
        return True


def _canonical_sm2_der(signature: bytes) -> bool:
    if len(signature) > 72:  # SEQUENCE of two INTEGERs of at most 33 bytes
        return False
    try:
        r, s = decode_dss_signature(signature)
    except ValueError:
        return False
    return 0 < r < _SM2_N and 0 < s < _SM2_N and encode_dss_signature(r, s) == signature


class VerifierSet:
    """Dispatches to the verifier registered for the envelope's algorithm."""

    def __init__(self, *verifiers: Verifier) -> None:
        self._by_alg = {v.alg: v for v in verifiers}

    @property
    def algs(self) -> tuple[str, ...]:
        return tuple(self._by_alg)

    def verify(self, alg: str, kid: str, data: bytes, signature: bytes) -> bool:
        verifier = self._by_alg.get(alg)
        return verifier is not None and verifier.verify(kid, data, signature)


def verifier_set_from_pem(pems: Sequence[str | bytes]) -> VerifierSet:
    """A terminal's trust, from its key file's `controller_public_keys`: each entry an
    Ed25519 or SM2 public key, or a certificate for one; a verifier per scheme present.
    Raises ValueError naming the entry that is none of those."""
    by_alg: dict[str, list[Any]] = {}
    for n, pem in enumerate(pems):
        try:
            trusted = load_trusted(pem)
        except ValueError as exc:
            raise ValueError(f"controller_public_keys[{n}]: {exc}") from None
        by_alg.setdefault(trusted.alg, []).append(trusted.key)
    verifiers: list[Verifier] = []
    if ED25519 in by_alg:
        verifiers.append(Ed25519Verifier(by_alg[ED25519]))
    if SM2_SM3 in by_alg:
        verifiers.append(Sm2Verifier(by_alg[SM2_SM3]))
    return VerifierSet(*verifiers)
