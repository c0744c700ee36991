"""Mutual TLS inside the mesh: each process proves who it is with its own certificate.

Every service listens with TLS and requires a client certificate signed by the mesh CA;
every call it makes to another service presents its own certificate and checks that the
server's names the service it meant to reach. Who called is then the SPIFFE ID in the
caller's certificate, `spiffe://pi-platform/<name>` (`identity_of`), which the caller
allow-list (`pi.platform.runtime.callers`) matches against the RPC called: no shared
secret says "I am a service".

The files (PEM) come from the settings `PI_TLS_CA`, `PI_TLS_CERT` and `PI_TLS_KEY`:
issued by `make run` from its development CA (`pi.edge.identities`), by cert-manager in
Kubernetes (the `tls.crt`, `tls.key` and `ca.crt` of a kubernetes.io/tls Secret).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

TRUST_DOMAIN = "pi-platform"
_SPIFFE_PREFIX = f"spiffe://{TRUST_DOMAIN}/"


def spiffe_id(name: str) -> str:
    """The URI a mesh certificate carries for identity `name`."""
    return f"{_SPIFFE_PREFIX}{name}"


@dataclass(frozen=True)
class MeshTls:
    """Where this process's mesh identity is: the CA bundle, its certificate, its key."""

    ca_path: str
    cert_path: str
    key_path: str

    def _read(self) -> tuple[bytes, bytes, bytes]:
        return (
            Path(self.ca_path).read_bytes(),
            Path(self.cert_path).read_bytes(),
            Path(self.key_path).read_bytes(),
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """TLS with a client certificate required, verified against the mesh CA."""
        ca, cert, key = self._read()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Trusts the mesh CA only, and presents this process's certificate."""
        ca, cert, key = self._read()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )


def identity_of(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """The mesh identity of a verified TLS peer (`context.auth_context()`), or None.

    gRPC fills the context only after the handshake verified the peer's chain against
    the CA, so a name found here was issued by the mesh CA.
    """
    for value in auth_context.get("x509_subject_alternative_name", ()):
        text = value.decode(errors="replace")
        if text.startswith(_SPIFFE_PREFIX):
            name = text.removeprefix(_SPIFFE_PREFIX)
            if name and "/" not in name:
                return name
    return None
