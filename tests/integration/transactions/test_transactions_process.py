"""`python -m pi.transactions`: migrate, serve with health, verify tokens, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from generated.pi.transactions.v1 import transactions_pb2 as pb
from generated.pi.transactions.v1 import transactions_pb2_grpc
from pi.platform.runtime.status import error_from_rpc_error
from pi.transactions.settings import TransactionsSettings
from tests.support.processes import (
    run_cli,
    running,
    service_environ,
    unreachable,
    wait_serving,
)


@pytest.fixture
def environ(settings_factory: Callable[..., TransactionsSettings]) -> dict[str, str]:
    nobody = unreachable()  # auth and payments are not running
    return service_environ(
        settings_factory("transactions"), PI_AUTH_TARGET=nobody, PI_PAYMENTS_TARGET=nobody
    )


def _run(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("transactions", environ, *args)


@pytest.fixture
def serving(environ: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    assert _run(environ, "migrate").returncode == 0
    with running("transactions", environ) as process:
        yield process


def test_missing_configuration_is_reported_at_once(environ: dict[str, str]) -> None:
    del environ["PI_SERVICE_TOKEN"], environ["PI_MASTER_KEYS"]
    result = _run(environ, "migrate")
    assert result.returncode == 2
    assert "PI_SERVICE_TOKEN" in result.stderr and "PI_MASTER_KEYS" in result.stderr


async def test_the_service_serves_health_and_the_ledger_then_drains_on_sigterm(
    environ: dict[str, str], serving: subprocess.Popen[str]
) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{environ['PI_GRPC_PORT']}")
    try:
        await wait_serving(channel, serving)
        health = health_pb2_grpc.HealthStub(channel)
        named = await health.Check(
            health_pb2.HealthCheckRequest(service="pi.transactions.v1.TransactionLedgerService")
        )
        assert named.status == health_pb2.HealthCheckResponse.SERVING

        ledger = transactions_pb2_grpc.TransactionLedgerServiceStub(channel)
        service = (("authorization", f"Bearer {environ['PI_SERVICE_TOKEN']}"),)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ledger.LookupTransaction(
                pb.LookupTransactionRequest(
                    merchant_id="mer_x", transaction_id="txn_01JD0000000000000000000000"
                ),
                metadata=service,
            )
        error = error_from_rpc_error(caught.value)
        assert error is not None and error.reason == "TRANSACTION_NOT_FOUND"

        # Merchant tokens need the auth service's keys; with auth down that is UNAVAILABLE,
        # never a wrong UNAUTHENTICATED for a token that may be good.
        transactions = transactions_pb2_grpc.TransactionServiceStub(channel)
        token = (
            "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJzdWIiOiJtZXJfeCJ9.c2lnbmF0dXJl"
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await transactions.ListTransactions(
                pb.ListTransactionsRequest(), metadata=(("authorization", f"Bearer {token}"),)
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await channel.close()

    serving.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(serving.wait, 20) == 0
