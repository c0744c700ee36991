"""Mesh identities for development: one certificate per service, from the dev CA.

`make run` and the end-to-end tests give every process of the mesh its own identity, as
cert-manager does in Kubernetes: `ensure_identities(certs_dir, ("auth", ...))` writes
`<certs_dir>/mesh/<name>.pem` (the certificate, then the CA) and `<name>-key.pem` (mode
0600), signed by the development CA of `pi.edge.certs` (`ca.pem`, whose key is kept in
`ca-key.pem`). Each certificate carries:

- the identity as a SPIFFE ID, `spiffe://pi-platform/<name>` (a URI SAN), which is what
  the services' caller allow-list reads (`pi.platform.security.mesh`);
- the DNS names `<name>` (clients check the server they reach is that service, whatever
  address it listens on), `localhost`, and the IPs 127.0.0.1 and ::1;
- both server and client authentication: a service answers and calls with one identity.

Certificates live as long as the CA (at most 30 days) and are renewed with it; a valid
one, signed by the current CA, is reused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pi.edge.certs import (
    IP_ADDRESSES,
    LEAF_KEY_USAGE,
    RENEW_BEFORE,
    DevCert,
    _write_atomic,
    _write_private,
    ensure_dev_cert,
)
from pi.platform.security.mesh import MeshTls, spiffe_id

MESH_IDENTITIES = ("auth", "transactions", "payments", "edge", "admin")
"""The identities of a deployment: the services, Envoy, and the operator (admin API)."""


@dataclass(frozen=True)
class Identity:
    """One identity's files: its CA bundle, certificate chain and private key."""

    name: str
    ca_path: Path
    cert_path: Path
    key_path: Path

    def mesh_tls(self) -> MeshTls:
        return MeshTls(str(self.ca_path), str(self.cert_path), str(self.key_path))

    def env(self) -> dict[str, str]:
        """The settings a service reads its mesh identity from (`pi.platform.config`)."""
        return {
            "PI_TLS_CA": str(self.ca_path),
            "PI_TLS_CERT": str(self.cert_path),
            "PI_TLS_KEY": str(self.key_path),
        }


def identity_paths(certs_dir: str | Path, name: str) -> Identity:
    """Where `ensure_identities` keeps identity `name` (whether issued yet or not)."""
    folder = Path(certs_dir)
    mesh = folder / "mesh"
    return Identity(name, folder / "ca.pem", mesh / f"{name}.pem", mesh / f"{name}-key.pem")


def ensure_identities(
    certs_dir: str | Path,
    names: Iterable[str],
    *,
    now: dt.datetime | None = None,
) -> Mapping[str, Identity]:
    """An identity per name, issued by the dev CA in `certs_dir` (created if needed)."""
    moment = now or dt.datetime.now(dt.UTC)
    ca_files = ensure_dev_cert(certs_dir, now=moment)
    ca = x509.load_pem_x509_certificate(ca_files.ca_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_files.ca_key_path.read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_files.ca_key_path} is not an EC private key")
    (Path(certs_dir) / "mesh").mkdir(parents=True, exist_ok=True)
    identities = {}
    for name in names:
        identity = identity_paths(certs_dir, name)
        if not _is_reusable(identity, ca, moment):
            _issue(identity, ca, ca_key, ca_files)
        identities[name] = identity
    return identities


def _is_reusable(identity: Identity, ca: x509.Certificate, now: dt.datetime) -> bool:
    try:
        leaf = x509.load_pem_x509_certificates(identity.cert_path.read_bytes())[0]
        key = serialization.load_pem_private_key(identity.key_path.read_bytes(), password=None)
        leaf.verify_directly_issued_by(ca)
    except (OSError, ValueError, IndexError, InvalidSignature, TypeError):
        return False
    if leaf.public_key() != key.public_key():
        return False
    return leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc - RENEW_BEFORE


def _issue(
    identity: Identity,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_files: DevCert,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Pi Platform development"),
                    x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
                ]
            )
        )
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ca.not_valid_before_utc)
        .not_valid_after(ca.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            LEAF_KEY_USAGE,
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(spiffe_id(identity.name)),
                    x509.DNSName(identity.name),
                    x509.DNSName("localhost"),
                    *(x509.IPAddress(ipaddress.ip_address(a)) for a in IP_ADDRESSES),
                ]
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
        identity.key_path,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    _write_atomic(
        identity.cert_path, leaf.public_bytes(pem) + ca_files.ca_path.read_bytes(), mode=0o644
    )
