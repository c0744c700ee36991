"""`python -m pi.launcher` (what `make run` runs). `REPLICAS=n` runs n of each service.

The services listen on --grpc-port-base (auth), +1 (transactions), +2 (payments), and
replica i 100·i above that; everything else (secrets, certificate, logs, and the
embedded PostgreSQL's data when DATABASE_URL is unset) goes to --var-dir.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# The launcher forks children while its gRPC health probes run; gRPC's fork handlers
# would only log a warning about that. Must be set before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from pi.launcher.app import DEFAULT_GRPC_PORT_BASE, LaunchOptions, launch


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pi.launcher", description=__doc__)
    parser.add_argument(
        "--replicas",
        type=int,
        default=int(os.environ.get("REPLICAS") or 1),
        help="processes per service (default: $REPLICAS or 1)",
    )
    parser.add_argument(
        "--var-dir",
        type=Path,
        default=Path("var"),
        help="secrets, certificate, logs and the embedded PostgreSQL (default: ./var)",
    )
    parser.add_argument(
        "--grpc-port-base",
        type=int,
        default=int(os.environ.get("PI_GRPC_PORT_BASE") or DEFAULT_GRPC_PORT_BASE),
        help="auth's port; transactions +1, payments +2, replica i +100*i "
        f"(default: $PI_GRPC_PORT_BASE or {DEFAULT_GRPC_PORT_BASE})",
    )
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--https-port", type=int, default=8443)
    parser.add_argument("--admin-port", type=int, default=9901)
    parser.add_argument(
        "--edge-metrics-port", type=int, default=9902, help="Envoy's /stats/prometheus"
    )
    parser.add_argument(
        "--otlp-port", type=int, default=4317, help="the local OTLP receiver (traces to var/)"
    )
    parser.add_argument(
        "--trace-sample-percent",
        type=float,
        default=100.0,
        help="share of requests the edge traces (default 100 locally; production 1)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.replicas <= 9:
        parser.error("--replicas must be between 1 and 9")
    options = LaunchOptions(
        var_dir=args.var_dir,
        replicas=args.replicas,
        grpc_port_base=args.grpc_port_base,
        http_port=args.http_port,
        https_port=args.https_port,
        admin_port=args.admin_port,
        edge_metrics_port=args.edge_metrics_port,
        otlp_port=args.otlp_port,
        trace_sample_percent=args.trace_sample_percent,
    )
    try:
        return asyncio.run(launch(options))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 130


if __name__ == "__main__":
    sys.exit(main())
