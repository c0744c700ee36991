"""The bench's pure parts: wrk result parsing, percentiles, the pgbench script, settings."""

from __future__ import annotations

import pytest

from bench import config, pgbench, stats, targets, wrk

FLOW_OUTPUT = """\
summary 2000000 6 1234 0 0 0 1 0
counters 2 0 0 4 4
status create_transaction 200 2
status create_payment 200 2
lat create_transaction 1000 3000
lat create_payment 2000 4000
counters 0 0 0 3 2
status create_transaction 503 1
status create_transaction 200 1
sample create_transaction 503 {"code":14,"message":"upstream connect error"}
lat create_transaction 5000 6000
lat create_payment
"""


def test_parse_flow_counts_per_call_type() -> None:
    result = wrk.parse_flow(FLOW_OUTPUT)
    assert result["flows"] == 2
    assert result["flows_per_second"] == 1.0
    assert result["api_calls"] == 6
    ct = result["calls"]["create_transaction"]
    assert ct["statuses"] == {"200": 3, "503": 1}
    assert ct["errors"] == {"503": 1}
    assert ct["latency"]["count"] == 4
    assert ct["latency"]["max_ms"] == 6.0
    assert result["calls"]["create_payment"]["latency"]["p50_ms"] == 2.0
    assert result["errors"] == {"http_503": 1}
    assert result["error_count"] == 1
    assert result["error_samples"]["create_transaction 503"].startswith('{"code":14')


def test_parse_connections_detects_unanswered_and_socket_errors() -> None:
    text = (
        "summary 4000000 10 999 2 0 0 0 1\n"
        "latency 100 9000 1500 1000 4000 8000 9000\n"
        "counters 12 10\n"
        "status 200 10\n"
    )
    result = wrk.parse_connections(text, connections=1)
    assert result["requests_sent"] == 12 and result["requests_answered"] == 10
    assert result["errors"] == {"socket_connect": 2, "socket_timeout": 1}
    assert result["all_answered"] is False
    assert result["latency"]["p99_ms"] == 8.0


def test_percentiles_nearest_rank() -> None:
    values = list(range(1, 101))
    assert stats.percentile(values, 50) == 50
    assert stats.percentile(values, 99) == 99
    assert stats.percentile(values, 100) == 100
    summary = stats.summarize_us([1000, 2000, 3000])
    assert summary["p50_ms"] == 2.0 and summary["max_ms"] == 3.0
    assert stats.summarize_us([])["count"] == 0


def test_pgbench_script_has_one_command_per_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = pgbench.write_script(tmp_path / "flow.sql").read_text()
    lines = text.splitlines()
    assert lines.count("COMMIT;") == pgbench.COMMITS_PER_FLOW - 1  # + the autocommit mark
    assert lines.count("\\gset") == 1  # the id from the claim; T2 no longer needs one
    for line in lines:
        assert line.startswith("\\") or line.endswith(";") or "RETURNING" in line, line


def test_config_quick_env_and_flags() -> None:
    cfg = config.load(["--quick", "--connections", "3"], environ={"BENCH_DURATION": "7"})
    assert cfg.quick and cfg.connections == 3 and cfg.duration == 7.0
    assert cfg.conn_count == config.QUICK["conn_count"]
    cfg = config.load([], environ={"BENCH_SKIP": "grpc, pgbench", "BENCH_IDEMPOTENCY": "0"})
    assert cfg.skip == ("grpc", "pgbench") and cfg.idempotency is False
    assert cfg.duration == 60.0 and cfg.conn_count == 10_000


def test_config_refuses_a_database_it_should_not_drop() -> None:
    with pytest.raises(SystemExit):
        config.load([], environ={"BENCH_DB": "test"})


def test_a_grouped_pgbench_script_commits_every_unit_of_its_flows_together(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = pgbench.write_script(tmp_path / "flow4.sql", flows=4).read_text()
    lines = text.splitlines()
    # As many transactions as one flow's, each holding the four flows' statements once,
    # set-based (as the group commit merges them), plus the SELECT of the four ids.
    assert lines.count("COMMIT;") == pgbench.COMMITS_PER_FLOW - 1
    assert lines.count("\\gset") == 1
    for n in range(1, 5):
        assert f":txn{n}" in text and f":k{n}" in text
    assert ":txn " not in text and ":txn:" not in text and ":txn," not in text
    alone = pgbench.write_script(tmp_path / "flow1.sql").read_text()
    statements = [
        line for line in lines if line.endswith(";") and line not in ("BEGIN;", "COMMIT;")
    ]
    alone_statements = [
        line
        for line in alone.splitlines()
        if line.endswith(";") and line not in ("BEGIN;", "COMMIT;")
    ]
    # A statement whose row goes into variables ends with \gset, not a semicolon.
    assert len(alone_statements) + alone.count("\\gset") == 17
    assert len(statements) + lines.count("\\gset") == 18
    for table in ("payments.payments", "payments.outbox", "transactions.transactions"):
        assert text.count(f"INSERT INTO {table}") == alone.count(f"INSERT INTO {table}") == 1
    assert "unnest(ARRAY['pay_' || substr(:txn1::text, 5)" in text


def _flow(rate: float, p99: float, cpu: dict[str, float], flows: int, commits: float) -> dict:  # type: ignore[type-arg]
    return {
        "flows_per_second": rate,
        "flows": flows,
        "calls": {"create_payment": {"latency": {"p99_ms": p99}}},
        "resources": {"groups": {name: {"cpu_seconds": s} for name, s in cpu.items()}},
        "database": {"per_flow": {"xact_commit": commits}},
        "error_count": 0,
        "connections": 8,
    }


def test_every_target_is_judged_on_what_the_run_measured() -> None:
    # 1000 flows: the mesh used 1.5 CPU s (1.5 ms a flow), PostgreSQL 0.6 of it; the bench
    # harness's CPU does not count.
    cpu = {
        "payments": 0.5,
        "transactions": 0.3,
        "envoy": 0.1,
        "postgres": 0.6,
        "bench harness": 9.0,
    }
    report = {
        "config": {"low_baseline_ms": 30.0},
        "flow": _flow(1200.0, 90.0, cpu, 1000, 0.4),
        "flow_low_load": _flow(300.0, 31.0, cpu, 1000, 0.9),
    }
    verdict = targets.verdict(report)
    met = {name: row["met"] for name, row in verdict.items()}
    assert met == {
        "flows_per_second": True,
        "p99_per_call_ms": True,
        "cpu_ms_per_flow": True,
        "postgres_cpu_ms_per_flow": False,
        "commits_per_flow": True,
        "flow_errors": True,
        "p99_per_call_ms_low_load": False,
    }
    assert verdict["cpu_ms_per_flow"]["measured"] == 1.5
    assert verdict["postgres_cpu_ms_per_flow"]["measured"] == 0.6
