"""A development TLS certificate for the edge, generated at run time and never committed.

Two certificates, like mkcert: a throwaway CA (`ca.pem`, the file clients trust with
`curl --cacert` or `grpc.ssl_channel_credentials(root_certificates=...)`) and a server
certificate for localhost / 127.0.0.1 / ::1 signed by it (`cert.pem` + `key.pem`, given to
Envoy). The CA's key (`ca-key.pem`, mode 0600) is kept next to them: the same CA issues
each service's mesh identity (`pi.edge.identities`). A separate CA works with every TLS
stack (OpenSSL, BoringSSL, Go, rustls), some of which refuse a self-signed leaf or a CA
certificate used as a server certificate. Both use ECDSA P-256 and are valid for 30 days.
Generation is idempotent: valid files are reused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=30)
RENEW_BEFORE = dt.timedelta(days=1)
DNS_NAMES = ("localhost",)
IP_ADDRESSES = ("127.0.0.1", "::1")
# A leaf certificate's key only signs (the TLS 1.3 handshake): the edge's and the mesh's.
LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class DevCert:
    """Paths of a generated development certificate."""

    ca_path: Path
    cert_path: Path
    key_path: Path
    created: bool

    @property
    def ca_key_path(self) -> Path:
        """The CA's private key: only the development machine's issuer reads it."""
        return self.ca_path.with_name("ca-key.pem")


def ensure_dev_cert(
    directory: str | os.PathLike[str], *, now: dt.datetime | None = None
) -> DevCert:
    """Reuse the certificate in `directory` if it is still valid, else write a new one."""
    folder = Path(directory)
    paths = DevCert(folder / "ca.pem", folder / "cert.pem", folder / "key.pem", created=False)
    moment = now or dt.datetime.now(dt.UTC)
    if _is_reusable(paths, moment):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    _write_new(paths, moment)
    return DevCert(paths.ca_path, paths.cert_path, paths.key_path, created=True)


def _is_reusable(paths: DevCert, now: dt.datetime) -> bool:
    try:
        ca = x509.load_pem_x509_certificate(paths.ca_path.read_bytes())
        ca_key = serialization.load_pem_private_key(paths.ca_key_path.read_bytes(), None)
        leaf = x509.load_pem_x509_certificates(paths.cert_path.read_bytes())[0]
        key = serialization.load_pem_private_key(paths.key_path.read_bytes(), password=None)
    except (OSError, ValueError, IndexError):
        return False
    if leaf.public_key() != key.public_key() or ca.public_key() != ca_key.public_key():
        return False
    try:
        leaf.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    for cert in (ca, leaf):
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc - RENEW_BEFORE:
            return False
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(DNS_NAMES) <= set(san.get_values_for_type(x509.DNSName)) and {
        ipaddress.ip_address(a) for a in IP_ADDRESSES
    } <= set(san.get_values_for_type(x509.IPAddress))


def _write_new(paths: DevCert, now: dt.datetime) -> None:
    start = now - dt.timedelta(minutes=5)
    end = now + VALIDITY

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Pi Platform development"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Pi Platform development CA"),
        ]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Pi Platform development"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            LEAF_KEY_USAGE,
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in DNS_NAMES]
                + [x509.IPAddress(ipaddress.ip_address(a)) for a in IP_ADDRESSES]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    _write_private(
        paths.ca_key_path,
        ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    _write_private(
        paths.key_path,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    _write_atomic(paths.cert_path, leaf.public_bytes(pem) + ca.public_bytes(pem), mode=0o644)
    _write_atomic(paths.ca_path, ca.public_bytes(pem), mode=0o644)


def _write_private(path: Path, data: bytes) -> None:
    _write_atomic(path, data, mode=0o600)


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)
