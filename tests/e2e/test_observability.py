"""Observability of the running mesh: one connected trace per request, counters that say
what happened, every metric the dashboards and alerts use present in a live scrape, and
no card number or secret in spans or logs.

The e2e mesh traces every request (the edge samples 100%) into a local OTLP receiver's
file (`mesh.traces_path`) and serves each process's metrics on its own port.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import mesh_secrets
from tests.support.leaks import leaks

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "k8s" / "monitoring"
APPROVE_CARD = "4242424242424242"
DECLINE_CARD = "4000000000000002"
WAIT = 20.0


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        body: bytes = reply.read()
    return body.decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the series `name{labels}` in a Prometheus text scrape (0 if absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        series, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', series.partition("{")[2]))
        if series.partition("{")[0] == name and found == labels:
            return float(value)
    return 0.0


def spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_trace(path: Path, root_name: str, needed: Iterable[str]) -> list[dict[str, Any]]:
    """The spans of the newest trace with a span named `root_name` once it has a SERVER
    span for each name in `needed`."""
    deadline = time.monotonic() + WAIT
    needed = set(needed)
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        everything = spans(path)
        roots = [s for s in everything if s["name"] == root_name and s["kind"] == "SERVER"]
        if roots:
            trace_id = roots[-1]["trace_id"]
            found = [s for s in everything if s["trace_id"] == trace_id]
            served = {s["name"] for s in found if s["kind"] == "SERVER"}
            if needed <= served and any(s["service"] == "pi-edge" for s in found):
                return found
        time.sleep(0.25)
    raise AssertionError(f"no complete trace for {root_name}: {[s['name'] for s in found]}")


def tree(trace: list[dict[str, Any]]) -> str:
    """The span tree, one span per line, indented under its parent."""
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    ids = {s["span_id"] for s in trace}
    for span in sorted(trace, key=lambda s: s["start_ns"]):
        parent = span["parent_span_id"] if span["parent_span_id"] in ids else None
        by_parent.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in by_parent.get(parent, []):
            ms = (span["end_ns"] - span["start_ns"]) / 1e6
            lines.append(
                f"{'  ' * depth}{span['service']}: {span['kind']} {span['name']} {ms:.1f}ms"
            )
            walk(span["span_id"], depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def assert_connected(trace: list[dict[str, Any]]) -> None:
    """One root (the edge's), and every other span's parent is in the trace."""
    ids = {s["span_id"] for s in trace}
    roots = [s for s in trace if s["parent_span_id"] not in ids]
    assert len(roots) == 1, tree(trace)
    assert roots[0]["service"] == "pi-edge", tree(trace)


def pay(mesh: Any, token: str, transaction_id: str, card: str) -> dict[str, Any]:
    reply = mesh.request(
        "POST",
        "/v1/payments",
        {
            "transactionId": transaction_id,
            "amount": "500",
            "method": "PAYMENT_METHOD_TYPE_CARD",
            "card": {"number": card, "expMonth": 12, "expYear": 2034, "cvc": "123"},
        },
        token=token,
    )
    assert reply.status == 200, reply
    payment: dict[str, Any] = reply.json()["payment"]
    return payment


def test_a_journey_is_one_connected_trace_and_the_counters_say_what_happened(
    mesh: Any,
) -> None:
    payments_url = f"http://127.0.0.1:{mesh.metrics_ports['payments']}/metrics"
    before = scrape(payments_url)
    merchant = mesh.create_merchant()
    reply = mesh.request(
        "POST", "/v1/transactions", {"amount": "1000", "currency": "EUR"}, token=merchant.token
    )
    assert reply.status == 200, reply
    transaction_id = reply.json()["transaction"]["id"]
    paid = pay(mesh, merchant.token, transaction_id, APPROVE_CARD)
    declined = pay(mesh, merchant.token, transaction_id, DECLINE_CARD)
    assert paid["status"] == "PAYMENT_STATUS_SUCCEEDED"
    assert declined["status"] == "PAYMENT_STATUS_FAILED"

    created = wait_for_trace(
        mesh.traces_path,
        "pi.transactions.v1.TransactionService/CreateTransaction",
        ["pi.payments.v1.PaymentLedgerService/RegisterTransactions"],
    )
    assert_connected(created)
    payment = wait_for_trace(
        mesh.traces_path,
        "pi.payments.v1.PaymentService/CreatePayment",
        ["pi.transactions.v1.TransactionLedgerService/ApplyMovements"],
    )
    assert_connected(payment)
    print("\nCreateTransaction:\n" + tree(created) + "\nCreatePayment:\n" + tree(payment))
    # edge → payments → (outbox delivery) → transactions, parent by parent.
    by_id = {s["span_id"]: s for s in payment}
    apply = next(
        s for s in payment if s["kind"] == "SERVER" and s["name"].endswith("/ApplyMovements")
    )
    chain = [apply]
    while chain[-1]["parent_span_id"] in by_id:
        chain.append(by_id[chain[-1]["parent_span_id"]])
    assert chain[0]["service"] == "transactions"
    assert "payments" in [s["service"] for s in chain]
    assert chain[-1]["service"] == "pi-edge"
    assert any(s["name"].startswith("db.unit") for s in payment), tree(payment)

    after = scrape(payments_url)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    card = {"method": "CARD", "capture_mode": "AUTOMATIC"}
    assert delta("pi_payments_total", **card, status="SUCCEEDED", failure_reason="") == 1
    assert delta("pi_payments_total", **card, status="FAILED", failure_reason="CARD_DECLINED") == 1
    sandbox = {"processor": "sandbox"}
    assert delta("pi_authorizations_total", **sandbox, outcome="APPROVED", decline_reason="") == 1
    assert (
        delta(
            "pi_authorizations_total",
            **sandbox,
            outcome="DECLINED",
            decline_reason="CARD_DECLINED",
        )
        == 1
    )
    rpc = {
        "grpc_type": "unary",
        "grpc_service": "pi.payments.v1.PaymentService",
        "grpc_method": "CreatePayment",
    }
    assert delta("grpc_server_handled_total", **rpc, grpc_code="OK") == 2
    assert delta("grpc_server_started_total", **rpc) == 2


def _names_in(expression: str) -> set[str]:
    """Metric names in a PromQL expression (label names, functions and keywords dropped)."""
    expression = re.sub(r"\{[^}]*\}", "", expression)  # label matchers
    expression = re.sub(r"\[[^\]]*\]", "", expression)  # ranges
    expression = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expression
    )
    expression = re.sub(r'"[^"]*"', "", expression)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*(?:$|[^a-zA-Z0-9_:(]))", expression))
    functions_and_words = {
        "sum",
        "rate",
        "irate",
        "increase",
        "histogram_quantile",
        "max",
        "min",
        "avg",
        "count",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "clamp_min",
        "clamp_max",
        "abs",
        "time",
        "vector",
        "absent",
        "le",
        "topk",
        "label_replace",
        "e",
        "inf",
        "NaN",
        "Inf",
    }
    return {w for w in words if w not in functions_and_words and not w[0].isdigit()}


def used_metric_names() -> set[str]:
    names: set[str] = set()
    recorded: set[str] = set()
    rules = yaml.safe_load((MONITORING / "prometheus" / "rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            names |= _names_in(rule["expr"])
            if "record" in rule:
                recorded.add(rule["record"])
    for path in sorted((MONITORING / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                names |= _names_in(target["expr"])
    return names - recorded - {"up", "ALERTS"}


def _exposed(text: str) -> set[str]:
    found = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    found |= {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"
    }
    suffixes = ("_bucket", "_count", "_sum", "_total", "_created")
    found |= {name + suffix for name in found for suffix in suffixes}
    return found


def test_every_metric_a_dashboard_or_alert_uses_is_in_a_live_scrape(mesh: Any) -> None:
    exposed: set[str] = set()
    for port in mesh.metrics_ports.values():
        exposed |= _exposed(scrape(f"http://127.0.0.1:{port}/metrics"))
    exposed |= _exposed(scrape(f"http://127.0.0.1:{mesh.edge_metrics_port}/stats/prometheus"))
    used = used_metric_names()
    assert len(used) > 20, sorted(used)
    missing = sorted(used - exposed)
    assert not missing, missing


def test_the_edge_metrics_listener_serves_only_prometheus_stats(mesh: Any) -> None:
    text = scrape(f"http://127.0.0.1:{mesh.edge_metrics_port}/stats/prometheus")
    assert "envoy_http_downstream_rq_total" in text
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(f"http://127.0.0.1:{mesh.edge_metrics_port}/quitquitquit")
    assert refused.value.code == 404


def test_no_card_number_or_secret_in_spans_or_logs(mesh: Any) -> None:
    merchant = mesh.create_merchant()
    reply = mesh.request(
        "POST", "/v1/transactions", {"amount": "1000", "currency": "EUR"}, token=merchant.token
    )
    pay(mesh, merchant.token, reply.json()["transaction"]["id"], DECLINE_CARD)
    wait_for_trace(
        mesh.traces_path,
        "pi.payments.v1.PaymentService/CreatePayment",
        ["pi.payments.v1.PaymentService/CreatePayment"],
    )
    assert spans(mesh.traces_path), "no spans were exported"
    texts = {"spans": mesh.traces_path.read_text()}
    texts |= {child.name: child.tail(50_000_000) for child in mesh.processes.children}
    found = leaks(texts, mesh_secrets(mesh))
    assert not found, found  # and again after the whole e2e suite (conftest)
