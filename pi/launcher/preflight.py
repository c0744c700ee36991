"""Before anything starts: ports free, dev secrets and certificate, Envoy's bootstrap.

Everything `prepare` writes goes to the var dir, so a restart finds the same secrets,
certificate and data.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import replace

from pi.edge import UpstreamTls, ensure_dev_cert, render_bootstrap, write_bootstrap
from pi.edge.observability import Tracing
from pi.edge.profiles import local_config
from pi.edge.static import StaticSite
from pi.launcher.console import Console
from pi.launcher.identities import ensure_mesh
from pi.launcher.options import SERVICES, LaunchOptions
from pi.launcher.secrets import ensure_dev_secrets


class LaunchError(RuntimeError):
    """Something a newcomer has to fix before the platform can start."""


def prepare(options: LaunchOptions, out: Console) -> dict[str, str]:
    """Checks and files the processes need; returns the environment for the services."""
    descriptor = options.generated / "descriptors.binpb"
    if not descriptor.is_file():
        raise LaunchError(f"{descriptor} is missing: run `make proto`")
    ports = options.ports()
    if not all(0 < port < 65536 for port in ports):
        raise LaunchError(f"ports must be between 1 and 65535: {ports}")
    clashes = sorted({port for port in ports if ports.count(port) > 1})
    if clashes:
        raise LaunchError(
            f"port(s) {', '.join(map(str, clashes))} would be used twice: "
            "choose Envoy's ports outside the services' (--grpc-port-base)"
        )
    busy = busy_ports(ports)
    if busy:
        raise LaunchError(
            f"port(s) {', '.join(map(str, busy))} already in use on 127.0.0.1 "
            "(is another `make run` still running?)"
        )
    options.var.mkdir(parents=True, exist_ok=True)
    secrets_file = options.var / "dev-secrets.env"
    dev_secrets = ensure_dev_secrets(secrets_file)
    cert = ensure_dev_cert(options.var / "certs")
    edge = ensure_mesh(options)["edge"]
    openapi = options.generated / "openapi" / "pi.openapi.json"
    config = local_config(
        str(descriptor),
        replicas=options.replicas,
        openapi_path=str(openapi) if openapi.is_file() else None,
        tls_cert_path=str(cert.cert_path.resolve()),
        tls_key_path=str(cert.key_path.resolve()),
        upstream_tls=UpstreamTls(str(edge.ca_path), str(edge.cert_path), str(edge.key_path)),
        http_port=options.http_port,
        https_port=options.https_port,
        admin_port=options.admin_port,
        web=StaticSite.scan(options.web_dist) if options.serves_web else None,
        metrics_port=options.edge_metrics_port,
        tracing=Tracing("127.0.0.1", options.otlp_port, options.trace_sample_percent),
    )
    config = replace(config, upstreams=options.upstreams())
    write_bootstrap(render_bootstrap(config), options.var / "envoy.json")

    # What the caller exported wins; each process gets only its own share of the secrets
    # (pi.launcher.identities.service_env).
    env = {**dev_secrets, **os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{options.otlp_port}")
    # `make run` is a developer's machine: secrets exported by hand may be short. Set
    # PI_ENVIRONMENT=production to have the services refuse weak ones here too.
    env.setdefault("PI_ENVIRONMENT", "development")
    for service in SERVICES:
        env[f"PI_{service.upper()}_TARGET"] = options.target(service)
    store = data_store(options, env)
    cache = "Redis" if env.get("REDIS_URL") else "in-process cache"
    out.say(
        f"Pi Platform: {len(SERVICES)} services x {options.replicas} replica(s) + Envoy; "
        f"{store}; {cache}; secrets in {secrets_file}"
    )
    return env


def data_store(options: LaunchOptions, env: Mapping[str, str]) -> str:
    """Where the services keep their data, for people (never the URL: it may hold a password)."""
    if (env.get("DATABASE_URL") or "").strip():
        return "PostgreSQL (DATABASE_URL)"
    return f"an embedded PostgreSQL in {options.postgres_dir}"


def busy_ports(ports: Iterable[int]) -> list[int]:
    """Ports something already listens on (a bind test would also trip over short-lived
    client sockets, since 50051-50053 lie in Linux's ephemeral port range)."""
    busy = []
    for port in ports:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                busy.append(port)
        except OSError:
            pass
    return busy
