"""The demo merchant `make run` creates on first start, and the curl example it prints."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.edge.identities import Identity
from pi.launcher.probes import mesh_channel

DISPLAY_NAME = "Demo Merchant"


@dataclass(frozen=True)
class DemoMerchant:
    merchant_id: str
    api_key_id: str
    api_key_secret: str


def load(path: Path) -> DemoMerchant | None:
    try:
        data = json.loads(path.read_text())
        return DemoMerchant(data["merchant_id"], data["api_key_id"], data["api_key_secret"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(path: Path, merchant: DemoMerchant) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (json.dumps(asdict(merchant), indent=2) + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


async def create(auth_target: str, admin_token: str, admin: Identity | None = None) -> DemoMerchant:
    """AuthService.CreateMerchant with the admin credential, straight to the auth service
    (the edge never routes it), with the operator's mesh identity `admin`."""
    async with mesh_channel(auth_target, admin, "auth") as channel:
        response = await auth_pb2_grpc.AuthServiceStub(channel).CreateMerchant(
            auth_pb2.CreateMerchantRequest(
                display_name=DISPLAY_NAME, request_id=f"make-run-demo-{secrets.token_hex(8)}"
            ),
            metadata=(("authorization", f"Bearer {admin_token}"),),
            timeout=10,
        )
    return DemoMerchant(response.merchant.id, response.api_key.id, response.api_key_secret)


async def issue_token(http_base: str, merchant: DemoMerchant) -> tuple[int, dict[str, object]]:
    """POST /v1/auth/token through the edge: proves the demo key and the edge both work."""
    body = json.dumps(
        {"apiKeyId": merchant.api_key_id, "apiKeySecret": merchant.api_key_secret}
    ).encode()
    request = urllib.request.Request(
        f"{http_base}/v1/auth/token",
        data=body,
        headers={"content-type": "application/json"},
        method="POST",
    )

    def call() -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            try:
                return error.code, json.loads(error.read() or b"{}")
            except ValueError:
                return error.code, {}

    return await asyncio.to_thread(call)


def curl_example(http_base: str, merchant: DemoMerchant) -> str:
    """Two shell commands: get a token, then create a transaction with it."""
    credentials = json.dumps(
        {"apiKeyId": merchant.api_key_id, "apiKeySecret": merchant.api_key_secret},
        separators=(",", ":"),
    )
    extract = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"accessToken\"])'"
    transaction = '{"amount":"1250","currency":"USD","description":"Demo order"}'
    return (
        f"TOKEN=$(curl -s {http_base}/v1/auth/token -H 'content-type: application/json' \\\n"
        f"    -d '{credentials}' | {extract})\n"
        f'curl -s {http_base}/v1/transactions -H "authorization: Bearer $TOKEN" \\\n'
        f"    -H 'content-type: application/json' -H \"idempotency-key: demo-$(date +%s)\" \\\n"
        f"    -d '{transaction}'"
    )
