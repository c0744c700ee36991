"""`make prometheus`: a local Prometheus scraping everything `make run` serves, with the
alert rules of k8s/monitoring loaded.

Needs the `prometheus` binary (Debian: `apt-get install prometheus`). Its data lives in
`<var>/prometheus`; the UI (graphs, /alerts, /rules) on http://127.0.0.1:9090. Job names
are the ones the rules and dashboards use: pi-auth, pi-transactions, pi-payments, pi-edge.
Takes the launcher's port flags, so it finds a `make run` started with other ports.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from pi.launcher.options import SERVICES, LaunchOptions

RULES = Path("k8s") / "monitoring" / "prometheus" / "rules.yml"


def scrape_config(options: LaunchOptions, rules: Path) -> dict[str, Any]:
    """The prometheus.yml for the mesh `options` describes."""
    jobs: list[dict[str, Any]] = [
        {
            "job_name": f"pi-{service}",
            "static_configs": [
                {
                    "targets": [
                        f"127.0.0.1:{options.metrics_port(service, replica)}"
                        for replica in range(options.replicas)
                    ]
                }
            ],
        }
        for service in SERVICES
    ]
    jobs.append(
        {
            "job_name": "pi-edge",
            "metrics_path": "/stats/prometheus",
            "static_configs": [{"targets": [f"127.0.0.1:{options.edge_metrics_port}"]}],
        }
    )
    return {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": [str(rules.resolve())],
        "scrape_configs": jobs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pi.launcher.prometheus", description=__doc__)
    parser.add_argument("--var-dir", type=Path, default=Path("var"))
    parser.add_argument("--replicas", type=int, default=int(os.environ.get("REPLICAS") or 1))
    parser.add_argument("--grpc-port-base", type=int, default=LaunchOptions.grpc_port_base)
    parser.add_argument("--edge-metrics-port", type=int, default=LaunchOptions.edge_metrics_port)
    parser.add_argument("--listen", default="127.0.0.1:9090")
    parser.add_argument("--config-only", action="store_true", help="write the config and stop")
    args = parser.parse_args(argv)
    options = LaunchOptions(
        var_dir=args.var_dir,
        replicas=args.replicas,
        grpc_port_base=args.grpc_port_base,
        edge_metrics_port=args.edge_metrics_port,
    )
    home = options.var / "prometheus"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(options, options.root / RULES)))
    print(f"wrote {config}")
    if args.config_only:
        return 0
    binary = shutil.which("prometheus")
    if binary is None:
        print("no `prometheus` on PATH: apt-get install prometheus", file=sys.stderr)
        return 1
    print(f"Prometheus on http://{args.listen} (alerts: http://{args.listen}/alerts)")
    os.execv(
        binary,
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address={args.listen}",
        ],
    )
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
