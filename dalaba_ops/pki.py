"""A small private certificate authority for MQTT over TLS.

The demo, the tests and the benchmarks give their private broker a TLS listener with a
CA of their own: this module makes that CA, the broker's server certificate and, for
certificate-based identity, one client certificate per terminal or controller replica
(its common name is the broker account, as `use_identity_as_username` reads it). A
county may use it for production too, or its own PKI (docs/operations.md, "TLS").

Keys are ECDSA P-256: a handshake costs a fraction of an RSA-2048 one, which matters
when a whole fleet reconnects at once, and every TLS 1.2/1.3 stack on a terminal board
speaks it. Private keys are written mode 0600 and never leave the directory they are
made in; certificates are public.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 10 * 365  # a terminal on a pole outlives a short CA; rotation is documented
SERVER_DAYS = 2 * 365
CLIENT_DAYS = 5 * 365
# A server certificate this close to its end is issued again by `issue_server`.
RENEW_BEFORE = datetime.timedelta(days=30)
# The broker's names on one machine (demo, tests): clients check the host name they
# dial against these, so both spellings of the loopback work.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


@dataclass(frozen=True)
class CertificateAuthority:
    cert_file: Path
    key_file: Path

    @classmethod
    def load_or_create(
        cls, directory: Path, common_name: str = "Dalaba private broker CA"
    ) -> CertificateAuthority:
        """`ca.pem` and `ca.key` in `directory`, made on first use and kept after."""
        ca = cls(directory / "ca.pem", directory / "ca.key")
        if ca.cert_file.exists() and ca.key_file.exists():
            return ca
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            # It signs certificates and nothing else; no intermediate CAs under it.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_private(ca.key_file, _key_pem(key))  # the key first: a cert alone is useless
        _write_public(ca.cert_file, cert.public_bytes(serialization.Encoding.PEM))
        return ca

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_file.read_bytes())

    def _key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.key_file}: not an EC private key")
        return key

    def _issue(
        self,
        common_name: str,
        cert_file: Path,
        key_file: Path,
        *,
        days: int,
        usage: x509.ObjectIdentifier,
        names: Sequence[str] = (),
    ) -> None:
        ca_cert, ca_key = self.certificate(), self._key()
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            # One purpose each: a server certificate cannot log in as a client and a
            # terminal's certificate cannot pose as the broker (OpenSSL checks both).
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san(n) for n in names]), critical=False
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_private(key_file, _key_pem(key))
        _write_public(cert_file, cert.public_bytes(serialization.Encoding.PEM))

    def issue_server(
        self, cert_file: Path, key_file: Path, names: Sequence[str] = LOCAL_NAMES
    ) -> None:
        """The broker's certificate for the host `names` (DNS names or IP addresses) that
        clients dial. Kept if it exists with the same names and is not near its end."""
        if cert_file.exists() and key_file.exists():
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            try:
                have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                same = set(have.value) == {_san(n) for n in names}
            except x509.ExtensionNotFound:
                same = False
            if same and cert.not_valid_after_utc - _now() > RENEW_BEFORE:
                return
        self._issue(
            names[0],
            cert_file,
            key_file,
            days=SERVER_DAYS,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            names=names,
        )

    def write_crl(self, crl_file: Path, revoked: Sequence[Path] = ()) -> None:
        """The CA's revocation list (PEM) naming the certificates in `revoked` (their
        files), for Mosquitto's `crlfile`: a stolen board's certificate stops working at
        the broker's next restart. With `crlfile` set, Mosquitto refuses every client
        certificate when the list is missing or past its next update, so write one
        (empty) before setting it, and it is valid for as long as the CA."""
        ca_cert, ca_key = self.certificate(), self._key()
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - datetime.timedelta(minutes=5))
            .next_update(ca_cert.not_valid_after_utc)
        )
        for path in revoked:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            try:
                # By signature: every CA made here has the same name.
                cert.verify_directly_issued_by(ca_cert)
            except (ValueError, TypeError, InvalidSignature) as exc:
                raise ValueError(f"{path}: not issued by this CA") from exc
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(now)
                .build()
            )
        crl = builder.sign(ca_key, hashes.SHA256())
        _write_public(crl_file, crl.public_bytes(serialization.Encoding.PEM))

    def issue_client(self, account: str, cert_file: Path, key_file: Path) -> None:
        """A client certificate whose common name is the broker account `account` (a
        device id, or a controller replica's account): with `use_identity_as_username`
        the broker takes it as the username, and so (use_username_as_clientid) as the
        client id. Whoever holds the key is that account: keep it like a password."""
        self._issue(
            account,
            cert_file,
            key_file,
            days=CLIENT_DAYS,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        )
