"""`python -m chaos --quick`: every fault scenario briefly, end to end.

The harness owns its PostgreSQL (embedded) and Redis and starts the whole mesh behind
Envoy; each scenario runs a few seconds of load with its fault, then the checks against
PostgreSQL and the sandbox processor's book. The run must find nothing lost, charged
twice or mismatched, and must show that each fault did happen.
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
from chaos.config import ALL_SCENARIOS
from chaos.runner import PROXY_OFFSET

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(480)]


def _free_port_base() -> int:
    for _ in range(50):
        base = random.randrange(20000, 30000, 200)
        ports = [*Ports(base).all(replicas=1), base + PROXY_OFFSET]
        if all(port_free(p) for p in ports):
            return base
    pytest.skip("no free block of ports for the chaos run")


@pytest.fixture(scope="module")
def quick_run() -> Iterator[tuple[dict[str, Any], str, int]]:
    # Directly under the temp dir: the embedded server's socket path must stay short.
    work = Path(tempfile.mkdtemp(prefix="pi-chaos-"))
    out = work / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAOS_", "PI_"))}
    env.update(
        {
            "CHAOS_PORT_BASE": str(_free_port_base()),
            "CHAOS_WORKDIR": str(work / "run"),
            "CHAOS_OUT": str(out),
        }
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "chaos", "--quick"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=450,
            check=False,
        )
        assert out.exists(), f"no report\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        yield json.loads(out.read_text()), done.stdout, done.returncode
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_every_scenario_ran_and_nothing_was_lost_doubled_or_mismatched(
    quick_run: tuple[dict[str, Any], str, int],
) -> None:
    report, stdout, status = quick_run
    assert "failure" not in report, report.get("failure_traceback")
    rows = {row["scenario"]: row for row in report["scenarios"]}
    assert list(rows) == list(ALL_SCENARIOS)
    for sid, row in rows.items():
        assert row["flows"] > 0 and row["acknowledged"] > 0, (sid, row)
        assert row["requests"] >= row["acknowledged"]
        assert (row["lost"], row["double_charges"]) == (0, 0), (sid, row["examples"])
        assert row["pending_past_window"] == 0, (sid, row["examples"])
        assert row["outbox_undelivered"] == 0, sid
        assert row["recover_s"] is not None, sid
    for sid in ALL_SCENARIOS:
        assert f"\n{sid} " in stdout  # a table row per scenario
    assert (
        (status == 0)
        == ("verdict: PASS" in stdout)
        == (not any(r["failed"] for r in rows.values()))
    )


def test_the_processor_s_money_equals_ours(quick_run: tuple[dict[str, Any], str, int]) -> None:
    report, _, _ = quick_run
    mismatches = [
        f"{row['scenario']}: {text}"
        for row in report["scenarios"]
        for text in row["examples"]["money_mismatches"]
    ]
    assert not mismatches, mismatches


def test_each_fault_happened(quick_run: tuple[dict[str, Any], str, int]) -> None:
    report, _, _ = quick_run
    rows = {row["scenario"]: row for row in report["scenarios"]}
    notes = {sid: row["notes"] for sid, row in rows.items()}
    assert notes["F1"]["killed"], notes
    assert notes["F3"]["restarts"] == ["fast", "immediate"], notes
    assert notes["F4"]["redis_down_seconds"] > 0, notes
    assert notes["F5"]["phases"] == ["latency 200 ms", "drops 2%", "partition"], notes
    assert notes["F7"]["killed"] == "payments#0", notes
    overload = notes["F8"]
    assert overload["capacity_flows_per_s"] > 0, overload
    assert overload["offered_flows_per_s"] > overload["capacity_flows_per_s"], overload
    # Shed by the edge's circuit breakers, quickly: nothing waited past the bound.
    assert sum(overload["shed_by_status"].values()) > 0, overload
    assert sum(overload["edge_overflow"].values()) > 0, overload
    assert overload["longest_call_s"] <= report["config"]["hang_bound"], overload
    slow = rows["F9"]["notes"]
    assert slow["cut_by_edge"] == slow["slow_connections"] > 0, slow
    assert slow["held_past_limit"] == 0
    assert report["mesh"]["restarts"], "no process was restarted by the supervisor"
