"""Envoy itself accepts every bootstrap the project renders (`envoy --mode validate`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pi.edge import (
    DevCert,
    EdgeConfig,
    Endpoint,
    UpstreamTls,
    render_bootstrap,
    validate,
    write_bootstrap,
)
from pi.edge.identities import ensure_identities
from pi.edge.profiles import e2e_config, kubernetes_config, local_config

REPO = Path(__file__).resolve().parents[3]


def _profiles(descriptor: str, openapi: str, cert: DevCert) -> dict[str, EdgeConfig]:
    tls: dict[str, Any] = {"tls_cert_path": str(cert.cert_path), "tls_key_path": str(cert.key_path)}
    edge = ensure_identities(cert.ca_path.parent, ["edge"])["edge"]
    mesh = UpstreamTls(str(edge.ca_path), str(edge.cert_path), str(edge.key_path))
    return {
        "local": local_config(descriptor, openapi_path=openapi, **tls),
        "local-mesh-tls": local_config(descriptor, openapi_path=openapi, upstream_tls=mesh, **tls),
        "local-replicas-3": local_config(descriptor, replicas=3, openapi_path=openapi, **tls),
        "local-without-tls-or-openapi": local_config(descriptor),
        "e2e-tiny-rate-limit": e2e_config(
            descriptor,
            upstreams={
                "auth": (Endpoint("127.0.0.1", 40051),),
                "transactions": (Endpoint("127.0.0.1", 40052),),
                "payments": (Endpoint("127.0.0.1", 40053), Endpoint("127.0.0.1", 40153)),
            },
            http_port=40080,
            https_port=40443,
            admin_port=40901,
            openapi_path=openapi,
            requests_per_second=2,
            **tls,
        ),
        "kubernetes-dns": kubernetes_config(
            service_hosts={
                "auth": "auth.pi.svc.cluster.local",
                "transactions": "transactions.pi.svc.cluster.local",
                "payments": "payments.pi.svc.cluster.local",
            },
            descriptor_path=descriptor,
            openapi_path=openapi,
            upstream_tls=mesh,
            **tls,
            xff_num_trusted_hops=1,
        ),
    }


PROFILE_NAMES = [
    "local",
    "local-mesh-tls",
    "local-replicas-3",
    "local-without-tls-or-openapi",
    "e2e-tiny-rate-limit",
    "kubernetes-dns",
]


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_envoy_accepts_the_rendered_config(
    profile: str,
    envoy_binary: Path,
    descriptor_path: str,
    openapi_path: str,
    dev_cert: DevCert,
    tmp_path: Path,
) -> None:
    config = _profiles(descriptor_path, openapi_path, dev_cert)[profile]
    target = tmp_path / f"{profile}.json"
    write_bootstrap(render_bootstrap(config), target)
    result = validate(target)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def test_envoy_rejects_a_transcoder_service_missing_from_the_descriptor(
    envoy_binary: Path, descriptor_path: str, tmp_path: Path
) -> None:
    """The validation really loads the descriptor: a bad service name must fail it."""
    bootstrap = render_bootstrap(local_config(descriptor_path))
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    for http_filter in hcm["typed_config"]["http_filters"]:
        if http_filter["name"] == "envoy.filters.http.grpc_json_transcoder":
            http_filter["typed_config"]["services"].append("pi.nope.v1.NopeService")
    target = tmp_path / "broken.json"
    write_bootstrap(bootstrap, target)
    assert validate(target).returncode != 0


@pytest.mark.parametrize(
    "args",
    [
        ["--replicas", "3"],
        ["--profile", "kubernetes", "--upstream", "auth=auth.pi.svc.cluster.local:50051"],
        ["--rate-limit-rps", "5", "--no-tls", "--no-openapi", "--http-port", "18080"],
    ],
    ids=["local-replicas", "kubernetes", "tiny-rate-limit"],
)
def test_cli_renders_configs_envoy_accepts(
    args: list[str],
    envoy_binary: Path,
    descriptor_path: str,
    openapi_path: str,
    dev_cert: DevCert,
    tmp_path: Path,
) -> None:
    out = tmp_path / "envoy.json"
    tls = ["--cert", str(dev_cert.cert_path), "--key", str(dev_cert.key_path)]
    if "--no-tls" in args:
        tls = []
    edge = ensure_identities(dev_cert.ca_path.parent, ["edge"])["edge"]
    tls += ["--mesh-identity", f"{edge.ca_path},{edge.cert_path},{edge.key_path}"]
    command = [
        sys.executable,
        "-m",
        "pi.edge",
        "render",
        "--out",
        str(out),
        "--descriptor",
        descriptor_path,
        *(["--openapi", openapi_path] if "--no-openapi" not in args else []),
        *tls,
        *args,
    ]
    subprocess.run(command, check=True, cwd=REPO)
    check = subprocess.run(
        [sys.executable, "-m", "pi.edge", "validate", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert check.returncode == 0, check.stderr
