"""F8's open-loop generator: its schedule, and that every arrival and call is accounted
for. The mesh itself is exercised by tests/chaos/test_chaos_quick.py; here a small HTTP
server on a real socket answers slowly, so the connections run out on purpose."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from chaos.load import Journal
from chaos.openloop import Generator, Plan, arrivals_due, record_into
from chaos.overload import summarize


def test_arrivals_follow_the_clock_not_the_answers() -> None:
    assert arrivals_due(-0.1, 10, 50) == 0
    assert arrivals_due(0.0, 10, 50) == 1  # the first one at once
    assert arrivals_due(0.099, 10, 50) == 1
    assert arrivals_due(0.1, 10, 50) == 2
    assert arrivals_due(2.45, 10, 50) == 25
    assert arrivals_due(60.0, 10, 50) == 50  # never more than planned


class SlowEdge:
    """POST /v1/transactions: 200 at once; POST /v1/payments: after `delay`, every other
    one 503 (as a shed call), the others 200 with a SUCCEEDED payment, sent chunked."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.count = 0
        self.payments = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while request := await reader.readuntil(b"\r\n\r\n"):
                head = request.decode().split("\r\n")
                length = next(int(h.split(":")[1]) for h in head if h.startswith("Content-Length"))
                await reader.readexactly(length)
                self.count += 1
                if head[0].startswith("POST /v1/transactions"):
                    body = json.dumps({"transaction": {"id": f"t{self.count}"}}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                    writer.write(body)
                    continue
                self.payments += 1
                shed = self.payments % 2 == 1
                await asyncio.sleep(self.delay)
                if shed:
                    writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}")
                    continue
                payment = {"id": f"p{self.count}", "status": "PAYMENT_STATUS_SUCCEEDED"}
                body = json.dumps({"payment": payment}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def edge_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(SlowEdge(0.3).handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_an_arrival_without_a_free_connection_is_counted_not_delayed(
    edge_port: int,
) -> None:
    plan = Plan(edge_port, ["tok"], 2031, seconds=1.0, connections=4, rate=40, call_timeout=5)
    began = time.monotonic()
    result = await Generator(plan).run()
    assert time.monotonic() - began < 2.5  # 1 s of arrivals, then the last flows' 0.3 s
    assert result.arrivals == 40 and result.offered_rate == 40
    flows = len(result.payments)
    # 4 connections, each busy ~0.3 s per flow: most arrivals find none free.
    assert 4 <= flows <= 20 and result.no_connection == 40 - flows
    assert result.max_in_flight == 4
    assert len(result.calls) == 2 * flows
    assert {status for _, status, _, _ in result.calls} == {200, 503}
    assert result.overload_ended - result.overload_started == pytest.approx(1.0, abs=0.2)

    journal = Journal()
    record_into(journal, result)
    assert journal.requests == 2 * flows
    assert journal.errors["503"] == len([p for p in journal.payments if p.unknown == {"create"}])
    acked = [p for p in journal.payments if p.acked is not None]
    assert acked and all((p.acked or {})["status"] == "SUCCEEDED" and p.payment_ids for p in acked)
    assert len(journal.transactions) == flows and len(journal.flow_times) == len(acked)

    notes = summarize(result, None, journal.slowest, bound=10.0)
    assert notes["shed_by_status"] == {"503": journal.errors["503"]}
    assert notes["overload_failed"] == []
    assert notes["acked_p50_s"] is not None and notes["longest_call_s"] < 1.0


def test_a_call_past_the_bound_or_nothing_shed_fails_f8() -> None:
    from chaos.openloop import Result

    result = Result(offered_rate=10, overload_started=0.0, overload_ended=1.0)
    result.calls = [("overload", 200, 12.0, 1.0)]
    notes = summarize(result, 5.0, 0.0, bound=10.0)
    assert len(notes["overload_failed"]) == 2, notes
