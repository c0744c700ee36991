"""`python -m bench --quick`: the whole benchmark in a tiny configuration.

Not a timed test: it only checks that the harness runs end to end against real
PostgreSQL and Redis (mesh, seeding, wrk flow, native gRPC, pgbench, many connections)
and writes a well-formed report with zero errors. PostgreSQL is the bench's own embedded
server (its fallback when no database URL is given), or PI_TEST_DATABASE_URL's server
when the suite runs on an external one; Redis is the session's (`redis_url`). Its own
database (`pi_bench_test`, dropped afterwards), ports and work directory keep it apart
from a real `make bench`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.mesh import Ports, port_free

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(420)]

CALLS = ("create_transaction", "create_payment")
PROCESS_GROUPS = ("envoy", "auth", "transactions", "payments", "postgres", "redis")


def _free_port_base() -> int:
    for _ in range(50):
        base = random.randrange(20000, 30000, 100)
        if all(port_free(p) for p in Ports(base).all(replicas=1)):
            return base
    pytest.skip("no free block of ports for the bench")


def _check_latency(latency: dict[str, Any]) -> None:
    assert latency["count"] > 0
    for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
        assert isinstance(latency[key], float | int) and latency[key] > 0, (key, latency)
    assert latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] <= latency["max_ms"]


def _check_resources(resources: dict[str, Any]) -> None:
    groups = resources["groups"]
    for name in PROCESS_GROUPS:
        assert name in groups, name
        assert groups[name]["cpu_seconds"] >= 0
        assert groups[name]["peak_rss_mib"] > 0, name
    assert resources["elapsed_seconds"] > 0


@pytest.fixture(scope="module")
def quick_report(redis_url: str) -> Iterator[tuple[dict[str, Any], str]]:
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    if missing and os.geteuid() != 0:
        pytest.skip(f"missing {missing} and not root to install them")
    # Directly under the temp dir: the embedded server's socket path must stay short.
    work = Path(tempfile.mkdtemp(prefix="pi-bench-"))
    try:
        yield _run_quick_bench(work, redis_url)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_quick_bench(work: Path, redis_url: str) -> tuple[dict[str, Any], str]:
    out = work / "report.json"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "BENCH_DATABASE_URL", "REDIS_URL")
    }
    env.update(
        {
            "BENCH_DB": "pi_bench_test",
            "BENCH_KEEP_DB": "0",
            "BENCH_PORT_BASE": str(_free_port_base()),
            "BENCH_WORKDIR": str(work / "run"),
            "BENCH_OUT": str(out),
            "BENCH_REDIS_URL": redis_url,
            # The observability switch: the flow with it on, then on a restarted mesh off.
            "BENCH_OBSERVABILITY": "both",
        }
    )
    external = os.environ.get("PI_TEST_DATABASE_URL", "").strip()
    if external:
        env["BENCH_DATABASE_URL"] = external
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert out.exists(), f"no report\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    report = json.loads(out.read_text())
    assert done.returncode == 0, (
        f"bench exited {done.returncode}: {report.get('failure')}\n{done.stdout[-4000:]}\n"
        f"{done.stderr[-4000:]}"
    )
    return report, done.stdout


def test_report_is_complete_and_error_free(quick_report: tuple[dict[str, Any], str]) -> None:
    report, _ = quick_report
    assert report["schema"] == "pi-bench/1"
    assert "failure" not in report
    assert report["config"]["quick"] is True

    machine = report["machine"]
    assert machine["nproc"] >= 1 and machine["model_name"] and machine["memory_gib"] > 0

    pg = report["postgres"]
    assert pg["synchronous_commit"] == "on"
    assert pg["durable_commits"] is True
    if not os.environ.get("PI_TEST_DATABASE_URL", "").strip():
        assert report["config"]["database_url"] == "embedded"
        assert pg["server_version"].startswith("18.")

    flow = report["flow"]
    assert flow["error_count"] == 0, flow["errors"]
    assert flow["flows"] > 0 and flow["flows_per_second"] > 0
    assert flow["api_calls_per_second"] > 0
    for call in CALLS:
        assert flow["calls"][call]["errors"] == {}
        _check_latency(flow["calls"][call]["latency"])
    _check_resources(flow["resources"])
    assert flow["loadgen"]["tool"] == "wrk" and flow["loadgen"]["cpu_seconds"] >= 0
    assert flow["outbox"]["undelivered_after_wait"] == 0


def test_observability_on_and_off_are_compared_in_one_run(
    quick_report: tuple[dict[str, Any], str],
) -> None:
    report, table = quick_report
    cost = report["observability"]
    assert cost["trace_sample_percent"] == 1.0
    for run in ("on", "off"):
        assert cost[run]["flows_per_second"] > 0 and cost[run]["cpu_ms_per_flow"] > 0, cost
    assert isinstance(cost["flows_per_second_change_percent"], float | int)
    off = report["flow_observability_off"]
    assert off["error_count"] == 0, off["errors"]
    assert "--- restarted with observability off" in report["mesh"]["events"]
    assert "Observability on (metrics, interceptors, 1% of requests traced)" in table


def test_reference_points(quick_report: tuple[dict[str, Any], str]) -> None:
    report, _ = quick_report
    refs = report["references"]
    assert refs["pgbench"]["tps"] > 0 and refs["pgbench"]["failed"] == 0
    grouped = refs["pgbench_grouped"]
    assert grouped["tps"] > 0 and grouped["failed"] == 0 and grouped["flows_per_commit"] == 4
    assert refs["flows_per_pgbench_tps"] > 0
    for key in ("grpc_direct", "grpc_envoy"):
        run = refs[key]
        assert run["error_count"] == 0, run["errors"]
        assert run["flows"] > 0
        for call in CALLS:
            _check_latency(run["calls"][call]["latency"])
        assert run["loadgen"]["cpu_seconds"] > 0
    assert "grpc_throughput_loss" in refs["edge_cost"]


def test_connection_run(quick_report: tuple[dict[str, Any], str]) -> None:
    report, _ = quick_report
    conn = report["connections"]
    assert conn["connections"] == report["config"]["conn_count"]
    assert conn["error_count"] == 0, conn["errors"]
    assert conn["all_answered"] is True
    assert conn["requests_answered"] > 0
    assert conn["envoy_max_active_connections"] >= conn["connections"]
    assert conn["latency"]["p99_ms"] > 0
    _check_resources(conn["resources"])


def test_low_load_run_and_every_target_judged(quick_report: tuple[dict[str, Any], str]) -> None:
    report, _ = quick_report
    low = report["flow_low_load"]
    assert low["connections"] == report["config"]["low_connections"]
    assert low["error_count"] == 0, low["errors"]
    assert low["flows"] > 0
    for call in CALLS:
        _check_latency(low["calls"][call]["latency"])
    assert set(report["targets"]) == {
        "flows_per_second",
        "p99_per_call_ms",
        "p99_per_call_ms_low_load",
        "cpu_ms_per_flow",
        "postgres_cpu_ms_per_flow",
        "commits_per_flow",
        "flow_errors",
        "outbox_kept_up",
        "durable_commits",
        "connections_run",
    }


def test_table_is_printed(quick_report: tuple[dict[str, Any], str]) -> None:
    _, stdout = quick_report
    for text in (
        "payment flows/s",
        "create_transaction",
        "create_payment",
        "pgbench",
        "native gRPC",
        "keep-alive connections",
        "Low load, the same flow",
        "Targets",
    ):
        assert text in stdout, text
