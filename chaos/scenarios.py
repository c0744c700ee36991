"""The faults F1-F9. Each scenario may reconfigure the mesh before its load (`setup`),
injects its fault while the load runs (`inject`, bounded by the load's duration), and
puts things back afterwards (`restore`). What it did goes to `notes` for the report, and
when its last fault ended to `run.fault_end` (recovery is measured from there; a fault
that `restore` ends is over once restored).
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chaos.infra import ProxyMode
from chaos.overload import overload

if TYPE_CHECKING:
    from chaos.runner import Run

MESH_GROUPS = ("auth", "transactions", "payments", "envoy")


@dataclass
class Scenario:
    id: str
    fault: str
    inject: Callable[[Run, float, dict[str, Any]], None]
    setup: Callable[[Run], None] | None = None
    restore: Callable[[Run], None] | None = None
    load: dict[str, Any] = field(default_factory=dict)  # overrides of the load's settings


def _sleep_until(deadline: float) -> None:
    while time.monotonic() < deadline:
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def baseline(run: Run, seconds: float, notes: dict[str, Any]) -> None:
    _sleep_until(time.monotonic() + seconds)


def kill_processes(run: Run, seconds: float, notes: dict[str, Any]) -> None:
    """F1: SIGKILL a random service process or Envoy every 1-3 s (the supervisor
    restarts it), each group at least once when time allows."""
    rng = random.Random()
    deadline = time.monotonic() + seconds
    order = list(MESH_GROUPS)
    rng.shuffle(order)
    kills: list[str] = []
    while time.monotonic() + 1.0 < deadline:
        time.sleep(rng.uniform(1.0, min(3.0, max(1.0, deadline - time.monotonic()))))
        group = order.pop() if order else rng.choice(MESH_GROUPS)
        killed = run.mesh.kill(group, rng)
        if killed:
            kills.append(killed)
            run.fault_end = time.monotonic()
    notes["killed"] = kills


def _payments_env(env: dict[str, str]) -> Callable[[Run], None]:
    def apply(run: Run) -> None:
        run.mesh.reconfigure("payments", env)

    return apply


def crash_after_approval(run: Run, seconds: float, notes: dict[str, Any]) -> None:
    """F2: the payment processes kill themselves after a share of processor approvals
    (PI_SANDBOX_CRASH_PERCENT, set by `setup`); this counts the crashes."""
    before = sum(p.restarts for p in run.mesh.processes("payments"))
    _sleep_until(time.monotonic() + seconds)
    notes["payment_crashes"] = sum(p.restarts for p in run.mesh.processes("payments")) - before


def restart_postgres(run: Run, seconds: float, notes: dict[str, Any]) -> None:
    """F3: a fast, then an immediate, shutdown of PostgreSQL, each restarted after 1 s."""
    start = time.monotonic()
    done = []
    for i, mode in enumerate(("fast", "immediate")):
        _sleep_until(start + seconds * (i + 0.5) / 2.5)
        run.postgres.restart(mode, down_for=1.0)
        run.fault_end = time.monotonic()
        done.append(mode)
    notes["restarts"] = done
    _sleep_until(start + seconds)


def stop_redis(run: Run, seconds: float, notes: dict[str, Any]) -> None:
    """F4: Redis stopped for `redis_down` s (20 in the full run), then started again."""
    down = min(run.config.redis_down, max(1.0, seconds - 2.0))
    start = time.monotonic()
    _sleep_until(start + 1.0)
    run.redis.stop()
    _sleep_until(time.monotonic() + down)
    run.redis.start()
    run.fault_end = time.monotonic()
    notes["redis_down_seconds"] = down
    _sleep_until(start + seconds)


def disturb_network(run: Run, seconds: float, notes: dict[str, Any]) -> None:
    """F5: between payments and transactions: 200 ms latency, then 2% of chunks cut,
    then a partition, a third of the time each."""
    phases = (
        ("latency 200 ms", ProxyMode(latency=0.2)),
        ("drops 2%", ProxyMode(drop=0.02)),
        ("partition", ProxyMode(partition=True)),
    )
    start = time.monotonic()
    try:
        for i, (_name, mode) in enumerate(phases):
            run.set_proxies(mode)
            _sleep_until(start + seconds * (i + 1) / len(phases))
    finally:
        run.set_proxies(ProxyMode())
        run.fault_end = time.monotonic()
    notes["phases"] = [name for name, _ in phases]


def retry_storm(run: Run, seconds: float, notes: dict[str, Any]) -> None:
    """F7: the load (set up as a storm: every call sent 4 times at once with its key,
    failures retried at once) while one payment process is killed halfway."""
    start = time.monotonic()
    _sleep_until(start + seconds / 2)
    notes["killed"] = run.mesh.kill("payments", random.Random())
    run.fault_end = time.monotonic()
    _sleep_until(start + seconds)


def slow_clients(run: Run, seconds: float, notes: dict[str, Any]) -> None:
    """F9: connections that send a header byte every 2 s and never finish their request.
    The edge must cut each within its request-headers timeout (plus slack)."""
    count = run.config.slowloris
    limit = run.edge_headers_timeout + 5.0
    socks: list[tuple[socket.socket, float]] = []
    refused = 0
    for _ in range(count):
        with contextlib.suppress(OSError):
            s = socket.create_connection(("127.0.0.1", run.ports.envoy_http), timeout=2)
            s.sendall(b"POST /v1/transactions HTTP/1.1\r\nHost: chaos\r\n")
            s.setblocking(False)
            socks.append((s, time.monotonic()))
            continue
        refused += 1  # not opened (the edge's connection limit, or a loaded machine)
    opened_count = len(socks)
    cut: list[float] = []
    deadline = time.monotonic() + max(seconds, limit + 2.0)
    while socks and time.monotonic() < deadline:
        time.sleep(2.0)
        alive = []
        for s, opened_at in socks:
            try:
                s.sendall(b"X")
                data = s.recv(4096) if _readable(s) else b"-"
                if data == b"":
                    raise ConnectionResetError
                alive.append((s, opened_at))
            except OSError:
                cut.append(time.monotonic() - opened_at)
                s.close()
        socks = alive
    for s, _ in socks:
        s.close()
    run.fault_end = time.monotonic()
    notes["slow_connections"] = opened_count
    notes["not_opened"] = refused
    notes["cut_by_edge"] = len(cut)
    notes["held_past_limit"] = len(socks) + sum(1 for c in cut if c > limit)
    notes["longest_held_s"] = round(max(cut, default=0.0), 1)


def _readable(s: socket.socket) -> bool:
    import select

    ready, _, _ = select.select([s], [], [], 0)
    return bool(ready)


SCENARIOS: dict[str, Scenario] = {
    s.id: s
    for s in (
        Scenario("F0", "none (baseline; measures capacity)", baseline),
        Scenario("F1", "SIGKILL of services and Envoy at random moments", kill_processes),
        Scenario(
            "F2",
            "SIGKILL of payments between processor approval and settle commit",
            crash_after_approval,
            setup=_payments_env({"PI_SANDBOX_CRASH_PERCENT": "2"}),
            restore=_payments_env({}),
        ),
        Scenario("F3", "PostgreSQL restart (fast, then immediate)", restart_postgres),
        Scenario("F4", "Redis stopped, then restarted", stop_redis),
        Scenario("F5", "latency, drops, partition payments->transactions", disturb_network),
        Scenario(
            "F6",
            "processor times out / unknown for 10% of calls",
            baseline,
            setup=_payments_env({"PI_SANDBOX_UNKNOWN_PERCENT": "10"}),
            restore=_payments_env({}),
        ),
        Scenario(
            "F7",
            "retry storm (4 senders per key, immediate retries)",
            retry_storm,
            load={"storm": 3, "retries": 8},
        ),
        Scenario("F8", "overload: 2x the measured capacity, open loop", overload),
        Scenario("F9", "slowloris connections at the edge", slow_clients),
    )
}
