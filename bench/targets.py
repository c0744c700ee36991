"""The performance targets (the group-commit issue's table) and each one's verdict on a run.

Every row of that table is judged here, so a run says by itself what it met:

| measure | target |
|---|---|
| payment flows/s, HTTP/JSON through Envoy, 64 connections | >= 1000 |
| p99 per call at 64 connections | <= 100 ms |
| p99 per call at 8 connections (low load) | no worse than before the rework |
| machine CPU per flow (the mesh's processes) | <= 2 ms, PostgreSQL's <= 0.5 ms |
| PostgreSQL commits per flow | under 1 at full load |
| errors / undrained outbox | 0 / 0 |
| durable commits | synchronous_commit and fsync on |
| 10,000 keep-alive connections | 0 errors, p99 <= 200 ms |
"""

from __future__ import annotations

from typing import Any

TARGET_FLOWS_PER_SECOND = 1000
TARGET_P99_MS = 100.0
TARGET_CONN_P99_MS = 200.0
TARGET_CPU_MS_PER_FLOW = 2.0
TARGET_POSTGRES_CPU_MS_PER_FLOW = 0.5
TARGET_COMMITS_PER_FLOW = 1.0

# The processes a flow costs: what "machine CPU per flow" adds up (not the load generator
# nor the bench's own sampler).
MESH_GROUPS = ("envoy", "auth", "transactions", "payments", "postgres", "redis")


def cpu_ms_per_flow(flow: dict[str, Any], groups: tuple[str, ...] = MESH_GROUPS) -> float:
    """CPU milliseconds per flow the `groups` used during `flow`."""
    used = flow.get("resources", {}).get("groups", {})
    cpu: float = sum(used.get(name, {}).get("cpu_seconds", 0.0) for name in groups)
    return round(cpu * 1000 / max(1, int(flow.get("flows", 0))), 3)


def worst_p99_ms(flow: dict[str, Any]) -> float:
    return max(float(c["latency"]["p99_ms"] or 0.0) for c in flow["calls"].values())


def _target(target: str, measured: Any, met: bool) -> dict[str, Any]:
    return {"target": target, "measured": measured, "met": met}


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """Each performance target with the measured value and whether it is met."""
    out: dict[str, Any] = {}
    flow = report.get("flow")
    if flow:
        _flow(out, flow)
    low = report.get("flow_low_load")
    if low:
        baseline = float(report.get("config", {}).get("low_baseline_ms", 0.0))
        worst = worst_p99_ms(low)
        out["p99_per_call_ms_low_load"] = _target(
            f"<= {baseline:g} ({low['connections']} connections; before the rework)",
            worst,
            worst <= baseline,
        )
    pg = report.get("postgres", {})
    if pg:
        out["durable_commits"] = _target(
            "synchronous_commit on, fsync on",
            f"synchronous_commit={pg.get('synchronous_commit')} fsync={pg.get('fsync')}",
            bool(pg.get("durable_commits")),
        )
    conn = report.get("connections")
    if conn:
        p99 = conn["latency"].get("p99_ms")
        out["connections_run"] = _target(
            f"{conn['connections']} connections, 0 errors, all answered, "
            f"p99 <= {TARGET_CONN_P99_MS:g} ms",
            f"errors={conn['error_count']} p99={p99} ms "
            f"max_active={conn.get('envoy_max_active_connections')}",
            conn["error_count"] == 0
            and conn["all_answered"]
            and p99 is not None
            and p99 <= TARGET_CONN_P99_MS,
        )
    return out


def _flow(out: dict[str, Any], flow: dict[str, Any]) -> None:
    rate = flow["flows_per_second"]
    out["flows_per_second"] = _target(
        f">= {TARGET_FLOWS_PER_SECOND}", rate, rate >= TARGET_FLOWS_PER_SECOND
    )
    worst = worst_p99_ms(flow)
    out["p99_per_call_ms"] = _target(f"<= {TARGET_P99_MS:g}", worst, worst <= TARGET_P99_MS)
    if flow.get("resources"):
        cpu = cpu_ms_per_flow(flow)
        out["cpu_ms_per_flow"] = _target(
            f"<= {TARGET_CPU_MS_PER_FLOW:g} (the mesh's processes)",
            cpu,
            cpu <= TARGET_CPU_MS_PER_FLOW,
        )
        pg_cpu = cpu_ms_per_flow(flow, ("postgres",))
        out["postgres_cpu_ms_per_flow"] = _target(
            f"<= {TARGET_POSTGRES_CPU_MS_PER_FLOW:g}",
            pg_cpu,
            pg_cpu <= TARGET_POSTGRES_CPU_MS_PER_FLOW,
        )
    commits = flow.get("database", {}).get("per_flow", {}).get("xact_commit")
    if commits is not None:
        out["commits_per_flow"] = _target(
            f"< {TARGET_COMMITS_PER_FLOW:g}", commits, commits < TARGET_COMMITS_PER_FLOW
        )
    out["flow_errors"] = _target("0", flow["error_count"], flow["error_count"] == 0)
    outbox = flow.get("outbox", {})
    if outbox.get("checked"):
        out["outbox_kept_up"] = _target(
            "all movements applied after the run",
            outbox["undelivered_after_wait"],
            outbox["undelivered_after_wait"] == 0,
        )
