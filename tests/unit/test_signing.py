"""The signed envelope and the signature schemes: every test of a command's signature,
validity window and key handling runs once per scheme (Ed25519 and SM2 with SM3), the
terminal's side built from its key file as the agent builds it."""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from controller.settings import Settings
from dalaba import protocol as p
from dalaba.protocol import (
    CLOCK_SKEW_TOLERANCE_MS,
    MAX_COMMAND_BYTES,
    PROTOCOL_VERSION,
    Command,
    CommandRejected,
    PlayBody,
    ProtocolError,
    RejectReason,
    Target,
    open_envelope,
    seal,
)
from dalaba.signing import (
    ED25519,
    SIGNERS,
    SM2_SM3,
    Ed25519Signer,
    Ed25519Verifier,
    KeyFileSigner,
    Sm2Signer,
    Sm2Verifier,
    VerifierSet,
    load_or_create_signer,
    load_trusted,
    verifier_set_from_pem,
)
from tests.support import NOW, command

SCHEMES = sorted(SIGNERS)  # Settings.signing_scheme values
ALG = {"ed25519": ED25519, "sm2": SM2_SM3}
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="no openssl command on this machine")

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module", params=SCHEMES)
def scheme(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(scope="module")
def signer(scheme: str) -> KeyFileSigner:
    return SIGNERS[scheme].generate()


@pytest.fixture(scope="module")
def verifiers(signer: KeyFileSigner) -> VerifierSet:
    # As a terminal builds it: from the PEM its key file holds.
    return verifier_set_from_pem([signer.trust_pem().decode()])


def envelope_dict(raw: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(raw)
    return data


def rewrap(raw: bytes, **changes: Any) -> bytes:
    """The same envelope with some fields replaced (what an attacker can do)."""
    env = envelope_dict(raw)
    env.update(changes)
    return json.dumps(env).encode()


def payload_of(raw: bytes) -> bytes:
    return base64.b64decode(envelope_dict(raw)["payload"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    assert OPENSSL is not None
    done = subprocess.run([OPENSSL, *args], input=stdin, capture_output=True, check=True)
    return done.stdout


def make_certificate(key_path: Path, scheme: str, cert_path: Path) -> int:
    """A self-signed certificate for the key in `key_path`, as a county CA would issue one
    (SM2 with SM3 for an SM2 key); returns its serial."""
    if scheme == "sm2":
        openssl(
            "req", "-new", "-x509", "-key", str(key_path), "-sm3",
            "-sigopt", "distid:1234567812345678", "-subj", "/CN=dalaba-controller",
            "-days", "30", "-out", str(cert_path),
        )  # fmt: skip
        serial = openssl("x509", "-in", str(cert_path), "-noout", "-serial").decode()
        return int(serial.strip().split("=")[1], 16)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dalaba-controller")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2036, 1, 1, tzinfo=datetime.UTC))
        .sign(key, None)
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert.serial_number


# --------------------------------------------------------------------------- envelope


def test_seal_then_open_returns_the_same_command(
    scheme: str, signer: KeyFileSigner, verifiers: VerifierSet
) -> None:
    cmd = command()
    raw = seal(cmd, signer)

    env = envelope_dict(raw)
    assert env["v"] == PROTOCOL_VERSION
    assert env["alg"] == ALG[scheme]
    assert env["kid"] == signer.kid
    assert "cert_sn" not in env  # no certificate: the envelope is what it always was
    assert payload_of(raw) == cmd.to_bytes()  # the exact bytes that were signed
    assert open_envelope(raw, verifiers, NOW) == cmd


def test_cancel_command_round_trips(signer: KeyFileSigner, verifiers: VerifierSet) -> None:
    cmd = Command.new(
        p.CancelBody(broadcast_id="b-1", reason="false alarm"),
        Target(all=True),
        expires_at=p.now_ms() + 60_000,
    )
    opened = open_envelope(seal(cmd, signer), verifiers, p.now_ms())
    assert isinstance(opened.body, p.CancelBody)
    assert opened.body.reason == "false alarm"
    assert opened.target.all


def test_rotated_keys_are_both_trusted(scheme: str) -> None:
    old, new = SIGNERS[scheme].generate(), SIGNERS[scheme].generate()
    trusted = verifier_set_from_pem([old.trust_pem().decode(), new.trust_pem().decode()])
    for s in (old, new):
        assert open_envelope(seal(command(), s), trusted, NOW).id == "c0ffee"


def test_a_county_moving_between_schemes_can_trust_both() -> None:
    # Terminals are given the SM2 key beside the Ed25519 one before the controller
    # switches, as in a key rotation: no moment in which commands are refused.
    ed, sm = Ed25519Signer.generate(), Sm2Signer.generate()
    trusted = verifier_set_from_pem([ed.public_pem(), sm.public_pem()])
    assert set(trusted.algs) == {ED25519, SM2_SM3}
    for s in (ed, sm):
        assert open_envelope(seal(command(), s), trusted, NOW) == command()


def test_tampered_payload_is_rejected_and_names_the_claimed_command(
    signer: KeyFileSigner, verifiers: VerifierSet
) -> None:
    raw = seal(command(), signer)
    data = payload_of(raw)
    # One byte changed, still valid JSON: the broadcast id the forger claims.
    forged = data.replace(b"b-flood-1", b"b-flood-2")
    assert forged != data and len(forged) == len(data)

    with pytest.raises(CommandRejected) as info:
        open_envelope(rewrap(raw, payload=b64(forged)), verifiers, NOW)
    assert info.value.reason is RejectReason.BAD_SIGNATURE
    assert info.value.command is not None
    assert isinstance(info.value.command.body, PlayBody)
    assert info.value.command.body.broadcast_id == "b-flood-2"
    assert info.value.command.id == "c0ffee"


def test_tampered_unparseable_payload_is_rejected_without_a_command(
    signer: KeyFileSigner, verifiers: VerifierSet
) -> None:
    raw = seal(command(), signer)
    broken = b"\x00" + payload_of(raw)[1:]
    with pytest.raises(CommandRejected) as info:
        open_envelope(rewrap(raw, payload=b64(broken)), verifiers, NOW)
    assert info.value.reason is RejectReason.BAD_SIGNATURE
    assert info.value.command is None


def test_tampered_signature_is_rejected(signer: KeyFileSigner, verifiers: VerifierSet) -> None:
    raw = seal(command(), signer)
    sig = bytearray(base64.b64decode(envelope_dict(raw)["sig"]))
    sig[10] ^= 0x01  # inside the signature value (for DER: inside r)
    with pytest.raises(CommandRejected) as info:
        open_envelope(rewrap(raw, sig=b64(bytes(sig))), verifiers, NOW)
    assert info.value.reason is RejectReason.BAD_SIGNATURE
    assert info.value.command == command()


def test_signature_by_an_unknown_key_is_rejected(scheme: str, verifiers: VerifierSet) -> None:
    forger = SIGNERS[scheme].generate()
    with pytest.raises(CommandRejected) as info:
        open_envelope(seal(command(), forger), verifiers, NOW)
    assert info.value.reason is RejectReason.BAD_SIGNATURE
    assert info.value.command == command()


def test_signature_by_another_key_claiming_the_trusted_kid_is_rejected(
    scheme: str, signer: KeyFileSigner, verifiers: VerifierSet
) -> None:
    forged = seal(command(), SIGNERS[scheme].generate())
    with pytest.raises(CommandRejected) as info:
        open_envelope(rewrap(forged, kid=signer.kid), verifiers, NOW)
    assert info.value.reason is RejectReason.BAD_SIGNATURE


def test_a_genuine_signature_under_another_schemes_name_is_rejected(
    scheme: str, signer: KeyFileSigner
) -> None:
    # A terminal that trusts both schemes still checks each signature with its own.
    other = SIGNERS[next(s for s in SCHEMES if s != scheme)].generate()
    trusted = verifier_set_from_pem([signer.public_pem(), other.public_pem()])
    raw = seal(command(), signer)
    with pytest.raises(CommandRejected) as info:
        open_envelope(rewrap(raw, alg=other.alg, kid=other.kid), trusted, NOW)
    assert info.value.reason is RejectReason.BAD_SIGNATURE


@pytest.mark.parametrize("alg", ["none", "sm2-sm3", "sm2", "", "ED25519", "other-scheme"])
def test_algorithm_the_verifier_set_lacks_is_rejected(
    alg: str, scheme: str, signer: KeyFileSigner, verifiers: VerifierSet
) -> None:
    if alg == "other-scheme":
        alg = ALG[next(s for s in SCHEMES if s != scheme)]
    raw = rewrap(seal(command(), signer), alg=alg)
    with pytest.raises(CommandRejected) as info:
        open_envelope(raw, verifiers, NOW)
    assert info.value.reason is RejectReason.BAD_SIGNATURE
    assert info.value.command == command()


def test_empty_verifier_set_trusts_nothing(signer: KeyFileSigner) -> None:
    with pytest.raises(CommandRejected) as info:
        open_envelope(seal(command(), signer), VerifierSet(), NOW)
    assert info.value.reason is RejectReason.BAD_SIGNATURE


def test_expired_command_is_rejected_at_and_after_its_expiry(
    signer: KeyFileSigner, verifiers: VerifierSet
) -> None:
    cmd = command(expires_at=NOW + 1_000)
    raw = seal(cmd, signer)
    assert open_envelope(raw, verifiers, NOW + 999) == cmd
    for at in (NOW + 1_000, NOW + 86_400_000):
        with pytest.raises(CommandRejected) as info:
            open_envelope(raw, verifiers, at)
        assert info.value.reason is RejectReason.EXPIRED
        assert info.value.command == cmd


def test_command_issued_beyond_the_clock_skew_tolerance_is_not_yet_valid(
    signer: KeyFileSigner, verifiers: VerifierSet
) -> None:
    at_edge = command(issued_at=NOW + CLOCK_SKEW_TOLERANCE_MS)
    assert open_envelope(seal(at_edge, signer), verifiers, NOW) == at_edge

    ahead = command(issued_at=NOW + CLOCK_SKEW_TOLERANCE_MS + 1)
    with pytest.raises(CommandRejected) as info:
        open_envelope(seal(ahead, signer), verifiers, NOW)
    assert info.value.reason is RejectReason.NOT_YET_VALID
    assert info.value.command == ahead


def test_forged_and_expired_is_reported_as_a_bad_signature(
    scheme: str, verifiers: VerifierSet
) -> None:
    # The signature is checked first: a forger never learns which window we use.
    forged = seal(command(expires_at=NOW - 1), SIGNERS[scheme].generate())
    with pytest.raises(CommandRejected) as info:
        open_envelope(forged, verifiers, NOW)
    assert info.value.reason is RejectReason.BAD_SIGNATURE


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe\x00garbage",
        b"not json at all",
        b"[1, 2, 3]",
        b'"a string"',
        b"{}",
        b'{"v": 1, "alg": "ed25519", "kid": "k", "payload": "AA=="}',  # no sig
        b'{"v": 1, "alg": "ed25519", "kid": "k", "payload": 5, "sig": "AA=="}',
        b'{"v": 1, "alg": "SM2-SM3", "kid": "k", "payload": "AA==", "sig": "AA==", "cert_sn": 7}',
    ],
)
def test_garbage_is_a_protocol_error_not_a_rejection(raw: bytes, verifiers: VerifierSet) -> None:
    with pytest.raises(ProtocolError) as info:
        open_envelope(raw, verifiers, NOW)
    assert type(info.value) is ProtocolError
    assert info.value.reason is RejectReason.MALFORMED


@pytest.mark.parametrize("field", ["payload", "sig"])
@pytest.mark.parametrize("bad", ["not base64!", "QUJD=x", "AAA"])
def test_bad_base64_is_malformed(
    field: str, bad: str, signer: KeyFileSigner, verifiers: VerifierSet
) -> None:
    raw = rewrap(seal(command(), signer), **{field: bad})
    with pytest.raises(ProtocolError) as info:
        open_envelope(raw, verifiers, NOW)
    assert type(info.value) is ProtocolError
    assert info.value.reason is RejectReason.MALFORMED


@pytest.mark.parametrize("version", [0, 2, PROTOCOL_VERSION + 1])
def test_other_envelope_version_is_unsupported(
    version: int, signer: KeyFileSigner, verifiers: VerifierSet
) -> None:
    raw = rewrap(seal(command(), signer), v=version)
    with pytest.raises(ProtocolError) as info:
        open_envelope(raw, verifiers, NOW)
    assert type(info.value) is ProtocolError
    assert info.value.reason is RejectReason.UNSUPPORTED_VERSION


def test_oversized_envelope_is_dropped_before_parsing(verifiers: VerifierSet) -> None:
    too_big = b"{" + b" " * MAX_COMMAND_BYTES + b"}"
    with pytest.raises(ProtocolError) as info:
        open_envelope(too_big, verifiers, NOW)
    assert type(info.value) is ProtocolError
    assert info.value.reason is RejectReason.OVERSIZED

    # At the limit it is parsed (and here found malformed), not refused for size.
    at_limit = b"{" + b" " * (MAX_COMMAND_BYTES - 2) + b"}"
    with pytest.raises(ProtocolError) as info:
        open_envelope(at_limit, verifiers, NOW)
    assert type(info.value) is ProtocolError
    assert info.value.reason is RejectReason.MALFORMED


def test_signed_command_with_unknown_fields_is_accepted(
    signer: KeyFileSigner, verifiers: VerifierSet
) -> None:
    # A newer controller may add optional fields; an old terminal ignores them.
    data = json.loads(command().to_bytes())
    data["future_field"] = {"x": 1}
    data["body"]["subtitle"] = "new"
    payload = json.dumps(data).encode()
    env = {
        "v": PROTOCOL_VERSION,
        "alg": signer.alg,
        "kid": signer.kid,
        "payload": b64(payload),
        "sig": b64(signer.sign(payload)),
        "envelope_extra": True,
    }
    opened = open_envelope(json.dumps(env).encode(), verifiers, NOW)
    assert opened == command()


def test_signed_but_invalid_command_is_malformed(
    signer: KeyFileSigner, verifiers: VerifierSet
) -> None:
    payload = b'{"id": "x"}'
    env = {
        "alg": signer.alg,
        "kid": signer.kid,
        "payload": b64(payload),
        "sig": b64(signer.sign(payload)),
    }
    with pytest.raises(ProtocolError) as info:
        open_envelope(json.dumps(env).encode(), verifiers, NOW)
    assert type(info.value) is ProtocolError
    assert info.value.reason is RejectReason.MALFORMED


def test_command_rejected_is_a_protocol_error() -> None:
    exc = CommandRejected(RejectReason.EXPIRED, "late")
    assert isinstance(exc, ProtocolError)
    assert exc.command is None
    assert str(exc) == "expired: late"


# --------------------------------------------------------------------------- certificates


def test_a_certificate_beside_the_key_puts_its_serial_in_every_envelope(
    scheme: str, tmp_path: Path
) -> None:
    if scheme == "sm2" and OPENSSL is None:
        pytest.skip("no openssl command on this machine to issue an SM2 certificate")
    key_path = tmp_path / "keys" / f"controller-{scheme}.pem"
    SIGNERS[scheme].load_or_create(key_path)
    serial = make_certificate(key_path, scheme, key_path.with_suffix(".crt"))

    signer = SIGNERS[scheme].load_or_create(key_path)
    assert signer.cert_sn is not None and int(signer.cert_sn, 16) == serial
    assert signer.cert_sn == signer.cert_sn.upper() and len(signer.cert_sn) % 2 == 0
    raw = seal(command(), signer)
    assert envelope_dict(raw)["cert_sn"] == signer.cert_sn

    # A terminal whose key file holds the certificate, not the bare key.
    assert signer.trust_pem() == key_path.with_suffix(".crt").read_bytes()
    trusted = verifier_set_from_pem([signer.trust_pem().decode()])
    assert open_envelope(raw, trusted, NOW) == command()
    # And one that holds the bare key verifies the same envelope: same key, same kid.
    assert open_envelope(raw, verifier_set_from_pem([signer.public_pem()]), NOW) == command()
    assert load_trusted(signer.trust_pem()).cert_sn == signer.cert_sn


def test_a_certificate_for_another_key_is_refused(scheme: str, tmp_path: Path) -> None:
    if scheme == "sm2" and OPENSSL is None:
        pytest.skip("no openssl command on this machine to issue an SM2 certificate")
    other = tmp_path / "other.pem"
    SIGNERS[scheme].load_or_create(other)
    make_certificate(other, scheme, tmp_path / "controller.crt")
    key = tmp_path / "controller.pem"
    with pytest.raises(ValueError, match=r"controller\.crt: there, but not the key it was"):
        SIGNERS[scheme].load_or_create(key)
    assert not key.exists()  # no new key made to sit beside a certificate it cannot match
    # A key of the right kind, but not the certified one.
    key.write_bytes(SIGNERS[scheme].generate()._private_pem())
    with pytest.raises(ValueError, match=r"controller\.crt: the certificate is for another key"):
        SIGNERS[scheme].load_or_create(key)


def test_the_envelopes_serial_names_but_does_not_decide(
    signer: KeyFileSigner, verifiers: VerifierSet
) -> None:
    # Not covered by the signature: changing or adding it neither breaks a genuine
    # command nor helps a forged one.
    raw = seal(command(), signer)
    assert open_envelope(rewrap(raw, cert_sn="00FF"), verifiers, NOW) == command()
    forged = rewrap(raw, payload=b64(payload_of(raw).replace(b"v-001", b"v-002")), cert_sn="0A")
    with pytest.raises(CommandRejected):
        open_envelope(forged, verifiers, NOW)


# --------------------------------------------------------------------------- key files


def test_load_or_create_makes_a_private_key_file_and_reloads_it(
    scheme: str, tmp_path: Path
) -> None:
    path = tmp_path / "keys" / "controller.pem"
    created = SIGNERS[scheme].load_or_create(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8

    reloaded = SIGNERS[scheme].load_or_create(path)
    assert reloaded.kid == created.kid
    assert reloaded.public_bytes == created.public_bytes
    assert reloaded.cert_sn is None
    # A command sealed before the restart still verifies with the reloaded key's public half.
    trusted = verifier_set_from_pem([reloaded.public_pem()])
    assert open_envelope(seal(command(), created), trusted, NOW) == command()


def test_replicas_starting_together_end_with_one_key(scheme: str, tmp_path: Path) -> None:
    """Controller replicas on one data directory create the key at the same moment
    (a CI run once failed one of them with FileExistsError): every process must end
    up with the same, complete key, and no temporary file may be left behind."""
    path = tmp_path / "keys" / "upstream.pem"
    go = tmp_path / "go"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from dalaba.signing import SIGNERS\n"
        "go = Path(sys.argv[3])\n"
        "while not go.exists(): time.sleep(0.001)\n"
        "print(SIGNERS[sys.argv[1]].load_or_create(Path(sys.argv[2])).kid)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, scheme, str(path), str(go)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(6)
    ]
    time.sleep(1.0)  # every process imported and waiting
    go.touch()
    kids = set()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        kids.add(out.decode().strip())
    assert kids == {SIGNERS[scheme].load_or_create(path).kid}
    assert sorted(x.name for x in path.parent.iterdir()) == ["upstream.pem"]


@pytest.mark.parametrize("wrong", ["p256", "other-scheme", "garbage"])
def test_load_or_create_refuses_a_key_of_another_kind(
    wrong: str, scheme: str, tmp_path: Path
) -> None:
    path = tmp_path / "wrong.pem"
    if wrong == "p256":
        path.write_bytes(
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    elif wrong == "other-scheme":
        SIGNERS[next(s for s in SCHEMES if s != scheme)].load_or_create(path)
    else:
        path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    name = {"ed25519": "Ed25519", "sm2": "SM2"}[scheme]
    with pytest.raises(ValueError, match=f"wrong.pem: not an {name} private key"):
        SIGNERS[scheme].load_or_create(path)


def test_key_ids_differ_per_key(scheme: str) -> None:
    assert SIGNERS[scheme].generate().kid != SIGNERS[scheme].generate().kid


def test_the_setting_chooses_the_scheme_and_its_own_key_file(tmp_path: Path) -> None:
    def settings(**values: Any) -> Settings:
        return Settings.model_validate({"data_dir": tmp_path, "demo": True, **values})

    paths = {}
    for scheme in SCHEMES:
        chosen = settings(signing_scheme=scheme)
        paths[scheme] = chosen.signing_key_path
        signer = load_or_create_signer(chosen.signing_scheme, chosen.signing_key_path)
        assert signer.alg == ALG[scheme]
    assert paths["ed25519"].name == "controller-ed25519.pem"
    assert paths["sm2"].name == "controller-sm2.pem"
    assert settings().signing_scheme == "ed25519"  # the default
    with pytest.raises(ValidationError, match="signing_scheme"):
        settings(signing_scheme="rsa")
    with pytest.raises(ValueError, match="signing_scheme: 'rsa'"):
        load_or_create_signer("rsa", tmp_path / "k.pem")


# --------------------------------------------------------------------------- trusted keys


def test_a_key_file_entry_that_is_neither_scheme_is_refused_by_position() -> None:
    good = Ed25519Signer.generate().public_pem().decode()
    p256 = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(ValueError, match=r"controller_public_keys\[1\]: not an Ed25519 or SM2"):
        verifier_set_from_pem([good, p256])
    with pytest.raises(ValueError, match=r"controller_public_keys\[0\]: expected one PEM block"):
        verifier_set_from_pem(["no pem here"])


def test_a_pasted_chain_or_private_key_is_not_a_trusted_key() -> None:
    a, b = Sm2Signer.generate(), Ed25519Signer.generate()
    with pytest.raises(ValueError, match="expected one PEM block"):
        load_trusted(a.public_pem() + b.public_pem())
    with pytest.raises(ValueError, match="unsupported PEM block 'PRIVATE KEY'"):
        load_trusted(a._private_pem())


def test_each_verifier_refuses_the_other_schemes_key() -> None:
    with pytest.raises(ValueError, match="not an ed25519 public key"):
        Ed25519Verifier.from_pem(Sm2Signer.generate().public_pem())
    with pytest.raises(ValueError, match="not an SM2-SM3 public key"):
        Sm2Verifier.from_pem(Ed25519Signer.generate().public_pem())


# --------------------------------------------------------------------------- SM2 specifics

# Made with OpenSSL 3.0 (`openssl pkeyutl -sign -rawin -digest sm3 -pkeyopt distid:…`):
# the same message signed under the standard signer id and under another one. They pin
# the user id that goes into Z, which no round trip through one library can.
VECTOR_MESSAGE = b'{"id":"c0ffee","note":"SM2 vector for dalaba"}'
OPENSSL_PUBLIC_KEY = """-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoEcz1UBgi0DQgAEUXsw5XD5KfJBa7s6pD1ESjbzQr2q
QEOcZlO3rj0GXMGW7NTjzd8uNKjFUW7czV63KU9wz7KJUW1bwAK3GfhW2g==
-----END PUBLIC KEY-----
"""
OPENSSL_SIG_DEFAULT_ID = bytes.fromhex(
    "3045022100eff219edf220fcc11d5ee9a5417a27e69b45dd96e7d28ee9116b37fed2f44a6d"
    "0220607e97af3e74a9e2ffb2f6e4d71f8477de548fba743c0cfac422ed8490db740e"
)
OPENSSL_SIG_OTHER_ID = bytes.fromhex(  # distid ALICE123@YAHOO.COM
    "30450220693069e70a42470cbf4702f65b8f1a4b3a45cf449f4a50fafd339f95117f0c4e"
    "022100d9a730cd9938802526c110caab53e5e47884419037a0cd241ceead3a83823dc4"
)
# The same message signed by GmSSL 3 (another code base than OpenSSL's), default id.
GMSSL_PUBLIC_KEY = """-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoEcz1UBgi0DQgAEQeqquVKNdHQrJfNuhDSnysAOHv+h
1lu1Hvf2YqGU+GXak/OuvWOTp7w+tJzQUpruKPdlem+4e2vUDiD0YPZVag==
-----END PUBLIC KEY-----
"""
GMSSL_SIG_DEFAULT_ID = bytes.fromhex(
    "3046022100c3aa0902a6c2df17f055dd6a9febc6b6e0c4d66aa9252136740a88325309f01e"
    "022100a7225fb6d70d0be1c7da7a3e32187e9283af034f321b9bbe7acffbd3624c4db0"
)


def test_sm2_verifies_other_implementations_under_the_standard_signer_id_only() -> None:
    vectors = [
        (OPENSSL_PUBLIC_KEY, OPENSSL_SIG_DEFAULT_ID),
        (GMSSL_PUBLIC_KEY, GMSSL_SIG_DEFAULT_ID),
    ]
    for pem, sig in vectors:
        trusted = load_trusted(pem)
        verifier = Sm2Verifier([trusted.key])
        assert verifier.verify(trusted.kid, VECTOR_MESSAGE, sig)
        assert not verifier.verify(trusted.kid, VECTOR_MESSAGE + b" ", sig)
    trusted = load_trusted(OPENSSL_PUBLIC_KEY)
    assert not Sm2Verifier([trusted.key]).verify(trusted.kid, VECTOR_MESSAGE, OPENSSL_SIG_OTHER_ID)


@needs_openssl
def test_openssl_verifies_our_sm2_signatures_under_the_standard_signer_id(
    tmp_path: Path,
) -> None:
    signer = Sm2Signer.generate()
    data = command().to_bytes()
    (tmp_path / "pub.pem").write_bytes(signer.public_pem())
    (tmp_path / "msg").write_bytes(data)
    (tmp_path / "sig").write_bytes(signer.sign(data))
    out = openssl(
        "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"), "-rawin",
        "-digest", "sm3", "-in", str(tmp_path / "msg"), "-sigfile", str(tmp_path / "sig"),
        "-pkeyopt", "distid:1234567812345678",
    )  # fmt: skip
    assert b"Signature Verified Successfully" in out


@needs_openssl
def test_an_sm2_key_made_by_openssl_signs(tmp_path: Path) -> None:
    key = tmp_path / "controller-sm2.pem"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:SM2", "-out", str(key))
    signer = Sm2Signer.load_or_create(key)
    public = openssl("pkey", "-in", str(key), "-pubout")
    assert open_envelope(seal(command(), signer), verifier_set_from_pem([public]), NOW).id


def test_sm2_signatures_are_der_and_the_kid_is_the_uncompressed_point() -> None:
    signer = Sm2Signer.generate()
    sig = signer.sign(b"data")
    r, s = decode_dss_signature(sig)  # strict DER SEQUENCE { r, s }
    assert r > 0 and s > 0 and len(sig) <= 72
    assert len(signer.public_bytes) == 65 and signer.public_bytes[0] == 0x04
    point = load_trusted(signer.public_pem()).public_bytes
    assert point == signer.public_bytes
    digest = hashes.Hash(hashes.SHA256())
    digest.update(point)
    assert signer.kid == digest.finalize().hex()[:16]


def _der_int(value: int, *, pad: int = 0) -> bytes:
    body = b"\x00" * pad + value.to_bytes(value.bit_length() // 8 + 1, "big")
    return b"\x02" + bytes([len(body)]) + body


def _der_seq(*items: bytes) -> bytes:
    body = b"".join(items)
    return b"\x30" + bytes([len(body)]) + body


def _sm2_malformed(sig: bytes) -> dict[str, bytes]:
    r, s = decode_dss_signature(sig)
    n = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
    inner = _der_int(r) + _der_int(s)
    return {
        "empty": b"",
        "raw r||s": r.to_bytes(32, "big") + s.to_bytes(32, "big"),
        "trailing byte": sig + b"\x00",
        "truncated": sig[:-1],
        "long-form length": b"\x30\x81" + bytes([len(inner)]) + inner,
        "padded integer": _der_seq(_der_int(r, pad=1), _der_int(s)),
        "r = 0": _der_seq(_der_int(0), _der_int(s)),
        "s = n": _der_seq(_der_int(r), _der_int(n)),
        "s + n": _der_seq(_der_int(r), _der_int(s + n)),
        "huge": b"\x30\x82\x10\x00" + b"\x02" * 4096,
    }


def test_sm2_refuses_every_other_spelling_of_a_signature_without_raising() -> None:
    signer = Sm2Signer.generate()
    verifier = Sm2Verifier.from_pem(signer.public_pem())
    data = command().to_bytes()
    sig = signer.sign(data)
    for name, bad in _sm2_malformed(sig).items():
        assert bad != sig
        assert verifier.verify(signer.kid, data, bad) is False, name
    assert verifier.verify(signer.kid, data, sig)


def test_sm2_verification_is_remembered_only_for_the_exact_bytes() -> None:
    signer = Sm2Signer.generate()
    verifier = Sm2Verifier.from_pem(signer.public_pem())
    data = command().to_bytes()
    sig = signer.sign(data)
    assert verifier.verify(signer.kid, data, sig)
    assert verifier.verify(signer.kid, data, sig)  # the remembered success
    assert not verifier.verify(signer.kid, data + b" ", sig)
    assert not Sm2Verifier.from_pem(Sm2Signer.generate().public_pem()).verify(signer.kid, data, sig)
