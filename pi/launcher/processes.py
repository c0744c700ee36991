"""The processes `make run` supervises: every replica of every service, then Envoy."""

from __future__ import annotations

from collections.abc import Mapping

from pi.edge import envoy_command
from pi.launcher.identities import identity, service_env
from pi.launcher.options import SERVICES, LaunchOptions
from pi.launcher.probes import GrpcHealthProbe, envoy_ready_probe
from pi.launcher.supervisor import ProcessSpec


def service_specs(
    options: LaunchOptions, env: Mapping[str, str]
) -> list[tuple[ProcessSpec, GrpcHealthProbe]]:
    """In port order, each with its health probe (whose channel the caller closes)."""
    specs = []
    for service in SERVICES:
        for replica in range(options.replicas):
            port = options.port(service, replica)
            probe = GrpcHealthProbe(f"127.0.0.1:{port}", identity(options, "admin"), service)
            spec = ProcessSpec(
                name=f"{service}-{replica}",
                argv=[options.python, "-m", f"pi.{service}"],
                env={
                    **service_env(options, env, service),
                    "PI_GRPC_HOST": "127.0.0.1",
                    "PI_GRPC_PORT": str(port),
                    "PI_METRICS_PORT": str(options.metrics_port(service, replica)),
                },
                log_path=options.var / "log" / f"{service}-{replica}.log",
                probe=probe,
                address=f":{port}",
                cwd=str(options.root),
            )
            specs.append((spec, probe))
    return specs


def receiver_spec(options: LaunchOptions) -> tuple[ProcessSpec, GrpcHealthProbe]:
    """The local OTLP receiver: the edge's and the services' spans to a file under var/."""
    probe = GrpcHealthProbe(f"127.0.0.1:{options.otlp_port}")
    spec = ProcessSpec(
        name="otlp-receiver",
        argv=[
            options.python,
            "-m",
            "pi.platform.observability.receiver",
            "--port",
            str(options.otlp_port),
            "--out",
            str(options.traces_path),
        ],
        log_path=options.var / "log" / "otlp-receiver.log",
        probe=probe,
        address=f":{options.otlp_port}",
        cwd=str(options.root),
    )
    return spec, probe


def envoy_spec(options: LaunchOptions) -> ProcessSpec:
    """Envoy on the bootstrap `prepare` wrote to the var dir."""
    return ProcessSpec(
        name="envoy",
        argv=envoy_command(
            options.var / "envoy.json",
            log_level="warn",
            extra=("--file-flush-interval-msec", "1000"),
        ),
        log_path=options.var / "log" / "envoy.log",
        probe=envoy_ready_probe(options.admin_port),
        address=f":{options.http_port} :{options.https_port}",
        cwd=str(options.root),
    )
