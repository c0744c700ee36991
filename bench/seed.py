"""Seeding as an operator and merchants would: CreateMerchant inside the mesh (the admin
certificate and token), then IssueToken through the edge with the returned API key; then
transactions for the read-only runs.
"""

from __future__ import annotations

import http.client
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pi.edge.identities import Identity


class SeedError(RuntimeError):
    pass


@dataclass
class Merchant:
    id: str
    api_key_id: str
    api_key_secret: str
    token: str = ""


def _field(obj: dict[str, Any], *names: str) -> Any:
    """The proto3 JSON name (lowerCamel) or the proto name, whichever the edge printed."""
    for name in names:
        if name in obj:
            return obj[name]
    raise SeedError(f"none of {names} in response {sorted(obj)}")


class EdgeClient:
    """A keep-alive HTTP/1.1 JSON client to Envoy (seeding only; never the load)."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self._conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def close(self) -> None:
        self._conn.close()

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        token: str | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        payload = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            try:
                self._conn.request(method, path, body=payload, headers=headers)
                response = self._conn.getresponse()
                raw = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self._conn.close()
                if attempt == 2:
                    raise
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"raw": raw[:500].decode(errors="replace")}
        return response.status, data

    def ok(
        self, method: str, path: str, body: dict[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        status, data = self.call(method, path, body, **kw)
        if status != 200:
            raise SeedError(f"{method} {path} -> {status}: {json.dumps(data)[:500]}")
        return data


def create_merchants(
    client: EdgeClient, admin_token: str, count: int, auth_target: str, admin: Identity
) -> list[Merchant]:
    """CreateMerchant as the operator, inside the mesh (the edge never routes the admin
    API): straight to auth at `auth_target` with the `admin` identity's certificate."""
    import grpc

    from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc

    tls = admin.mesh_tls()
    credentials = grpc.ssl_channel_credentials(
        Path(tls.ca_path).read_bytes(),
        Path(tls.key_path).read_bytes(),
        Path(tls.cert_path).read_bytes(),
    )
    merchants = []
    with grpc.secure_channel(
        auth_target, credentials, options=[("grpc.ssl_target_name_override", "auth")]
    ) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        for i in range(count):
            created = stub.CreateMerchant(
                auth_pb2.CreateMerchantRequest(
                    display_name=f"Bench merchant {i + 1}",
                    request_id=f"bench-merchant-{secrets.token_hex(8)}",
                ),
                metadata=(("authorization", f"Bearer {admin_token}"),),
                timeout=15,
            )
            merchants.append(
                Merchant(
                    id=created.merchant.id,
                    api_key_id=created.api_key.id,
                    api_key_secret=created.api_key_secret,
                )
            )
    issue_tokens(client, merchants)
    return merchants


def issue_tokens(client: EdgeClient, merchants: list[Merchant]) -> None:
    """(Re)issue an access token for every merchant (tokens live at most 15 minutes)."""
    for merchant in merchants:
        data = client.ok(
            "POST",
            "/v1/auth/token",
            {"apiKeyId": merchant.api_key_id, "apiKeySecret": merchant.api_key_secret},
        )
        merchant.token = _field(data, "accessToken", "access_token")


def create_transactions(
    client: EdgeClient, merchants: list[Merchant], per_merchant: int
) -> list[tuple[str, str]]:
    """(token, transaction id) pairs for the read-only connection run."""
    pairs = []
    for merchant in merchants:
        for _ in range(per_merchant):
            data = client.ok(
                "POST",
                "/v1/transactions",
                {"amount": "1999", "currency": "USD", "description": "bench read target"},
                token=merchant.token,
            )
            pairs.append((merchant.token, _field(_field(data, "transaction"), "id")))
    return pairs
