"""The development certificate: generated at run time, reused while valid."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from pi.edge import ensure_dev_cert


def test_creates_a_p256_server_certificate_for_localhost_signed_by_a_dev_ca(
    tmp_path: Path,
) -> None:
    cert = ensure_dev_cert(tmp_path / "certs")
    assert cert.created
    ca = x509.load_pem_x509_certificate(cert.ca_path.read_bytes())
    leaf, chained_ca = x509.load_pem_x509_certificates(cert.cert_path.read_bytes())
    assert chained_ca == ca
    leaf.verify_directly_issued_by(ca)
    public_key = leaf.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(days=29) < lifetime <= dt.timedelta(days=30, minutes=5)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_private_key_is_readable_only_by_its_owner(tmp_path: Path) -> None:
    cert = ensure_dev_cert(tmp_path)
    assert stat.S_IMODE(cert.key_path.stat().st_mode) == 0o600


def test_a_valid_certificate_is_reused(tmp_path: Path) -> None:
    first = ensure_dev_cert(tmp_path)
    before = first.cert_path.read_bytes()
    second = ensure_dev_cert(tmp_path)
    assert not second.created
    assert second.cert_path.read_bytes() == before


def test_a_certificate_about_to_expire_is_replaced(tmp_path: Path) -> None:
    first = ensure_dev_cert(tmp_path)
    before = first.cert_path.read_bytes()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=29, hours=12)
    renewed = ensure_dev_cert(tmp_path, now=later)
    assert renewed.created
    assert renewed.cert_path.read_bytes() != before


def test_damaged_files_are_replaced(tmp_path: Path) -> None:
    ensure_dev_cert(tmp_path)
    (tmp_path / "key.pem").write_text("not a key")
    assert ensure_dev_cert(tmp_path).created
