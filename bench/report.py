"""The machine the report was taken on, the JSON file and the short table printed at the end
of a run (the targets' verdicts are in `bench.targets`)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    return {
        "nproc": affinity,
        "cpu_count": os.cpu_count(),
        "model_name": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def write_json(report: dict[str, Any], path: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, target)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _errors(errors: dict[str, int]) -> str:
    if not errors:
        return "none"
    return ", ".join(f"{k}={v}" for k, v in errors.items())


def _row(label: str, cpu: float, cores: float | None, rss: float) -> str:
    return f"  {label:<30}{cpu:>8.1f}{(cores or 0):>8.2f}{rss:>14.1f}"


def _resources(lines: list[str], resources: dict[str, Any], loadgen: dict[str, Any] | None) -> None:
    lines.append(f"  {'process':<30}{'CPU s':>8}{'cores':>8}{'peak RSS MiB':>14}")
    for name, g in resources.get("groups", {}).items():
        label = name
        if name == "postgres":
            label = f"postgres ({g.get('processes', 0)} procs, PSS)"
        elif g.get("processes", 0) > 1:
            label = f"{name} (x{g['processes']})"
        lines.append(_row(label, g["cpu_seconds"], g.get("cpu_cores"), g["peak_rss_mib"]))
    if loadgen:
        label = f"{loadgen['tool'].split(' ')[0]} (load generator)"
        lines.append(
            _row(label, loadgen["cpu_seconds"], loadgen.get("cpu_cores"), loadgen["peak_rss_mib"])
        )
    machine = resources.get("machine", {})
    if machine:
        busy = (machine.get("utilization") or 0) * 100
        lines.append(
            f"  machine busy {machine.get('busy_cpu_seconds')} CPU s ({busy:.0f}% of "
            f"{machine.get('cpus')} CPUs); not accounted above: "
            f"{machine.get('untracked_cpu_seconds')} CPU s"
        )


def _calls_table(lines: list[str], calls: dict[str, Any]) -> None:
    head = "".join(f"{h:>9}" for h in ("count", "/s", "p50 ms", "p95 ms", "p99 ms", "max ms"))
    lines.append(f"  {'call':<20}{head}  errors")
    for name, c in calls.items():
        lat = c["latency"]
        cells = f"{c['requests']:>9}{c['per_second']:>9.1f}" + "".join(
            f"{_ms(lat[k]):>9}" for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")
        )
        lines.append(f"  {name:<20}{cells}  {_errors(c['errors'])}")


def _header(report: dict[str, Any]) -> list[str]:
    cfg, m = report["config"], report["machine"]
    lines = [
        "",
        f"Pi Platform bench ({'quick' if cfg['quick'] else 'full'}) - {m['nproc']} CPUs "
        f"({m['model_name']}), {m['memory_gib']} GiB RAM, "
        f"load average at start {m['load_average_at_start'][0]}",
    ]
    pg = report.get("postgres")
    if pg:
        durable = "durable" if pg.get("durable_commits") else "NOT durable"
        lines.append(
            f"PostgreSQL {pg.get('server_version')}: "
            f"synchronous_commit={pg.get('synchronous_commit')} fsync={pg.get('fsync')} "
            f"({durable}), shared_buffers={pg.get('shared_buffers')}, "
            f"max_connections={pg.get('max_connections')}"
        )
    lines.append(
        f"Mesh: {cfg['replicas']} process(es) per service, Envoy {cfg['envoy_concurrency']} "
        f"worker(s), log level {cfg['log_level']}, Redis {cfg['redis_url']}, "
        f"idempotency keys {'on' if cfg['idempotency'] else 'off'}, {cfg['merchants']} merchants "
        f"(rate limit {cfg.get('merchant_rate_limit')}/s each), "
        f"group commits in flight {cfg.get('commit_groups')} (0 = off)"
    )
    return lines


def _flow(lines: list[str], cfg: dict[str, Any], flow: dict[str, Any]) -> None:
    lines += [
        "",
        f"Payment flow, HTTP/JSON through Envoy (wrk, {cfg['connections']} connections, "
        f"{flow['duration_s']:g} s after {cfg['warmup']:g} s warm-up)",
        f"  payment flows/s {flow['flows_per_second']:.1f}   "
        f"API calls/s {flow['api_calls_per_second']:.1f}   flows {flow['flows']}   "
        f"errors: {_errors(flow['errors'])}",
    ]
    _calls_table(lines, flow["calls"])
    for key, body in flow.get("error_samples", {}).items():
        lines.append(f"  first {key} body: {body[:200]}")
    outbox = flow.get("outbox", {})
    if outbox.get("checked"):
        lines.append(
            f"  outbox: {outbox['undelivered_at_end_of_load']} movements undelivered when the "
            f"load stopped, {outbox['undelivered_after_wait']} after {outbox['drain_seconds']} s"
        )
    per_flow = flow.get("database", {}).get("per_flow")
    if per_flow:
        lines.append(
            f"  PostgreSQL per flow: {per_flow['xact_commit']} commits, "
            f"{per_flow['xact_rollback']} rollbacks, {per_flow['tup_inserted']} rows inserted, "
            f"{per_flow['tup_updated']} updated, {per_flow['tup_fetched']} fetched; "
            f"{flow['database']['total'].get('sessions', 0)} new connections in the run"
        )
    statements = flow.get("database", {}).get("statements")
    if statements:
        lines.append(
            f"  statements per flow: {statements['per_flow']} ({statements['other_per_flow']}"
            f" + {statements['transaction_control_per_flow']} BEGIN/COMMIT/SET),"
            f" {statements.get('ms_per_flow', '-')} ms as pg_stat_statements times them;"
            " most frequent (per flow: runs, ms):"
        )
        lines += [
            f"    {s['per_flow']:6.2f} {s.get('ms_per_flow', 0.0):6.3f}  {s['query'][:100]}"
            for s in statements["top"][:8]
        ]
        if statements.get("slowest"):
            lines.append("  most time (per flow: runs, wall-clock ms with lock and core waits):")
            lines += [
                f"    {s['per_flow']:6.2f} {s['ms_per_flow']:6.3f}  {s['query'][:100]}"
                for s in statements["slowest"][:5]
            ]
    elif per_flow:
        lines.append("  statements per flow: not counted (the server lacks pg_stat_statements)")
    lines += ["", f"CPU and memory during the flow run ({flow['resources']['elapsed_seconds']} s)"]
    _resources(lines, flow["resources"], flow.get("loadgen"))


def _references(lines: list[str], refs: dict[str, Any]) -> None:
    lines += ["", "Reference points"]
    for key in ("pgbench", "pgbench_grouped"):
        pgb = refs.get(key)
        if not pgb:
            continue
        lines.append(
            f"  pgbench, the SQL of the flow, {pgb.get('flows_per_commit', 1)} flow(s) per "
            f"transaction ({pgb['commits_per_flow']} durable commits per flow, "
            f"{pgb['clients']} clients): {pgb['tps']:.1f} flows/s"
        )
        res = pgb.get("resources", {}).get("groups", {}).get("postgres")
        if res:
            lines.append(f"    postgres used {res['cpu_seconds']} CPU s ({res['cpu_cores']} cores)")
    if refs.get("pgbench"):
        ratio = refs.get("flows_per_pgbench_tps")
        lines.append(
            f"  mesh flows/s / pgbench flows/s (grouped) = {ratio if ratio is not None else '-'}"
        )
    for key, label in (
        ("grpc_direct", "native gRPC straight to the services"),
        ("grpc_envoy", "native gRPC through Envoy"),
    ):
        g = refs.get(key)
        if not g:
            continue
        ct = g["calls"]["create_transaction"]["latency"]
        cp = g["calls"]["create_payment"]["latency"]
        lines.append(
            f"  {label}: {g['flows_per_second']:.1f} flows/s, p99 {_ms(ct['p99_ms'])} / "
            f"{_ms(cp['p99_ms'])} ms (txn/pay), errors: {_errors(g['errors'])}; "
            f"client CPU {g['loadgen']['cpu_cores']} cores"
        )
    for key, label in (
        ("rpc_direct", "h2load CreateTransaction straight to the service"),
        ("rpc_envoy", "h2load CreateTransaction through Envoy"),
    ):
        h = refs.get(key)
        if not h:
            continue
        lines.append(
            f"  {label}: {h['requests_per_second']} calls/s, mean {_ms(h['latency_mean_ms'])} "
            f"ms, max {_ms(h['latency_max_ms'])} ms, errors: {_errors(h['errors'])}"
        )
    edge = refs.get("edge_cost") or {}
    if edge.get("summary"):
        lines.append(f"  edge cost: {edge['summary']}")
    if edge.get("rpc_throughput_loss") is not None:
        lines.append(
            f"  edge cost, one RPC with h2load: {edge['rpc_throughput_loss'] * 100:.1f}% "
            "fewer calls/s through Envoy"
        )


def _connections(lines: list[str], cfg: dict[str, Any], conn: dict[str, Any]) -> None:
    lat = conn["latency"]
    percentiles = " ".join(
        f"{name} {_ms(lat.get(key))}"
        for name, key in (
            ("p50", "p50_ms"),
            ("p95", "p95_ms"),
            ("p99", "p99_ms"),
            ("max", "max_ms"),
        )
    )
    lines += [
        "",
        f"{conn['connections']} keep-alive connections, GET /v1/transactions/{{id}} every "
        f"{cfg['conn_interval']:g} s each, {conn['duration_s']:g} s",
        f"  answered {conn['requests_answered']}/{conn['requests_sent']} "
        f"({conn['requests_per_second']:.1f}/s), "
        f"max active at Envoy {conn.get('envoy_max_active_connections')}",
        f"  latency ms: {percentiles}; errors: {_errors(conn['errors'])}",
    ]
    for key, body in conn.get("error_samples", {}).items():
        lines.append(f"  first HTTP {key} body: {body[:200]}")
    if conn.get("resources"):
        _resources(lines, conn["resources"], conn.get("loadgen"))


def _low_load(lines: list[str], low: dict[str, Any]) -> None:
    lines += [
        "",
        f"Low load, the same flow ({low['connections']} connections, {low['duration_s']:g} s)",
        f"  payment flows/s {low['flows_per_second']:.1f}   errors: {_errors(low['errors'])}",
    ]
    _calls_table(lines, low["calls"])


def _observability(lines: list[str], cost: dict[str, Any]) -> None:
    on, off = cost["on"], cost["off"]
    lines += [
        "",
        f"Observability on (metrics, interceptors, {cost['trace_sample_percent']:g}% of requests "
        "traced) vs off (PI_OBSERVABILITY=off, no tracer), the same flow:",
        *(
            f"  {name:<4} {run['flows_per_second']:>8.1f} flows/s   "
            f"{run['cpu_ms_per_flow']:>7.2f} ms CPU/flow"
            for name, run in (("on", on), ("off", off))
        ),
        f"  change with it on: {cost['flows_per_second_change_percent']:+.1f}% flows/s, "
        f"{cost['cpu_per_flow_change_percent']:+.1f}% CPU per flow (budget: at most -5% flows/s)",
    ]


def table(report: dict[str, Any]) -> str:
    """The short human-readable summary printed at the end of a run."""
    cfg = report["config"]
    lines = _header(report)
    if report.get("flow"):
        _flow(lines, cfg, report["flow"])
    if report.get("flow_low_load"):
        _low_load(lines, report["flow_low_load"])
    if report.get("observability"):
        _observability(lines, report["observability"])
    if report.get("references"):
        _references(lines, report["references"])
    if report.get("connections"):
        _connections(lines, cfg, report["connections"])
    profile = report.get("profile") or {}
    for name, prof in profile.get("processes", {}).items():
        lines += ["", f"py-spy {name}: {prof['samples']} samples with the GIL held"]
        lines.append(
            "  self by package: "
            + ", ".join(f"{e['function']} {e['percent']}%" for e in prof["self_by_package"][:8])
        )
        for entry in prof["total"][:10]:
            lines.append(f"  total {entry['percent']:5.1f}%  {entry['function']}")
        for entry in prof["self"][:8]:
            lines.append(f"  self  {entry['percent']:5.1f}%  {entry['function']}")
    targets = report.get("targets")
    if targets:
        lines += ["", "Targets"]
        for name, t in targets.items():
            mark = "MET " if t["met"] else "MISS"
            lines.append(f"  {mark} {name}: {t['measured']} (target {t['target']})")
    if report.get("failure"):
        lines += ["", f"FAILED: {report['failure']}"]
    lines.append("")
    return "\n".join(lines)
