"""F8: twice the measured capacity, open loop. Load must be shed quickly (429/503), no call
may wait past `hang_bound`, and the mesh must recover (the runner measures that).

The generator (`chaos.openloop`) runs in a process of its own, next to the harness's
regular closed-loop clients; its calls and flows join the scenario's journal, so the
lost/double/mismatch checks cover every payment it saw acknowledged.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from chaos.config import REPO
from chaos.openloop import Plan, Result, record_into, result_from_json

if TYPE_CHECKING:
    from chaos.runner import Run

SHED = ("429", "503")
SERVICES = ("auth", "transactions", "payments")


def overload(run: Run, seconds: float, notes: dict[str, Any]) -> None:
    cfg = run.config
    plan = Plan(
        port=run.ports.envoy_http,
        tokens=run.load_tokens,
        exp_year=run.exp_year,
        seconds=cfg.overload_seconds,
        factor=cfg.overload_factor,
        measure_seconds=cfg.overload_measure,
        connections=cfg.overload_connections,
        # Past the bound is already a failure; waiting a little longer shows by how much.
        call_timeout=cfg.hang_bound + 5.0,
    )
    limit = plan.measure_seconds + plan.seconds + 2 * plan.call_timeout + 30.0
    process = subprocess.Popen(
        [sys.executable, "-m", "chaos.openloop"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(json.dumps(asdict(plan)), timeout=limit)
    finally:
        if process.poll() is None:  # timed out, or interrupted: ours, stopped by pid
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"the open-loop generator failed ({process.returncode}): {err[-2000:]}")
    result = result_from_json(json.loads(out))
    record_into(run.journal, result)
    run.fault_end = time.monotonic()  # every overload call has been answered or given up
    notes.update(summarize(result, run.capacity, run.journal.slowest, cfg.hang_bound))
    notes["edge_overflow"] = edge_overflow(run.ports.envoy_admin)


def edge_overflow(admin_port: int) -> dict[str, int]:
    """Calls Envoy's circuit breakers refused, per service: the 503s that never reached
    one (too many in flight: active overflow; waiting for a connection: pending)."""
    url = f"http://127.0.0.1:{admin_port}/stats?filter=upstream_rq_(active|pending)_overflow$"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    counts: Counter[str] = Counter()
    for line in text.splitlines():  # cluster.<name>.upstream_rq_active_overflow: <n>
        name, _, value = line.partition(": ")
        parts = name.split(".")
        if len(parts) == 3 and parts[1] in SERVICES and value.strip().isdigit():
            counts[parts[1]] += int(value)
    return dict(sorted(counts.items()))


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3)


def summarize(
    result: Result, baseline: float | None, slowest: float, bound: float
) -> dict[str, Any]:
    """F8's notes, and in `overload_failed` why it failed (empty: it passed)."""
    calls = [c for c in result.calls if c[0] == "overload"]
    statuses = Counter(str(status) for _, status, _, _ in calls)
    shed = {s: statuses[s] for s in SHED if statuses[s]}
    acked_seconds = [seconds for _, status, seconds, _ in calls if status == 200]
    span = max(1e-3, result.overload_ended - result.overload_started)
    acked_flows = sum(1 for t in result.flow_times if t >= result.overload_started)
    longest = max([slowest, *(c[2] for c in result.calls)])
    shed_share = sum(shed.values()) / len(calls) if calls else 0.0
    failed = []
    if longest > bound:
        failed.append(f"a call waited {longest:.1f} s (> {bound:g} s)")
    if not shed:
        failed.append("nothing was shed with 429/503: the mesh was not overloaded or queued")
    return {
        "capacity_flows_per_s": None if result.capacity is None else round(result.capacity, 1),
        "baseline_flows_per_s": baseline,  # F0's, with the harness's clients only
        "offered_flows_per_s": round(result.offered_rate, 1),
        "arrivals": result.arrivals,
        "no_connection": result.no_connection,
        "max_flows_in_flight": result.max_in_flight,
        "generator_max_lag_s": round(result.max_lag_s, 2),
        "acked_flows_per_s": round(acked_flows / span, 1),
        "overload_calls": len(calls),
        "shed_by_status": shed,
        "shed_share": round(shed_share, 3),
        "other_errors": {s: n for s, n in sorted(statuses.items()) if s not in (*SHED, "200")},
        "acked_p50_s": _percentile(acked_seconds, 0.50),
        "acked_p99_s": _percentile(acked_seconds, 0.99),
        "longest_call_s": round(longest, 2),
        "overload_failed": failed,
    }
