"""One RPC with a C load generator: h2load sending native gRPC CreateTransaction.

The flow cannot be chained with h2load (see bench/grpc_flow.py), but a single RPC can:
the request body is constant. Running it straight to the transaction service and then
through Envoy, with a client that costs almost no CPU, isolates the edge's cost per call
better than the Python client can. h2load only sees HTTP statuses (gRPC errors travel
in trailers with HTTP 200), so success is checked in the database: the number of rows
inserted must equal the number of requests h2load saw succeed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.database import Postgres, scalar
from bench.grpc_flow import create_transaction_bytes
from bench.tools import run_measured

PATH = "/pi.transactions.v1.TransactionService/CreateTransaction"


def _grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def run(
    target: str,
    *,
    token: str,
    merchant_id: str,
    pg: Postgres,
    connections: int,
    streams: int,
    duration: float,
    workdir: Path,
) -> dict[str, Any]:
    body = workdir / "create_transaction.grpc"
    body.write_bytes(_grpc_frame(create_transaction_bytes(1999, "USD")))
    count_sql = "SELECT count(*) FROM transactions.transactions WHERE merchant_id = %s"
    before = int(scalar(pg, count_sql, merchant_id))
    seconds = max(1, round(duration))
    args = [
        "h2load",
        "-c",
        str(connections),
        "-m",
        str(streams),
        "-t",
        "1",
        "-D",
        str(seconds),
        "-d",
        str(body),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-H",
        f"authorization: Bearer {token}",
        f"http://{target}{PATH}",
    ]
    done = run_measured(args, timeout=seconds + 60)
    text = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed ({done.returncode}): {text[-2000:]}")
    after = int(scalar(pg, count_sql, merchant_id))
    requests = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        text,
    )
    rps = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", text)
    timing = re.search(
        r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", text
    )
    succeeded = int(requests.group(4)) if requests else 0
    inserted = after - before
    # In-flight requests at the deadline may be committed but not counted as done.
    errors = {}
    if requests and int(requests.group(5)):
        errors["http_failed"] = int(requests.group(5))
    if requests and int(requests.group(6)):
        errors["errored"] = int(requests.group(6))
    if inserted < succeeded:
        errors["grpc_not_ok"] = succeeded - inserted
    return {
        "target": target,
        "connections": connections,
        "streams_per_connection": streams,
        "requests_per_second": float(rps.group(2)) if rps else None,
        "succeeded": succeeded,
        "rows_inserted": inserted,
        "latency_mean_ms": _ms(timing.group(5), timing.group(6)) if timing else None,
        "latency_max_ms": _ms(timing.group(3), timing.group(4)) if timing else None,
        "errors": errors,
        "error_count": sum(errors.values()),
        "loadgen": {
            "tool": "h2load",
            "cpu_seconds": round(done.cpu_seconds, 2),
            "cpu_cores": round(done.cpu_seconds / done.wall_seconds, 3)
            if done.wall_seconds
            else None,
            "peak_rss_mib": round(done.max_rss_mib, 1),
        },
    }


def _ms(value: str, unit: str) -> float:
    factor = {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return round(float(value) * factor, 3)
