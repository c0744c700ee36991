"""F8's load: an open-loop generator in its own process, able to exceed the mesh.

The harness's clients are Python threads sharing one GIL, and closed-loop: each waits for
its answer before sending again, so they slow down with the mesh and never overload it.
This runs `python -m chaos.openloop` (a plan as JSON on stdin, the result as JSON on
stdout): one asyncio loop and up to `connections` keep-alive HTTP/1.1 connections to
Envoy, raw streams, no client library in the way.

1. **measure**: `measure_workers` closed-loop flows back to back for `measure_seconds`;
   the acknowledged flows/s is the mesh's capacity (with whatever else runs meanwhile);
2. **overload**: flows *started* at `factor` x that rate for `seconds`, whether or not
   earlier ones were answered (open loop). A flow takes a free connection for its two
   calls; an arrival finding none is counted (`no_connection`), never delayed.

A flow is the harness's: create a transaction, then pay it by card with automatic
capture, each with an `Idempotency-Key`, no retries (an overload's retry is one more
arrival). Every call's status and duration, and what each acknowledgement said, go back
to the harness's `Journal` (`record_into`), so the checks cover these payments too.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from chaos.load import (
    RETRYABLE,
    Journal,
    PaymentRecord,
    _view,
    card_payment_body,
    transaction_body,
)

UNANSWERED = ("timeout", "connection")


@dataclass(frozen=True)
class Plan:
    port: int
    tokens: list[str]
    exp_year: int
    seconds: float  # of open-loop overload
    factor: float = 2.0  # offered rate = factor x measured capacity
    measure_seconds: float = 5.0
    measure_workers: int = 256  # the services batch commits: more at once, more flows/s
    connections: int = 1024
    call_timeout: float = 15.0
    rate: float | None = None  # a fixed offered rate: no measuring phase


@dataclass
class Result:
    capacity: float | None = None  # acknowledged flows/s of the closed-loop phase
    offered_rate: float = 0.0
    arrivals: int = 0  # open-loop arrivals due
    no_connection: int = 0  # arrivals that found every connection busy
    max_lag_s: float = 0.0  # how late the generator started an arrival (its own CPU)
    max_in_flight: int = 0  # flows at once (each on its own connection)
    overload_started: float = 0.0  # time.monotonic() (system-wide on Linux)
    overload_ended: float = 0.0  # when the last arrival was due
    # (phase, status, seconds, finished at) per HTTP call
    calls: list[tuple[str, int | str, float, float]] = field(default_factory=list)
    transactions: dict[str, int] = field(default_factory=dict)
    payments: list[dict[str, Any]] = field(default_factory=list)  # PaymentRecord fields
    flow_times: list[float] = field(default_factory=list)


def arrivals_due(elapsed: float, rate: float, total: int) -> int:
    """Arrivals of a fixed-rate schedule (one at 0, then every 1/rate s) due by `elapsed`."""
    if elapsed < 0:
        return 0
    return min(total, int(elapsed * rate) + 1)


class Connection:
    """One keep-alive HTTP/1.1 connection, opened when first used, reopened after errors."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(
        self, path: str, body: dict[str, Any], token: str, key: str
    ) -> tuple[int, bytes, bool]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: chaos\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nIdempotency-Key: {key}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        self.writer.write(head.encode() + payload)
        await self.writer.drain()
        status = int((await self.reader.readuntil(b"\r\n")).split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            raw = b""
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                raw += (await self.reader.readexactly(size + 2))[:-2]
            await self.reader.readuntil(b"\r\n")  # no trailers are sent
        else:
            raw = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, raw, headers.get("connection", "").lower() == "close"


class Generator:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.result = Result()
        self.rng = random.Random()
        self.free: asyncio.LifoQueue[Connection] = asyncio.LifoQueue()
        for _ in range(plan.connections):
            self.free.put_nowait(Connection(plan.port))
        self.flows: set[asyncio.Task[bool]] = set()

    async def call(
        self, conn: Connection, phase: str, path: str, body: dict[str, Any], key: str, token: str
    ) -> tuple[int | str, dict[str, Any]]:
        started = time.monotonic()
        status: int | str
        data: dict[str, Any] = {}
        try:
            async with asyncio.timeout(self.plan.call_timeout):
                status, raw, close = await conn.post(path, body, token, key)
            if close:
                conn.close()
            if status == 200:
                data = json.loads(raw)
        except TimeoutError:
            conn.close()
            status = "timeout"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            conn.close()
            status = "connection"
        ended = time.monotonic()
        self.result.calls.append((phase, status, ended - started, ended))
        return status, data

    async def flow(self, conn: Connection, phase: str) -> bool:
        """Transaction, then an automatically captured card payment: whether it was acked."""
        result = self.result
        token = self.rng.choice(self.plan.tokens)
        amount = self.rng.randrange(500, 5000)
        nonce = secrets.token_hex(8)
        transaction = transaction_body(amount, "chaos rush")
        status, data = await self.call(
            conn, phase, "/v1/transactions", transaction, f"chaos-ot-{nonce}", token
        )
        if status != 200:
            return False
        transaction_id = data["transaction"]["id"]
        result.transactions[transaction_id] = amount
        record = PaymentRecord(f"chaos-op-{nonce}", transaction_id, amount, manual=False)
        body = card_payment_body(transaction_id, self.plan.exp_year, manual=False)
        status, data = await self.call(conn, phase, "/v1/payments", body, record.key, token)
        acked = status == 200 and bool(data.get("payment"))
        if acked:
            record.payment_ids.add(data["payment"]["id"])
            record.acked = _view(data["payment"])
            result.flow_times.append(time.monotonic())
        elif status in RETRYABLE or status in UNANSWERED:
            record.unknown.add("create")  # it may have happened: the client cannot tell
        result.payments.append(
            {
                **asdict(record),
                "payment_ids": sorted(record.payment_ids),
                "unknown": sorted(record.unknown),
            }
        )
        return acked

    async def _run_flow(self, conn: Connection, phase: str) -> bool:
        try:
            return await self.flow(conn, phase)
        except (KeyError, TypeError, ValueError):
            return False  # a malformed acknowledgement: its call is in `calls` already
        finally:
            self.free.put_nowait(conn)

    async def measure(self) -> float:
        """Closed loop, `measure_workers` at once: acknowledged flows per second."""
        deadline = time.monotonic() + self.plan.measure_seconds
        acked = 0

        async def worker() -> None:
            nonlocal acked
            while time.monotonic() < deadline:
                if await self._run_flow(self.free.get_nowait(), "measure"):
                    acked += 1

        started = time.monotonic()
        workers = min(self.plan.measure_workers, self.plan.connections)
        await asyncio.gather(*(worker() for _ in range(workers)))
        return acked / max(1e-3, time.monotonic() - started)

    async def overload(self, rate: float) -> None:
        plan, result = self.plan, self.result
        total = max(1, int(plan.seconds * rate))
        result.offered_rate, result.arrivals = rate, total
        start = result.overload_started = time.monotonic()
        started = 0
        while started < total:
            now = time.monotonic()
            due = arrivals_due(now - start, rate, total)
            if due > started:
                result.max_lag_s = max(result.max_lag_s, now - start - started / rate)
            for _ in range(due - started):
                try:
                    conn = self.free.get_nowait()
                except asyncio.QueueEmpty:
                    result.no_connection += 1
                    continue
                task = asyncio.create_task(self._run_flow(conn, "overload"))
                self.flows.add(task)
                task.add_done_callback(self.flows.discard)
            started = due
            in_flight = plan.connections - self.free.qsize()
            result.max_in_flight = max(result.max_in_flight, in_flight)
            await asyncio.sleep(max(0.0, start + started / rate - time.monotonic()))
        result.overload_ended = time.monotonic()
        if self.flows:  # every call is bounded by call_timeout, so this is too
            await asyncio.wait(set(self.flows))

    async def run(self) -> Result:
        try:
            rate = self.plan.rate
            if rate is None:
                self.result.capacity = capacity = await self.measure()
                rate = max(1.0, capacity * self.plan.factor)
            await self.overload(rate)
        finally:
            while not self.free.empty():
                self.free.get_nowait().close()
        return self.result


def record_into(journal: Journal, result: Result) -> None:
    """Add the generator's calls and flows to the harness's journal (for the checks)."""
    for _phase, status, seconds, _ended in result.calls:
        journal.count(status, seconds)
    records = []
    for item in result.payments:
        record = PaymentRecord(item["key"], item["transaction_id"], item["amount"], item["manual"])
        record.payment_ids = set(item["payment_ids"])
        record.acked = item["acked"]
        record.unknown = set(item["unknown"])
        records.append(record)
    with journal._lock:
        journal.transactions.update(result.transactions)
        journal.payments.extend(records)
        journal.flow_times.extend(result.flow_times)


def result_from_json(data: dict[str, Any]) -> Result:
    data = dict(data)
    data["calls"] = [tuple(c) for c in data["calls"]]
    return Result(**data)


def main() -> None:
    plan = Plan(**json.load(sys.stdin))
    result = asyncio.run(Generator(plan).run())
    json.dump(asdict(result), sys.stdout)


if __name__ == "__main__":
    main()
