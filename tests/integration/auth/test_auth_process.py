"""`python -m pi.auth` as an operator runs it: migrate, serve, rotate-keys, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Callable

import grpc
import jwt
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.auth.settings import AuthSettings
from tests.support.processes import run_cli, service_environ, start, wait_serving


@pytest.fixture
def env(settings_factory: Callable[..., AuthSettings]) -> dict[str, str]:
    return service_environ(settings_factory("auth"), PI_GRPC_HOST="127.0.0.1")


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("auth", env, *args)


async def test_serve_refuses_an_unmigrated_database(env: dict[str, str]) -> None:
    result = await asyncio.to_thread(_cli, env)
    assert result.returncode != 0
    assert "python -m pi.auth migrate" in result.stderr


async def test_missing_configuration_is_reported_clearly(env: dict[str, str]) -> None:
    env = {k: v for k, v in env.items() if k not in ("PI_MASTER_KEYS", "PI_ADMIN_TOKEN")}
    result = await asyncio.to_thread(_cli, env, "migrate")
    assert result.returncode == 2
    assert "PI_MASTER_KEYS" in result.stderr and "PI_ADMIN_TOKEN" in result.stderr


async def test_migrate_serve_rotate_and_drain(env: dict[str, str]) -> None:
    migrated = await asyncio.to_thread(_cli, env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    again = await asyncio.to_thread(_cli, env, "migrate")  # idempotent
    assert again.returncode == 0, again.stderr

    process = start("auth", env, stdout=subprocess.DEVNULL)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{env['PI_GRPC_PORT']}")
    try:
        await wait_serving(channel, process)

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = {s.name async for r in responses for s in r.list_services_response.service}
        assert {"pi.auth.v1.AuthService", "pi.auth.v1.AuthInternalService"} <= services

        stub = auth_pb2_grpc.AuthServiceStub(channel)
        admin = (("authorization", f"Bearer {env['PI_ADMIN_TOKEN']}"),)
        created = await stub.CreateMerchant(
            auth_pb2.CreateMerchantRequest(display_name="Acme"), metadata=admin, timeout=10
        )
        issued = await stub.IssueToken(
            auth_pb2.IssueTokenRequest(
                api_key_id=created.api_key.id, api_key_secret=created.api_key_secret
            ),
            timeout=10,
        )
        jwks = await stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=10)
        (key,) = jwks.keys
        public = jwt.PyJWK.from_dict(
            {f: getattr(key, f) for f in ("kty", "crv", "x", "y", "kid", "use", "alg")}
        )
        claims = jwt.decode(issued.access_token, public, algorithms=["ES256"], audience="pi-api")
        assert claims["sub"] == created.merchant.id

        rotated = await asyncio.to_thread(_cli, env, "rotate-keys")
        assert rotated.returncode == 0, rotated.stderr
        new_kid = rotated.stdout.strip()
        assert new_kid and new_kid != key.kid
    finally:
        await channel.close()
        process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(process.wait, 30)
        finally:
            if process.poll() is None:
                process.kill()
        stderr = process.stderr.read() if process.stderr else ""
    assert code == 0, stderr
    assert created.api_key_secret not in stderr
    assert issued.access_token not in stderr
