"""k8s/monitoring: the alert rules pass promtool's checks and unit tests, Alertmanager's
configuration passes amtool, the dashboards are well-formed, the PrometheusRule is
current, and what is scraped matches the ports the pods open.

promtool and amtool come from Debian's `prometheus` and `prometheus-alertmanager`
(.ci/run installs them); without them these tests skip, except in CI (CI=true).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pi.launcher.options import SERVICES, LaunchOptions
from pi.launcher.prometheus import scrape_config
from pi.platform.config import SERVICE_PORTS
from pi.platform.observability.codes import SERVER_FAULT_CODES
from pi.platform.observability.settings import METRICS_PORT_OFFSET

REPO = Path(__file__).resolve().parents[3]
MONITORING = REPO / "k8s" / "monitoring"
RULES = MONITORING / "prometheus" / "rules.yml"
REQUIRED_ALERTS = {
    "PiTargetDown",
    "PiAvailabilityBurnFast",
    "PiAvailabilityBurnSlow",
    "PiAvailabilityBurnSteady",
    "PiEdgeAvailabilityBurnFast",
    "PiEdgeAvailabilityBurnSlow",
    "PiEdgeAvailabilityBurnSteady",
    "PiLatencyBurnFast",
    "PiLatencyBurnSlow",
    "PiLatencyBurnSteady",
    "PiOutboxDeliveryStuck",
    "PiReconcilerStuck",
    "PiAuthorizationRateDrop",
    "PiProcessorUnavailableSpike",
    "PiDbPoolWaiters",
    "PiSpansDropped",
}


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (.ci/run installs it)")
        pytest.skip(f"{name} is not installed (apt-get install prometheus prometheus-alertmanager)")
    return found


def run(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


def alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_promtool_checks_the_rules() -> None:
    result = run(tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_burn_rate_outbox_and_reconciler_alerts_pass_their_unit_tests() -> None:
    result = run(tool("promtool"), "test", "rules", "rules_test.yml", cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load((RULES.parent / "rules_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert {"PiAvailabilityBurnFast", "PiOutboxDeliveryStuck", "PiReconcilerStuck"} <= tested


def test_amtool_checks_the_alertmanager_config() -> None:
    config = MONITORING / "alertmanager" / "alertmanager.yml"
    result = run(tool("amtool"), "check-config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    routes = yaml.safe_load(config.read_text())["route"]["routes"]
    assert {r["receiver"] for r in routes} == {"pi-oncall", "pi-tickets"}


def test_every_required_alert_exists_and_says_how_urgent_it_is() -> None:
    rules = alerts()
    assert set(rules) >= REQUIRED_ALERTS, sorted(REQUIRED_ALERTS - set(rules))
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        assert rule["annotations"]["summary"], name


def test_the_rules_count_the_same_server_faults_as_the_spans() -> None:
    text = RULES.read_text()
    faults = next(
        r["expr"]
        for g in yaml.safe_load(text)["groups"]
        for r in g["rules"]
        if r.get("record") == "pi:grpc_server_faults:ratio_rate5m"
    )
    listed = set(faults.split('grpc_code=~"')[1].split('"')[0].split("|"))
    assert listed == SERVER_FAULT_CODES


def test_the_prometheus_rule_is_rendered_from_the_rules_file() -> None:
    script = MONITORING / "prometheus" / "render_rule.py"
    result = run(sys.executable, str(script), "--check")
    assert result.returncode == 0, "stale: run k8s/monitoring/prometheus/render_rule.py"


def test_dashboards_are_grafana_json_with_a_query_in_every_panel() -> None:
    paths = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
    assert {p.stem for p in paths} == {
        "pi-red",
        "pi-payments",
        "pi-processor",
        "pi-outbox",
        "pi-postgres",
        "pi-envoy",
    }
    uids = set()
    for path in paths:
        dashboard = json.loads(path.read_text())
        uids.add(dashboard["uid"])
        assert dashboard["panels"], path.name
        for panel in dashboard["panels"]:
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), (
                path.name,
                panel["title"],
            )
    assert len(uids) == len(paths)


def test_scraped_ports_are_the_ports_the_pods_open() -> None:
    for service, port in SERVICE_PORTS.items():
        deployment = next(
            d
            for d in yaml.safe_load_all((REPO / "k8s" / "base" / f"{service}.yaml").read_text())
            if d and d["kind"] == "Deployment"
        )
        ports = {
            p["name"]: p["containerPort"]
            for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        }
        assert ports["metrics"] == port + METRICS_PORT_OFFSET
    scraping = list(yaml.safe_load_all((MONITORING / "scraping.yaml").read_text()))
    monitors = [d for d in scraping if d["kind"] in ("PodMonitor", "ServiceMonitor")]
    assert {m["metadata"]["name"] for m in monitors} == {
        "pi-services",
        "pi-edge",
        "pi-otel-collector",
    }
    policy = next(d for d in scraping if d["kind"] == "NetworkPolicy")
    allowed = {p["port"] for p in policy["spec"]["ingress"][0]["ports"]}
    assert allowed == {p + METRICS_PORT_OFFSET for p in SERVICE_PORTS.values()} | {9902}


def test_the_monitoring_kustomization_builds(build_kustomization: Any) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    result = run("kubectl", "kustomize", str(MONITORING))
    assert result.returncode == 0, result.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(result.stdout) if d}
    assert {"PodMonitor", "ServiceMonitor", "PrometheusRule", "Deployment", "Secret"} <= kinds


def test_the_local_prometheus_scrapes_every_process_of_make_run(tmp_path: Path) -> None:
    options = LaunchOptions(root=REPO, var_dir=tmp_path, replicas=2)
    config = scrape_config(options, RULES)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {f"pi-{s}" for s in SERVICES} | {"pi-edge"}
    targets = jobs["pi-payments"]["static_configs"][0]["targets"]
    assert targets == ["127.0.0.1:51053", "127.0.0.1:51153"]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = run(tool("promtool"), "check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
