"""`python -m pi.payments`: migrate, serve with health, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from generated.pi.payments.v1 import payments_pb2 as pb
from generated.pi.payments.v1 import payments_pb2_grpc
from pi.platform.config import Settings
from pi.platform.rpc_status import error_from_rpc_error

REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def environ(settings_factory: Callable[..., Settings], pg_schema: str) -> dict[str, str]:
    settings = settings_factory("payments")
    nobody = f"127.0.0.1:{_free_port()}"  # auth and transactions are not running
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "PI_DB_SCHEMA": pg_schema,
        "PI_ADMIN_TOKEN": settings.admin_token,
        "PI_SERVICE_TOKEN": settings.service_token,
        "PI_MASTER_KEYS": "1=" + "A" * 43 + "=",
        "PI_GRPC_PORT": str(_free_port()),
        "PI_AUTH_TARGET": nobody,
        "PI_TRANSACTIONS_TARGET": nobody,
        "PI_LOG_LEVEL": "WARNING",
    }


def _run(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pi.payments", *args],
        env=environ,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def serving(environ: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    assert _run(environ, "migrate").returncode == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "pi.payments"],
        env=environ,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_serving_refuses_an_unmigrated_database(environ: dict[str, str]) -> None:
    result = _run(environ)
    assert result.returncode != 0
    assert "python -m pi.payments migrate" in result.stderr


def test_migrate_is_repeatable(environ: dict[str, str]) -> None:
    assert _run(environ, "migrate").returncode == 0
    again = _run(environ, "migrate")
    assert again.returncode == 0, again.stderr


async def test_the_service_serves_health_and_the_ledger_then_drains_on_sigterm(
    environ: dict[str, str], serving: subprocess.Popen[str]
) -> None:
    target = f"127.0.0.1:{environ['PI_GRPC_PORT']}"
    channel = grpc.aio.insecure_channel(target)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(150):
            try:
                answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the service never became SERVING")
        for name in ("pi.payments.v1.PaymentService", "pi.payments.v1.PaymentLedgerService"):
            named = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert named.status == health_pb2.HealthCheckResponse.SERVING

        ledger = payments_pb2_grpc.PaymentLedgerServiceStub(channel)
        service = (("authorization", f"Bearer {environ['PI_SERVICE_TOKEN']}"),)
        closed = await ledger.CloseTransaction(
            pb.CloseTransactionRequest(
                merchant_id="mer_x", transaction_id="txn_x", amount=100, currency="EUR"
            ),
            metadata=service,
        )
        assert closed.movement_id == "mov_cancel_txn_x"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ledger.CloseTransaction(
                pb.CloseTransactionRequest(
                    merchant_id="mer_y", transaction_id="txn_x", amount=100, currency="EUR"
                ),
                metadata=service,
            )
        error = error_from_rpc_error(caught.value)
        assert error is not None and error.reason == "TRANSACTION_NOT_FOUND"
    finally:
        await channel.close()

    serving.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(serving.wait, 20) == 0
    _, stderr = serving.communicate()
    assert "Traceback" not in stderr
