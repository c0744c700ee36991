"""Benchmark settings: defaults, `--quick`, BENCH_* environment variables, then flags."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from pi.platform.config import DEFAULT_DB_COMMIT_GROUPS

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BenchConfig:
    quick: bool = False
    # main HTTP/JSON flow through Envoy (wrk)
    duration: float = 60.0  # BENCH_DURATION
    warmup: float = 10.0  # BENCH_WARMUP
    connections: int = 64  # BENCH_CONNECTIONS (one wrk thread each)
    merchants: int = 32  # BENCH_MERCHANTS (each stays under the per-merchant rate limit)
    idempotency: bool = True  # BENCH_IDEMPOTENCY: Idempotency-Key on every POST
    # the same flow at low load, for its latency (the "p99 at 8 connections")
    low_connections: int = 8  # BENCH_LOW_CONNECTIONS
    low_duration: float = 20.0  # BENCH_LOW_DURATION
    # Its target: the worst p99 per call at 8 connections before group commit's rework
    # (BENCH_LOW_BASELINE_MS; measured on the reference box, see bench/README.md).
    low_baseline_ms: float = 66.0
    # the mesh
    replicas: int = 1  # BENCH_REPLICAS: processes per service
    envoy_concurrency: int = 1  # BENCH_ENVOY_CONCURRENCY: Envoy worker threads
    envoy_access_log: bool = False  # BENCH_ENVOY_ACCESS_LOG
    edge_rate_limit_rps: int = 0  # BENCH_EDGE_RPS: 0 = the edge's own default
    log_level: str = "WARNING"  # BENCH_LOG_LEVEL -> PI_LOG_LEVEL
    # BENCH_OBSERVABILITY: on (metrics ports, interceptors, the edge tracing
    # trace_sample_percent % into an OTLP receiver), off (PI_OBSERVABILITY=off, no
    # tracer), or both: the flow is measured with it on, then again on a mesh restarted
    # with it off, and the report compares flows/s and CPU per flow.
    observability: str = "both"
    trace_sample_percent: float = 1.0  # BENCH_TRACE_SAMPLE_PERCENT: production's default
    # PI_RATE_LIMIT_PER_MERCHANT: the limiter still runs (and costs what it costs), but a
    # single-merchant reference run (h2load) must not be throttled; 100 = production.
    merchant_rate_limit: int = 1_000_000  # BENCH_MERCHANT_RATE_LIMIT
    # PI_DB_COMMIT_GROUPS of the services: group commits in flight; 0 = every unit alone
    commit_groups: int = DEFAULT_DB_COMMIT_GROUPS  # BENCH_COMMIT_GROUPS
    port_base: int = 31000  # BENCH_PORT_BASE (below the ephemeral port range)
    # reference points
    ref_duration: float = 20.0  # BENCH_REF_DURATION: each gRPC run and pgbench
    grpc_processes: int = 2  # BENCH_GRPC_PROCESSES
    grpc_concurrency: int = 64  # BENCH_GRPC_CONCURRENCY (total coroutines)
    pgbench_clients: int = 16  # BENCH_PGBENCH_CLIENTS
    # Flows per transaction in the grouped pgbench reference (the services' group commit
    # shares each unit's transaction among the flows committing meanwhile).
    pgbench_group: int = 4  # BENCH_PGBENCH_GROUP
    # many connections
    conn_count: int = 10_000  # BENCH_CONN_COUNT
    conn_duration: float = 60.0  # BENCH_CONN_DURATION
    conn_interval: float = 10.0  # BENCH_CONN_INTERVAL: seconds between a connection's GETs
    conn_threads: int = 2  # BENCH_CONN_THREADS: wrk threads for the connection run
    # infrastructure
    # BENCH_DATABASE_URL, else DATABASE_URL: the PostgreSQL server to use (its database
    # part is replaced by `database`); empty: an embedded PostgreSQL in the work dir.
    database_url: str = ""
    database: str = "pi_bench"  # BENCH_DB
    redis_url: str = "redis://127.0.0.1:6379/12"  # BENCH_REDIS_URL
    keep_database: bool = True  # BENCH_KEEP_DB: leave pi_bench for inspection
    skip: tuple[str, ...] = ()  # BENCH_SKIP: comma list of low,grpc,h2load,pgbench,connections
    out: str = str(REPO / "bench" / "results" / "latest.json")  # BENCH_OUT
    workdir: str = str(REPO / "var" / "bench")  # BENCH_WORKDIR: logs, configs
    install_tools: bool = True  # BENCH_INSTALL_TOOLS
    profile: bool = False  # BENCH_PROFILE: py-spy the services during the measured flow
    profile_native: bool = False  # BENCH_PROFILE_NATIVE: include C frames (slower)

    def skips(self, phase: str) -> bool:
        return phase in self.skip

    def public(self) -> dict[str, Any]:
        """The settings for the report, with paths inside the repository made relative
        and no password."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("out", "workdir"):
            out[name] = relative(out[name])
        out["database_url"] = without_password(self.database_url) or "embedded"
        return out


def without_password(url: str) -> str:
    """`url` with the password of its user part (if any) replaced by `***`."""
    return re.sub(r"^([a-z+]+://[^:/@]*):[^@]*@", r"\1:***@", url)


def relative(path: str) -> str:
    """`path` relative to the repository root when it lies inside it (reports are shared)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return path


QUICK: dict[str, Any] = {
    "duration": 4.0,
    "warmup": 2.0,
    "connections": 8,
    "low_connections": 2,
    "low_duration": 2.0,
    "merchants": 2,
    "ref_duration": 3.0,
    "grpc_processes": 1,
    "grpc_concurrency": 8,
    "pgbench_clients": 4,
    "conn_count": 200,
    "conn_duration": 4.0,
    "conn_interval": 0.5,
    "observability": "on",
}

_ENV = {
    "duration": "BENCH_DURATION",
    "warmup": "BENCH_WARMUP",
    "connections": "BENCH_CONNECTIONS",
    "merchants": "BENCH_MERCHANTS",
    "idempotency": "BENCH_IDEMPOTENCY",
    "low_connections": "BENCH_LOW_CONNECTIONS",
    "low_duration": "BENCH_LOW_DURATION",
    "low_baseline_ms": "BENCH_LOW_BASELINE_MS",
    "replicas": "BENCH_REPLICAS",
    "envoy_concurrency": "BENCH_ENVOY_CONCURRENCY",
    "envoy_access_log": "BENCH_ENVOY_ACCESS_LOG",
    "edge_rate_limit_rps": "BENCH_EDGE_RPS",
    "log_level": "BENCH_LOG_LEVEL",
    "observability": "BENCH_OBSERVABILITY",
    "trace_sample_percent": "BENCH_TRACE_SAMPLE_PERCENT",
    "merchant_rate_limit": "BENCH_MERCHANT_RATE_LIMIT",
    "commit_groups": "BENCH_COMMIT_GROUPS",
    "port_base": "BENCH_PORT_BASE",
    "ref_duration": "BENCH_REF_DURATION",
    "grpc_processes": "BENCH_GRPC_PROCESSES",
    "grpc_concurrency": "BENCH_GRPC_CONCURRENCY",
    "pgbench_clients": "BENCH_PGBENCH_CLIENTS",
    "pgbench_group": "BENCH_PGBENCH_GROUP",
    "conn_count": "BENCH_CONN_COUNT",
    "conn_duration": "BENCH_CONN_DURATION",
    "conn_interval": "BENCH_CONN_INTERVAL",
    "conn_threads": "BENCH_CONN_THREADS",
    "database_url": "BENCH_DATABASE_URL",
    "database": "BENCH_DB",
    "redis_url": "BENCH_REDIS_URL",
    "keep_database": "BENCH_KEEP_DB",
    "skip": "BENCH_SKIP",
    "out": "BENCH_OUT",
    "workdir": "BENCH_WORKDIR",
    "install_tools": "BENCH_INSTALL_TOOLS",
    "profile": "BENCH_PROFILE",
    "profile_native": "BENCH_PROFILE_NATIVE",
}


def _coerce(name: str, raw: str) -> Any:
    default = getattr(BenchConfig, name)
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, tuple):
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    return raw


def load(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> BenchConfig:
    env = dict(os.environ if environ is None else environ)
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load-test the Pi Platform mesh (see bench/README.md). "
        "Every setting also reads BENCH_<NAME> from the environment.",
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds per phase (tests)")
    parser.add_argument("--duration", type=float, help="seconds of the measured flow run")
    parser.add_argument("--connections", type=int, help="concurrent connections of the flow run")
    parser.add_argument("--replicas", type=int, help="processes per service")
    parser.add_argument("--out", help="JSON report path")
    parser.add_argument(
        "--skip", help="comma list of phases to skip: low,grpc,h2load,pgbench,connections"
    )
    args = parser.parse_args(argv)

    quick = args.quick or env.get("BENCH_QUICK", "") in ("1", "true", "yes")
    config = BenchConfig(quick=quick)
    if quick:
        config = replace(config, **QUICK)
    overrides: dict[str, Any] = {}
    if env.get("DATABASE_URL", "").strip():
        overrides["database_url"] = env["DATABASE_URL"].strip()
    for name, var in _ENV.items():
        if env.get(var, "").strip():
            overrides[name] = _coerce(name, env[var])
    for name in ("duration", "connections", "replicas", "out"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.skip is not None:
        overrides["skip"] = _coerce("skip", args.skip)
    config = replace(config, **overrides)
    if min(config.connections, config.low_connections, config.replicas, config.merchants) < 1:
        parser.error("connections, low connections, replicas and merchants must be at least 1")
    if config.observability not in ("on", "off", "both"):
        parser.error("BENCH_OBSERVABILITY must be on, off or both")
    if not config.database.startswith("pi_bench"):
        parser.error("BENCH_DB must start with pi_bench (the bench drops and recreates it)")
    return config
