"""Signature schemes for commands sent to terminals.

Everything else talks to the small `Signer` / `Verifier` interfaces, so a national
scheme (SM2 with SM3, as the Chinese emergency-broadcast standards require) can be
added as another pair of classes registered under its own `alg` name without touching
the protocol, the controller or the agent.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class Signer(Protocol):
    alg: str
    kid: str

    def sign(self, data: bytes) -> bytes: ...


class Verifier(Protocol):
    alg: str

    def verify(self, kid: str, data: bytes, signature: bytes) -> bool: ...


def key_id(public_bytes: bytes) -> str:
    """A short, stable name for a public key, so keys can be rotated side by side."""
    return hashlib.sha256(public_bytes).hexdigest()[:16]


class Ed25519Signer:
    alg = "ed25519"

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

    @classmethod
    def generate(cls) -> Ed25519Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> Ed25519Signer:
        """Load the controller's key, creating it (mode 0600) on first run."""
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path}: not an Ed25519 private key")
            return cls(key)
        signer = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = signer._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return signer


# Signatures already verified in this process, by (public key, signature, exact bytes).
# A verification is a pure function of those, so remembering a success changes no
# outcome; it matters where one process holds many terminals (the simulator), which
# otherwise verify the same county-wide command thousands of times over. Only successes
# are kept, and only the most recent few.
_VERIFIED: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()
_VERIFIED_MAX = 256


class Ed25519Verifier:
    """Holds the controller public keys a terminal trusts, by key id."""

    alg = "ed25519"

    def __init__(self, public_keys: list[Ed25519PublicKey]) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._raw: dict[str, bytes] = {}
        for key in public_keys:
            raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            self._keys[key_id(raw)] = key
            self._raw[key_id(raw)] = raw

    @classmethod
    def from_pem(cls, *pems: bytes) -> Ed25519Verifier:
        keys = []
        for pem in pems:
            key = serialization.load_pem_public_key(pem)
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an Ed25519 public key")
            keys.append(key)
        return cls(keys)

    def verify(self, kid: str, data: bytes, signature: bytes) -> bool:
        key = self._keys.get(kid)
        if key is None:
            return False
        raw = self._raw[kid]
        memo_key = (raw, signature, data)
        if memo_key in _VERIFIED:
            _VERIFIED.move_to_end(memo_key)
            return True
        try:
            key.verify(signature, data)
        except InvalidSignature:
            return False
        _VERIFIED[memo_key] = None
        if len(_VERIFIED) > _VERIFIED_MAX:
            _VERIFIED.popitem(last=False)
        return True


class VerifierSet:
    """Dispatches to the verifier registered for the envelope's algorithm."""

    def __init__(self, *verifiers: Verifier) -> None:
        self._by_alg = {v.alg: v for v in verifiers}

    def verify(self, alg: str, kid: str, data: bytes, signature: bytes) -> bool:
        verifier = self._by_alg.get(alg)
        return verifier is not None and verifier.verify(kid, data, signature)
