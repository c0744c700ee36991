"""`python -m pi.edge`: render the Envoy bootstrap, create the dev certificate, validate.

    python -m pi.edge render --out var/envoy.json --replicas 3 --dev-cert var/certs --web web/dist
    python -m pi.edge render --profile kubernetes --out envoy.json \\
        --upstream auth=auth.pi.svc.cluster.local:50051
    python -m pi.edge dev-cert --dir var/certs
    python -m pi.edge mesh-certs --dir var/certs          # auth ... edge admin
    python -m pi.edge validate var/envoy.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pi.edge.certs import ensure_dev_cert
from pi.edge.config import (
    PUBLIC_GRPC_SERVICES,
    REPLICA_PORT_STEP,
    Endpoint,
    HealthCheck,
    RateLimit,
    UpstreamTls,
    render_bootstrap,
)
from pi.edge.envoy import validate
from pi.edge.files import write_bootstrap
from pi.edge.identities import MESH_IDENTITIES, ensure_identities
from pi.edge.profiles import kubernetes_config, local_config
from pi.edge.static import StaticSite
from pi.platform.config import SERVICE_PORTS

DEFAULT_DESCRIPTOR = "generated/descriptors.binpb"
DEFAULT_OPENAPI = "generated/openapi/pi.openapi.json"
LOCAL_PORTS = "/".join(str(port) for port in SERVICE_PORTS.values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "render":
        return _render(args, parser)
    if args.command == "dev-cert":
        cert = ensure_dev_cert(args.dir)
        state = "created" if cert.created else "reused"
        print(f"{state} {cert.cert_path} and {cert.key_path}; clients trust {cert.ca_path}")
        return 0
    if args.command == "mesh-certs":
        issued = ensure_identities(args.dir, args.names)
        for identity in issued.values():
            print(f"{identity.name}: {identity.cert_path} and {identity.key_path}")
        return 0
    result = validate(args.config)
    sys.stderr.write(result.stdout + result.stderr if result.returncode else "")
    print(f"{args.config}: {'OK' if result.returncode == 0 else 'INVALID'}")
    return result.returncode


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pi.edge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    render = commands.add_parser("render", help="write the Envoy bootstrap (JSON; valid YAML)")
    render.add_argument("--out", required=True, help="file to write, or - for stdout")
    render.add_argument(
        "--profile",
        choices=("local", "kubernetes"),
        default="local",
        help=f"local: loopback, services on 127.0.0.1:{LOCAL_PORTS} "
        f"(+{REPLICA_PORT_STEP}*i per replica); "
        "kubernetes: 0.0.0.0, services by DNS name, files under /etc/pi",
    )
    render.add_argument("--listen-host")
    render.add_argument("--http-port", type=int)
    render.add_argument("--https-port", type=int)
    render.add_argument("--admin-port", type=int)
    render.add_argument("--descriptor", help=f"descriptor set (local default {DEFAULT_DESCRIPTOR})")
    render.add_argument(
        "--openapi",
        help=f"document served at GET /openapi.json (local default {DEFAULT_OPENAPI})",
    )
    render.add_argument("--no-openapi", action="store_true", help="do not serve /openapi.json")
    render.add_argument(
        "--web", metavar="DIR", help="serve the built web front end in DIR (e.g. web/dist)"
    )
    render.add_argument(
        "--web-served-from",
        metavar="DIR",
        help="where Envoy finds --web's files at run time (default: DIR itself)",
    )
    render.add_argument(
        "--replicas", type=int, default=1, help="local profile: processes per service"
    )
    render.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="SERVICE=HOST:PORT[,HOST:PORT...]",
        help=f"endpoints of one of {', '.join(PUBLIC_GRPC_SERVICES)} (replaces the profile's)",
    )
    tls = render.add_mutually_exclusive_group()
    tls.add_argument(
        "--dev-cert", metavar="DIR", help="create/reuse the development certificate in DIR"
    )
    tls.add_argument("--cert", help="certificate chain (PEM) for the TLS listener; needs --key")
    tls.add_argument("--no-tls", action="store_true", help="no TLS listener")
    render.add_argument("--key", help="private key (PEM) for the TLS listener")
    render.add_argument(
        "--mesh-identity",
        metavar="CA,CERT,KEY",
        help="the edge's mesh identity (PEM files): call the services over mutual TLS "
        "(kubernetes default: /etc/pi/mesh/{ca.crt,tls.crt,tls.key})",
    )
    render.add_argument("--no-mesh-tls", action="store_true", help="call the services in plaintext")
    render.add_argument("--rate-limit-rps", type=int)
    render.add_argument("--rate-limit-burst", type=int, help="bucket size (default: the rps)")
    render.add_argument("--health-check-interval", type=float)
    render.add_argument(
        "--xff-trusted-hops",
        type=int,
        help="proxies in front of Envoy whose X-Forwarded-For entries are trusted",
    )
    render.add_argument("--max-connections", type=int)
    render.add_argument("--no-access-log", action="store_true")

    cert = commands.add_parser("dev-cert", help="create (or reuse) the development certificate")
    cert.add_argument("--dir", default="var/certs")

    mesh = commands.add_parser(
        "mesh-certs",
        help="issue (or reuse) mesh identities from the development CA in DIR "
        "(DIR/mesh/<name>.pem and <name>-key.pem)",
    )
    mesh.add_argument("--dir", default="var/certs")
    mesh.add_argument("names", nargs="*", default=list(MESH_IDENTITIES), help="identities to issue")

    check = commands.add_parser("validate", help="run envoy --mode validate on a rendered file")
    check.add_argument("config")
    return parser


def _render(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    local = args.profile == "local"
    overrides: dict[str, Any] = {}
    for flag, name in (
        ("listen_host", "listen_host"),
        ("http_port", "http_port"),
        ("https_port", "https_port"),
        ("admin_port", "admin_port"),
        ("xff_trusted_hops", "xff_num_trusted_hops"),
        ("max_connections", "max_downstream_connections"),
    ):
        if getattr(args, flag) is not None:
            overrides[name] = getattr(args, flag)
    if args.rate_limit_rps is not None:
        overrides["rate_limit"] = RateLimit(
            args.rate_limit_rps, args.rate_limit_burst or args.rate_limit_rps
        )
    if args.health_check_interval is not None:
        overrides["health_check"] = HealthCheck(interval=args.health_check_interval)
    if args.no_access_log:
        overrides["access_log"] = False

    if args.dev_cert:
        dev = ensure_dev_cert(args.dev_cert)
        overrides["tls_cert_path"] = str(dev.cert_path.resolve())
        overrides["tls_key_path"] = str(dev.key_path.resolve())
    elif args.cert or args.key:
        if not (args.cert and args.key):
            parser.error("--cert and --key go together")
        overrides["tls_cert_path"] = _absolute(args.cert)
        overrides["tls_key_path"] = _absolute(args.key)
    elif args.no_tls:
        overrides["tls_cert_path"] = overrides["tls_key_path"] = None

    if args.mesh_identity:
        paths = [_absolute(p) for p in args.mesh_identity.split(",")]
        if len(paths) != 3:
            parser.error("--mesh-identity takes CA,CERT,KEY")
        overrides["upstream_tls"] = UpstreamTls(*paths)
    elif args.no_mesh_tls:
        overrides["upstream_tls"] = None

    if args.no_openapi:
        overrides["openapi_path"] = None
    elif args.openapi:
        overrides["openapi_path"] = _absolute(args.openapi)
    elif local:
        if Path(DEFAULT_OPENAPI).is_file():
            overrides["openapi_path"] = _absolute(DEFAULT_OPENAPI)
        else:
            print(f"note: no {DEFAULT_OPENAPI}; /openapi.json is not served", file=sys.stderr)

    if args.web:
        overrides["web"] = StaticSite.scan(args.web, served_from=args.web_served_from)

    if args.descriptor:
        overrides["descriptor_path"] = _absolute(args.descriptor)
    elif local:
        overrides["descriptor_path"] = _absolute(DEFAULT_DESCRIPTOR)

    if local:
        config = local_config(replicas=args.replicas, **overrides)
    else:
        config = kubernetes_config(**overrides)
    if args.upstream:
        upstreams = dict(config.upstreams)
        for spec in args.upstream:
            name, endpoints = _parse_upstream(spec, parser)
            upstreams[name] = endpoints
        config = replace(config, upstreams=upstreams)

    bootstrap = render_bootstrap(config)
    if args.out == "-":
        sys.stdout.write(write_bootstrap(bootstrap, None))
    else:
        write_bootstrap(bootstrap, args.out)
    return 0


def _parse_upstream(spec: str, parser: argparse.ArgumentParser) -> tuple[str, tuple[Endpoint, ...]]:
    name, _, rest = spec.partition("=")
    if name not in PUBLIC_GRPC_SERVICES or not rest:
        parser.error(
            f"--upstream {spec!r}: expected SERVICE=HOST:PORT[,HOST:PORT...], "
            f"SERVICE one of {', '.join(PUBLIC_GRPC_SERVICES)}"
        )
    endpoints = []
    for item in rest.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            parser.error(f"--upstream {spec!r}: {item!r} is not HOST:PORT")
        endpoints.append(Endpoint(host.strip("[]"), int(port)))
    return name, tuple(endpoints)


def _absolute(path: str) -> str:
    """Envoy resolves relative paths against its own working directory: pin them now."""
    return str(Path(path).expanduser().absolute())


if __name__ == "__main__":
    raise SystemExit(main())
