"""`python -m bench`: set up, run every phase with a time bound, report, clean up.

Phases (each bounded in time; every process started here is stopped by pid in `finally`):

1. tools (wrk, h2load) and RLIMIT_NOFILE; the PostgreSQL server (BENCH_DATABASE_URL or
   DATABASE_URL, else an embedded one in the work dir, durable) and a fresh `pi_bench`
   database on it.
2. the mesh on PostgreSQL + Redis: migrations, 3 services x replicas, Envoy.
3. seed: merchants and tokens through the edge (admin token → CreateMerchant → IssueToken).
4. warm-up, then the measured payment flow over HTTP/JSON through Envoy (wrk + Lua),
   sampling CPU and memory of every process.
5. references: the same flow over native gRPC straight to the services and through
   Envoy (bench.grpc_flow); one RPC with h2load, direct and through Envoy; pgbench
   running the flow's SQL.
6. many keep-alive connections to Envoy doing slow GETs.
7. the JSON report and a short table.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench import grpc_ref, h2load, pgbench, report, targets, wrk
from bench.config import REPO, BenchConfig, load
from bench.database import (
    Postgres,
    counters_per_flow,
    database_counters,
    drop_database,
    recreate_database,
    reset_statements,
    scalar,
    server_settings,
    statements_per_flow,
    table_exists,
    wait_outbox_drained,
)
from bench.mesh import Mesh, Ports, secrets_env
from bench.procstat import Sampler, pids_by_comm, postgres_pids
from bench.profile import Profiler
from bench.seed import EdgeClient, Merchant, create_merchants, issue_tokens
from bench.tools import ensure_tools, raise_nofile, tool_versions
from pi.platform.config import DEFAULT_DB_POOL_SIZE
from pi.platform.db.embedded import EmbeddedPostgres, connections_for

OUTBOX_DRAIN_TIMEOUT = 120.0
# Envoy counters that explain errors and latency: resets, timeouts, retries, overflows,
# local replies by class (cumulative since Envoy started).
_ENVOY_DIAGNOSTICS = (
    r"^(cluster\.(auth|transactions|payments)\.(upstream_rq_(timeout|per_try_timeout|retry"
    r"|retry_overflow|pending_overflow|rx_reset|tx_reset|[45]xx|total)|upstream_cx_"
    r"(destroy_remote_with_active_rq|destroy_local_with_active_rq|connect_fail|total)"
    r"|upstream_rq_pending_active)|http\.http\.(downstream_rq_[1-5]xx|downstream_rq_timeout"
    r"|downstream_rq_rx_reset|downstream_rq_tx_reset|downstream_cx_total|rs_too_large"
    r"|downstream_rq_overload_close)|http\.http\.edge_rate_limit\.rate_limited)$"
)
CALLS = ("create_transaction", "create_payment")


def _log(message: str) -> None:
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)


def _errors_text(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in errors.items()) or "none"


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    cfg = load(argv)
    signal.signal(signal.SIGTERM, _terminate)
    rep: dict[str, Any] = {
        "schema": "pi-bench/1",
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": cfg.public(),
        "machine": report.machine_info(),
    }
    started = time.monotonic()
    status = 2
    try:
        status = Bench(cfg, rep).run()
    except KeyboardInterrupt as exc:
        rep["failure"] = f"interrupted ({exc})"
        _log("interrupted; everything started was stopped")
        status = 130
    except Exception as exc:
        rep["failure"] = f"{type(exc).__name__}: {exc}"
        rep["failure_traceback"] = traceback.format_exc()
        _log(f"FAILED: {type(exc).__name__}: {exc}")
        status = 2
    finally:
        rep["wall_seconds"] = round(time.monotonic() - started, 1)
        rep["targets"] = targets.verdict(rep)
        report.write_json(rep, cfg.out)
        print(report.table(rep))
        print(f"report: {cfg.out}")
    return status


class Bench:
    """One run: `run()` does every phase and fills `rep` (the JSON report) as it goes."""

    def __init__(self, cfg: BenchConfig, rep: dict[str, Any]) -> None:
        self.cfg = cfg
        self.rep = rep
        self.workdir = Path(cfg.workdir)
        self.embedded: EmbeddedPostgres | None = None
        if cfg.database_url:
            server_url = cfg.database_url
        else:
            # Every service process's full pool, migrations and tools, and pgbench.
            self.embedded = EmbeddedPostgres(
                self.workdir / "postgres",
                database="postgres",
                max_connections=connections_for(3 * cfg.replicas, DEFAULT_DB_POOL_SIZE)
                + cfg.pgbench_clients,
                log_path=self.workdir / "log" / "postgres.log",
                # Statements per flow (the report's `statements`): a server given by
                # URL has them only if it loads the module itself.
                settings={"shared_preload_libraries": "pg_stat_statements"},
            )
            server_url = self.embedded.url
        self.pg = Postgres(server_url, cfg.database)
        self.ports = Ports(cfg.port_base)
        self.exp_year = dt.date.today().year + 5
        self.url = f"http://127.0.0.1:{self.ports.envoy_http}"
        self.merchants: list[Merchant] = []
        self.client: EdgeClient | None = None
        self.mesh: Mesh | None = None

    # --- orchestration -------------------------------------------------------------------

    def run(self) -> int:
        cfg, rep = self.cfg, self.rep
        soft, hard = raise_nofile(max(65536, cfg.conn_count * 3 + 4096))
        rep["rlimit_nofile"] = [soft, hard]
        ensure_tools(install=cfg.install_tools)
        rep["tools"] = tool_versions()
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        if self.embedded is None:
            return self._run()
        _log(f"starting an embedded PostgreSQL in {self.embedded.data_dir}")
        self.embedded.start()
        try:
            return self._run()
        finally:
            self.embedded.stop()

    def _run(self) -> int:
        cfg, rep = self.cfg, self.rep

        secret = secrets_env(self.workdir)
        self.mesh = mesh = self._mesh(secret, observability=cfg.observability != "off")
        mesh.check_ports()
        _log(f"recreating database {cfg.database} on {self.pg.describe()}")
        recreate_database(self.pg)
        rep["postgres"] = server_settings(self.pg)
        rep["redis"] = _redis_info(cfg.redis_url)
        self._check_connection_budget()
        try:
            _log("migrating")
            mesh.migrate()
            _log(f"starting {cfg.replicas} process(es) per service and Envoy on {self.ports.base}+")
            mesh.start()
            self.client = EdgeClient("127.0.0.1", self.ports.envoy_http)
            _log(f"seeding {cfg.merchants} merchants and their tokens through the edge")
            self.merchants = create_merchants(
                self.client,
                secret["PI_ADMIN_TOKEN"],
                cfg.merchants,
                f"127.0.0.1:{self.ports.service('auth', 0)}",
                mesh.identity("admin"),
            )
            rep["seed"] = {"merchants": len(self.merchants)}

            self.flow()
            if not cfg.skips("low"):
                self.low_load()
            if cfg.observability == "both":
                self._flow_without_observability(secret)
            rep["references"] = {}
            if not cfg.skips("grpc"):
                self.grpc_references()
            if not cfg.skips("h2load"):
                self.rpc_references()
            rep["references"]["edge_cost"] = _edge_cost(rep)
            if not cfg.skips("pgbench"):
                self.pgbench_reference()
            if not cfg.skips("connections"):
                self.connections()
        finally:
            if self.client is not None:
                self.client.close()
            _log("stopping the mesh")
            mesh = self.mesh
            try:
                mesh.stop()
            finally:
                rep["mesh"] = {"events": mesh.events, "restarts": mesh.restarts()}
                if not cfg.keep_database:
                    with contextlib.suppress(Exception):
                        drop_database(self.pg)

        errors = rep["flow"]["error_count"] + rep.get("connections", {}).get("error_count", 0)
        errors += rep.get("flow_low_load", {}).get("error_count", 0)
        errors += sum(
            r.get("error_count", 0) for r in rep["references"].values() if isinstance(r, dict)
        )
        return 0 if errors == 0 else 1

    def _mesh(self, secret: dict[str, str], *, observability: bool) -> Mesh:
        cfg = self.cfg
        return Mesh(
            repo=REPO,
            workdir=self.workdir,
            ports=self.ports,
            replicas=cfg.replicas,
            base_env={
                "DATABASE_URL": self.pg.url(),
                "REDIS_URL": cfg.redis_url,
                "PI_LOG_LEVEL": cfg.log_level,
                "PI_RATE_LIMIT_PER_MERCHANT": str(cfg.merchant_rate_limit),
                "PI_DB_COMMIT_GROUPS": str(cfg.commit_groups),
                # Every seeded token comes from this one address: not a guessing run.
                "PI_RATE_LIMIT_PER_CLIENT_ADDRESS": "0",
                **secret,
            },
            envoy_concurrency=cfg.envoy_concurrency,
            envoy_access_log=cfg.envoy_access_log,
            edge_rate_limit_rps=cfg.edge_rate_limit_rps or None,
            observability=observability,
            trace_sample_percent=cfg.trace_sample_percent,
        )

    def _flow_without_observability(self, secret: dict[str, str]) -> None:
        """The same flow on the mesh restarted with PI_OBSERVABILITY=off and no tracer;
        the report compares it with the flow measured with observability on."""
        assert self.mesh is not None and self.client is not None
        on = self.rep["flow"]
        _log("observability off: restarting the mesh")
        self.client.close()
        self.client = None
        events = self.mesh.events
        self.mesh.stop()
        self.mesh = self._mesh(secret, observability=False)
        self.mesh.events = [*events, "--- restarted with observability off"]
        self.mesh.start()
        self.client = EdgeClient("127.0.0.1", self.ports.envoy_http)
        self._fresh_tokens()
        self.flow()
        off = self.rep.pop("flow")
        self.rep["flow"] = on
        self.rep["flow_observability_off"] = off
        self.rep["observability"] = observability_cost(on, off, self.cfg.trace_sample_percent)
        _log(
            "observability: "
            f"{self.rep['observability']['flows_per_second_change_percent']:+.1f}% flows/s, "
            f"{self.rep['observability']['cpu_per_flow_change_percent']:+.1f}% CPU per flow"
        )

    def _groups(self) -> dict[str, Callable[[], Iterable[int]]]:
        mesh = self.mesh
        assert mesh is not None

        def pids_of(name: str) -> Callable[[], Iterable[int]]:
            return lambda: mesh.pids().get(name, [])

        groups = {name: pids_of(name) for name in ("envoy", "auth", "transactions", "payments")}
        groups["postgres"] = lambda: postgres_pids(self.cfg.database)
        groups["redis"] = lambda: pids_by_comm("redis-server")
        groups["bench harness"] = lambda: [os.getpid()]
        return groups

    def _sampler(self, only: Iterable[str] | None = None) -> Sampler:
        groups = self._groups()
        if only is not None:
            groups = {name: groups[name] for name in only}
        return Sampler(groups, pss_groups=["postgres"]).start()

    def _tokens(self) -> list[str]:
        return [m.token for m in self.merchants]

    def _fresh_tokens(self) -> None:
        """Access tokens live at most 15 minutes: issue new ones before a later phase."""
        assert self.client is not None
        issue_tokens(self.client, self.merchants)

    # --- phases --------------------------------------------------------------------------

    def flow(self) -> None:
        cfg, mesh = self.cfg, self.mesh
        assert mesh is not None
        _log(f"warm-up: {cfg.warmup:g} s")
        warm = self._run_flow(cfg.warmup, "w")
        self.rep["warmup"] = {
            k: warm[k] for k in ("flows_per_second", "api_calls_per_second", "errors")
        }
        wait_outbox_drained(self.pg, OUTBOX_DRAIN_TIMEOUT)

        _log(f"payment flow: {cfg.connections} connections for {cfg.duration:g} s")
        profiler = None
        if cfg.profile:
            targets = {
                f"{name}#{i}": pid
                for name, pids in mesh.pids().items()
                if name != "envoy"
                for i, pid in enumerate(pids)
            }
            profiler = Profiler(targets, cfg.duration - 1, self.workdir, native=cfg.profile_native)
            profiler.start()
        db_before = database_counters(self.pg)
        counting = reset_statements(self.pg)
        sampler = self._sampler()
        try:
            flow = self._run_flow(cfg.duration, "m")
        finally:
            flow_resources = sampler.stop()
        flow["resources"] = flow_resources
        flow["envoy_stats"] = mesh.admin_stats(_ENVOY_DIAGNOSTICS)
        if profiler is not None:
            self.rep["profile"] = profiler.finish()
        flow["outbox"] = wait_outbox_drained(self.pg, OUTBOX_DRAIN_TIMEOUT)
        time.sleep(1.0)  # backends report their statistics at most once a second
        flow["database"] = counters_per_flow(db_before, database_counters(self.pg), flow["flows"])
        if counting:
            flow["database"]["statements"] = statements_per_flow(self.pg, flow["flows"])
        flow["database_check"] = self._database_check()
        self.rep["flow"] = flow
        _log(f"flow: {flow['flows_per_second']} flows/s, errors {_errors_text(flow['errors'])}")
        mesh.check_alive()

    def low_load(self) -> None:
        """The same flow at a few connections: the latency of a mesh that is not busy
        (where group commit must not make a lone request wait for company)."""
        cfg = self.cfg
        _log(f"low load: {cfg.low_connections} connections for {cfg.low_duration:g} s")
        low = self._run_flow(cfg.low_duration, "l", connections=cfg.low_connections)
        low["connections"] = cfg.low_connections
        low["outbox"] = wait_outbox_drained(self.pg, OUTBOX_DRAIN_TIMEOUT)
        self.rep["flow_low_load"] = low
        worst = targets.worst_p99_ms(low)
        _log(f"low load: {low['flows_per_second']} flows/s, worst p99 {worst} ms")

    def _run_flow(
        self, duration: float, tag: str, *, connections: int | None = None
    ) -> dict[str, Any]:
        return wrk.run_flow(
            self.url,
            connections=connections or self.cfg.connections,
            duration=duration,
            tokens=self._tokens(),
            nonce=f"{tag}{secrets.token_hex(4)}",
            idempotency=self.cfg.idempotency,
            exp_year=self.exp_year,
            workdir=str(self.workdir),
        )

    def grpc_references(self) -> None:
        cfg, ports, refs = self.cfg, self.ports, self.rep["references"]
        self._fresh_tokens()
        direct = (
            f"127.0.0.1:{ports.service('transactions')}",
            f"127.0.0.1:{ports.service('payments')}",
        )
        edge = (f"127.0.0.1:{ports.envoy_http}",) * 2
        # Straight to the services, the load generator is one more mesh peer (the edge's
        # identity: the services answer nothing without a client certificate).
        assert self.mesh is not None
        identity = self.mesh.identity("edge")
        mesh_identity = f"{identity.ca_path},{identity.cert_path},{identity.key_path}"
        for key, (txn_target, pay_target) in (("grpc_direct", direct), ("grpc_envoy", edge)):
            _log(f"{key}: {cfg.grpc_concurrency} concurrent flows for {cfg.ref_duration:g} s")
            sampler = self._sampler()
            try:
                result = grpc_ref.run(
                    repo=REPO,
                    transactions_target=txn_target,
                    payments_target=pay_target,
                    processes=cfg.grpc_processes,
                    concurrency=cfg.grpc_concurrency,
                    duration=cfg.ref_duration,
                    tokens=self._tokens(),
                    nonce=f"{key[5]}{secrets.token_hex(4)}",
                    idempotency=cfg.idempotency,
                    exp_year=self.exp_year,
                    workdir=self.workdir,
                    mesh_identity=mesh_identity if key == "grpc_direct" else None,
                )
            finally:
                resources = sampler.stop()
            result["resources"] = resources
            result["outbox"] = wait_outbox_drained(self.pg, OUTBOX_DRAIN_TIMEOUT)
            refs[key] = result
            _log(
                f"{key}: {result['flows_per_second']} flows/s, "
                f"errors {_errors_text(result['errors'])}"
            )
        assert self.mesh is not None
        self.mesh.check_alive()

    def rpc_references(self) -> None:
        cfg, ports, refs = self.cfg, self.ports, self.rep["references"]
        self._fresh_tokens()
        connections = min(4, cfg.grpc_concurrency)
        # Only through Envoy: the services serve mutual TLS only, and h2load presents no
        # client certificate (grpc_direct measures the services straight, over mTLS).
        for key, target in (("rpc_envoy", f"127.0.0.1:{ports.envoy_http}"),):
            _log(
                f"{key}: h2load CreateTransaction, {cfg.grpc_concurrency} streams "
                f"for {cfg.ref_duration:g} s"
            )
            sampler = self._sampler()
            try:
                result = h2load.run(
                    target,
                    token=self.merchants[0].token,
                    merchant_id=self.merchants[0].id,
                    pg=self.pg,
                    connections=connections,
                    streams=max(1, cfg.grpc_concurrency // connections),
                    duration=cfg.ref_duration,
                    workdir=self.workdir,
                )
            finally:
                resources = sampler.stop()
            result["resources"] = resources
            refs[key] = result
            _log(
                f"{key}: {result['requests_per_second']} calls/s, "
                f"errors {_errors_text(result['errors'])}"
            )
        assert self.mesh is not None
        self.mesh.check_alive()

    def pgbench_reference(self) -> None:
        """pgbench on the flow's SQL twice: each flow's units in transactions of their own,
        and `pgbench_group` flows per transaction, as the group commit sends them. The
        mesh's ratio is to the grouped run (the SQL the services send under load)."""
        cfg, refs = self.cfg, self.rep["references"]
        clients = cfg.pgbench_clients
        for key, flows in (("pgbench", 1), ("pgbench_grouped", cfg.pgbench_group)):
            _log(
                f"pgbench: the flow's SQL, {flows} flow(s) per transaction, {clients} clients"
                f" for {cfg.ref_duration:g} s"
            )
            sampler = self._sampler(only=["postgres"])
            try:
                result = pgbench.run(
                    self.pg,
                    clients=clients,
                    threads=2,
                    duration=cfg.ref_duration,
                    workdir=self.workdir,
                    flows_per_commit=flows,
                )
            finally:
                resources = sampler.stop()
            result["resources"] = resources
            refs[key] = result
            _log(f"pgbench: {result['tps']} flows/s")
        best = refs["pgbench_grouped"].get("tps") or refs["pgbench"].get("tps")
        if best:
            refs["flows_per_pgbench_tps"] = round(self.rep["flow"]["flows_per_second"] / best, 3)

    def connections(self) -> None:
        cfg, mesh = self.cfg, self.mesh
        assert mesh is not None
        soft = self.rep["rlimit_nofile"][0]
        if soft < cfg.conn_count + 1024:
            raise RuntimeError(
                f"RLIMIT_NOFILE is {soft}: too low for {cfg.conn_count} connections "
                "(raise the hard limit, e.g. `ulimit -Hn 65536` as root, or lower BENCH_CONN_COUNT)"
            )
        self._fresh_tokens()
        targets = self._read_targets(limit=2000)
        if not targets:
            raise RuntimeError("no transactions to read for the connection run")
        _log(
            f"connections: {cfg.conn_count} keep-alive connections, one GET every "
            f"{cfg.conn_interval:g} s each, for {cfg.conn_duration:g} s"
        )
        peak = {"active": 0}
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.5):
                value = mesh.admin_stat("http.http.downstream_cx_active")
                if value is not None:
                    peak["active"] = max(peak["active"], value)

        watcher = threading.Thread(target=watch, name="bench-envoy-stats", daemon=True)
        watcher.start()
        sampler = self._sampler()
        try:
            result = wrk.run_connections(
                self.url,
                connections=cfg.conn_count,
                threads=cfg.conn_threads,
                duration=cfg.conn_duration,
                interval_ms=int(cfg.conn_interval * 1000),
                targets=targets,
                workdir=str(self.workdir),
            )
        finally:
            resources = sampler.stop()
            stop.set()
            watcher.join(timeout=5)
        result["resources"] = resources
        result["envoy_stats"] = mesh.admin_stats(_ENVOY_DIAGNOSTICS)
        result["envoy_max_active_connections"] = peak["active"]
        result["interval_s"] = cfg.conn_interval
        if peak["active"] < cfg.conn_count:
            result["errors"]["connections_not_established"] = cfg.conn_count - peak["active"]
            result["error_count"] = sum(result["errors"].values())
            result["all_answered"] = False
        self.rep["connections"] = result
        _log(
            f"connections: {result['requests_answered']} answered, "
            f"p99 {result['latency'].get('p99_ms')} ms, max active {peak['active']}, "
            f"errors {_errors_text(result['errors'])}"
        )
        mesh.check_alive()

    # --- checks --------------------------------------------------------------------------

    def _check_connection_budget(self) -> None:
        """Each service process pools up to PI_DB_POOL_SIZE connections (default 20)."""
        pg, cfg = self.rep["postgres"], self.cfg
        needed = 3 * cfg.replicas * DEFAULT_DB_POOL_SIZE
        if not cfg.skips("pgbench"):
            needed += cfg.pgbench_clients
        available = int(pg["max_connections"]) - int(pg["connections_in_use"]) - 3
        pg["connection_budget"] = {"needed_at_most": needed, "available": available}
        if needed > available:
            _log(
                f"warning: the mesh may open up to {needed} PostgreSQL connections, "
                f"{available} are free (max_connections={pg['max_connections']})"
            )

    def _database_check(self) -> dict[str, Any]:
        """After the outbox drained: as many COMPLETED transactions as SUCCEEDED payments."""
        pg = self.pg
        if not (
            table_exists(pg, "payments.payments") and table_exists(pg, "transactions.transactions")
        ):
            return {"checked": False}
        paid = int(scalar(pg, "SELECT count(*) FROM payments.payments WHERE status = 'SUCCEEDED'"))
        completed = int(
            scalar(pg, "SELECT count(*) FROM transactions.transactions WHERE status = 'COMPLETED'")
        )
        return {
            "checked": True,
            "succeeded_payments": paid,
            "completed_transactions": completed,
            "consistent": paid == completed,
        }

    def _read_targets(self, limit: int) -> list[tuple[str, str]]:
        """(token, transaction id) pairs: transactions the flow created, for their merchants."""
        tokens = {m.id: m.token for m in self.merchants}
        with self.pg.connect() as conn:
            rows = conn.execute(
                "SELECT id, merchant_id FROM transactions.transactions "
                "WHERE merchant_id = ANY(%s) ORDER BY random() LIMIT %s",
                (list(tokens), limit),
            ).fetchall()
        return [(tokens[merchant], txn) for txn, merchant in rows]


def observability_cost(
    on: dict[str, Any], off: dict[str, Any], sample_percent: float
) -> dict[str, Any]:
    """Flows/s and CPU per flow (the mesh's processes: Envoy, services, PostgreSQL, Redis)
    with observability on and off, and the change from off to on in percent."""

    def summary(flow: dict[str, Any]) -> dict[str, Any]:
        return {
            "flows_per_second": flow["flows_per_second"],
            "cpu_ms_per_flow": targets.cpu_ms_per_flow(flow),
        }

    with_it, without = summary(on), summary(off)

    def change(key: str) -> float:
        base = float(without[key]) or 1e-9
        return round((float(with_it[key]) - base) / base * 100, 2)

    return {
        "trace_sample_percent": sample_percent,
        "on": with_it,
        "off": without,
        "flows_per_second_change_percent": change("flows_per_second"),
        "cpu_per_flow_change_percent": change("cpu_ms_per_flow"),
    }


def _redis_info(url: str) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        info = client.info("server")
        persistence = client.info("persistence")
        return {
            "url": url,
            "version": info.get("redis_version"),
            "aof_enabled": persistence.get("aof_enabled"),
        }
    finally:
        client.close()


def _edge_cost(rep: dict[str, Any]) -> dict[str, Any]:
    """What Envoy costs: the same client direct vs. through the edge."""
    refs = rep.get("references", {})
    out: dict[str, Any] = {}
    rpc_direct, rpc_envoy = refs.get("rpc_direct"), refs.get("rpc_envoy")
    if rpc_direct and rpc_envoy and rpc_direct.get("requests_per_second"):
        out["rpc_throughput_loss"] = round(
            1 - (rpc_envoy["requests_per_second"] or 0) / rpc_direct["requests_per_second"], 3
        )
    direct, envoy = refs.get("grpc_direct"), refs.get("grpc_envoy")
    if direct and envoy and direct["flows_per_second"]:
        loss = 1 - envoy["flows_per_second"] / direct["flows_per_second"]
        out["grpc_throughput_loss"] = round(loss, 3)
        added = {}
        for call in CALLS:
            a = direct["calls"][call]["latency"]["p50_ms"]
            b = envoy["calls"][call]["latency"]["p50_ms"]
            if a is not None and b is not None:
                added[call] = round(b - a, 3)
        out["grpc_p50_added_ms"] = added
        flow = rep.get("flow")
        out["summary"] = (
            f"same Python client: {direct['flows_per_second']:.1f} flows/s direct vs "
            f"{envoy['flows_per_second']:.1f} through Envoy ({loss * 100:.1f}% fewer), p50 "
            + "/".join(f"{v:+.2f}" for v in added.values())
            + f" ms per call (txn/pay); HTTP/JSON with wrk: "
            f"{flow['flows_per_second'] if flow else '-'} flows/s"
        )
    return out
