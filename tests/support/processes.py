"""Running a service as an operator does: `python -m pi.<svc> [migrate | ...]`.

Process tests import these (`from tests.support.processes import ...`):

    environ = service_environ(settings_factory("payments"), PI_AUTH_TARGET=unreachable())
    assert run_cli("payments", environ, "migrate").returncode == 0
    with running("payments", environ) as process:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{environ['PI_GRPC_PORT']}")
        await wait_serving(channel, process)
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pi.platform.config import ServiceSettings

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unreachable() -> str:
    """A target where no service answers (a peer that is not running)."""
    return f"127.0.0.1:{free_port()}"


def service_environ(settings: ServiceSettings, **variables: str) -> dict[str, str]:
    """This process's environment plus what runs a service as `settings` on a free port
    (PI_GRPC_PORT), logging warnings only; `variables` are added last."""
    master_keys = ",".join(
        f"{version}={base64.b64encode(key).decode()}"
        for version, key in settings.master_keys.items()
    )
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "PI_DB_SCHEMA": settings.db_schema,
        "PI_ADMIN_TOKEN": settings.admin_token,
        "PI_SERVICE_TOKEN": settings.service_token,
        "PI_MASTER_KEYS": master_keys,
        "PI_GRPC_PORT": str(free_port()),
        "PI_LOG_LEVEL": "WARNING",
        **variables,
    }


def run_cli(service: str, environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m pi.<service> *args` to completion (at most 60 s), output captured."""
    return subprocess.run(
        [sys.executable, "-m", f"pi.{service}", *args],
        env=environ,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def start(
    service: str, environ: dict[str, str], *, stdout: int | IO[Any] | None = subprocess.PIPE
) -> subprocess.Popen[str]:
    """`python -m pi.<service>` started, its stderr (and by default stdout) piped as text."""
    return subprocess.Popen(
        [sys.executable, "-m", f"pi.{service}"],
        env=environ,
        cwd=REPO,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextmanager
def running(service: str, environ: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """`start(service, environ)`; the process is killed on exit if still running."""
    process = start(service, environ)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def wait_serving(
    channel: grpc.aio.Channel, process: subprocess.Popen[str] | None = None
) -> None:
    """Wait (up to about 15 s) until the server's health is SERVING; fail if `process`
    exits first."""
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(150):
        assert process is None or process.poll() is None, "the service exited during start-up"
        try:
            answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the service never became SERVING")
