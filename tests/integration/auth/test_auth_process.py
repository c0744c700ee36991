"""`python -m pi.auth` as an operator runs it: migrate, serve, rotate-keys, SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def env(pg_url: str, pg_schema: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": pg_url,
        "PI_DB_SCHEMA": pg_schema,
        "PI_ADMIN_TOKEN": "adm_" + secrets.token_urlsafe(16),
        "PI_SERVICE_TOKEN": "svc_" + secrets.token_urlsafe(16),
        "PI_MASTER_KEYS": "1=" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "PI_GRPC_HOST": "127.0.0.1",
        "PI_GRPC_PORT": str(_free_port()),
        "PI_LOG_LEVEL": "WARNING",
    }


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pi.auth", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _wait_serving(channel: grpc.aio.Channel, process: subprocess.Popen[bytes]) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(150):
        assert process.poll() is None, "the auth service exited during start-up"
        try:
            response = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the auth service did not become SERVING")


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

    process = subprocess.Popen(
        [sys.executable, "-m", "pi.auth"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{env['PI_GRPC_PORT']}")
    try:
        await _wait_serving(channel, process)

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
        stderr = process.stderr.read().decode() if process.stderr else ""
    assert code == 0, stderr
    assert created.api_key_secret not in stderr
    assert issued.access_token not in stderr
