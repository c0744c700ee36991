"""Load shedding at the edge, run by a real Envoy: past the circuit breaker's cap of
requests in flight to a service, a call is answered 503 at once, as JSON with a
Retry-After, instead of waiting behind the others until its route timeout."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from generated.pi.transactions.v1 import transactions_pb2_grpc
from pi.edge import EdgeConfig, Endpoint
from pi.edge.local_replies import OVERFLOW_MESSAGE, OVERFLOW_RETRY_AFTER_S
from pi.edge.profiles import e2e_config
from tests.unit.edge.test_edge_proxy import _envoy, _free_port, _grpc_server, _request


class HeldTransactions(transactions_pb2_grpc.TransactionServiceServicer):
    """Holds every CreateTransaction until released: the calls stay in flight."""

    def __init__(self) -> None:
        self.arrived = threading.Semaphore(0)
        self.release = threading.Event()

    def CreateTransaction(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.arrived.release()
        self.release.wait(10)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "released")


@pytest.fixture(scope="module")
def held_edge(
    envoy_binary: Path, descriptor_path: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EdgeConfig, HeldTransactions]]:
    held = HeldTransactions()
    with _grpc_server(held) as port:
        nowhere = (Endpoint("127.0.0.1", _free_port()),)
        config = e2e_config(
            descriptor_path,
            upstreams={
                "auth": nowhere,
                "transactions": (Endpoint("127.0.0.1", port),),
                "payments": nowhere,
            },
            http_port=_free_port(),
            https_port=_free_port(),
            admin_port=_free_port(),
            requests_per_second=10_000,
        )
        # One call in flight per service is the cap here; the default is EdgeConfig's.
        config = dataclasses.replace(config, max_upstream_requests=1)
        with _envoy(config, tmp_path_factory.mktemp("envoy")):
            try:
                yield config, held
            finally:
                held.release.set()


def _create(port: int) -> tuple[int, bytes, Any]:
    headers = {"content-type": "application/json", "authorization": "Bearer t"}
    body = json.dumps({"amount": "100", "currency": "USD"}).encode()
    return _request(port, "POST", "/v1/transactions", body, headers)


def test_the_default_cap_is_well_below_the_old_ten_thousand_and_above_the_bench() -> None:
    default = EdgeConfig.__dataclass_fields__["max_upstream_requests"].default
    assert isinstance(default, int) and 64 < default <= 1024


def test_a_call_over_the_cap_is_a_fast_503_json_with_retry_after(
    held_edge: tuple[EdgeConfig, HeldTransactions],
) -> None:
    config, held = held_edge
    first: list[int] = []
    holder = threading.Thread(target=lambda: first.append(_create(config.http_port)[0]))
    holder.start()
    try:
        assert held.arrived.acquire(timeout=10), "the first call never reached the service"
        started = time.monotonic()
        status, raw, response = _create(config.http_port)
        elapsed = time.monotonic() - started
    finally:
        held.release.set()
        holder.join(15)
    assert status == 503, raw
    assert elapsed < 2.0  # shed, not queued behind the held call
    assert response.getheader("content-type") == "application/json"
    assert response.getheader("retry-after") == str(OVERFLOW_RETRY_AFTER_S)
    body = json.loads(raw)
    assert body["code"] == 14 and body["message"] == OVERFLOW_MESSAGE  # UNAVAILABLE
    assert first == [400]  # the held call itself was answered by the service
    held.release.clear()
