"""`python -m pi.payments`: migrate, serve with health, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from generated.pi.payments.v1 import payments_pb2 as pb
from generated.pi.payments.v1 import payments_pb2_grpc
from pi.payments.settings import PaymentsSettings
from pi.platform.runtime.status import error_from_rpc_error
from tests.support.processes import (
    run_cli,
    running,
    service_environ,
    unreachable,
    wait_serving,
)


@pytest.fixture
def environ(settings_factory: Callable[..., PaymentsSettings]) -> dict[str, str]:
    nobody = unreachable()  # auth and transactions are not running
    return service_environ(
        settings_factory("payments"), PI_AUTH_TARGET=nobody, PI_TRANSACTIONS_TARGET=nobody
    )


def _run(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("payments", environ, *args)


@pytest.fixture
def serving(environ: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    assert _run(environ, "migrate").returncode == 0
    with running("payments", environ) as process:
        yield process


async def test_the_service_serves_health_and_the_ledger_then_drains_on_sigterm(
    environ: dict[str, str], serving: subprocess.Popen[str]
) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{environ['PI_GRPC_PORT']}")
    try:
        await wait_serving(channel, serving)
        health = health_pb2_grpc.HealthStub(channel)
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
