"""What the manifests depend on outside k8s/: the rendered Envoy config (current, and
accepted by Envoy), the image the Dockerfile builds, and the Secrets create-secrets.sh
makes."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pi.edge import EnvoyNotFound, ensure_dev_cert, find_envoy, validate
from tests.support.settings import SETTINGS_TYPES

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "k8s"
ENVOY_JSON = K8S / "base" / "generated" / "envoy.json"


def _render_edge_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_render_edge", K8S / "render_edge.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_rendered_edge_config_is_current() -> None:
    stale = _render_edge_module().stale_files()
    assert not stale, (
        f"k8s/base/generated/{stale} is stale: run `.venv/bin/python k8s/render_edge.py`"
    )


def test_rendered_edge_config_is_accepted_by_envoy(tmp_path: Path) -> None:
    """`envoy --mode validate` on the committed file, with the pod's paths pointed at the
    repository's copies of what the image and the Secrets put there."""
    try:
        find_envoy()
    except EnvoyNotFound as missing:
        pytest.skip(str(missing))
    cert = ensure_dev_cert(tmp_path / "certs")
    in_pod = {
        "/etc/pi/edge/descriptors.binpb": REPO / "generated" / "descriptors.binpb",
        "/etc/pi/edge/openapi.json": REPO / "generated" / "openapi" / "pi.openapi.json",
        "/etc/pi/tls/tls.crt": cert.cert_path,
        "/etc/pi/tls/tls.key": cert.key_path,
    }
    text = ENVOY_JSON.read_text()
    for pod_path, local in in_pod.items():
        assert f'"{pod_path}"' in text, pod_path
        text = text.replace(f'"{pod_path}"', json.dumps(str(local)))
    config = tmp_path / "envoy.json"
    config.write_text(text)
    result = validate(config)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the image --------------------------------------------------------------------------------


def _dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def test_the_image_installs_the_pinned_project_as_a_non_root_user() -> None:
    dockerfile = _dockerfile()
    # The official image by default; every stage builds FROM that one argument.
    assert re.search(r"^ARG BASE=python:3\.11-slim$", dockerfile, re.M)
    froms = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert froms and set(froms) == {"${BASE}"}, froms
    assert "pip install -c constraints.txt ." in dockerfile
    (user,) = re.findall(r"^USER (\S+)", dockerfile, re.M)
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so Kubernetes can check runAsNonRoot"
    manifests = "".join(p.read_text() for p in (K8S / "base").glob("*.yaml"))
    assert set(re.findall(r"runAsUser: (\d+)", manifests)) == {uid}


def test_the_image_holds_the_files_the_edge_config_names() -> None:
    """The descriptor set and OpenAPI document come from the image, not a ConfigMap."""
    copies = dict(
        (dest, src)
        for src, dest in re.findall(
            r"^COPY (generated/\S+) (/etc/pi/edge/\S+)", _dockerfile(), re.M
        )
    )
    text = ENVOY_JSON.read_text()
    for dest, src in copies.items():
        assert (REPO / src).is_file(), src
        assert f'"{dest}"' in text
    assert set(copies) == set(re.findall(r'"(/etc/pi/edge/[^"]+)"', text))


def test_the_docker_context_holds_what_the_build_copies() -> None:
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", _dockerfile(), re.M):
        for path in source.split():
            assert any(path == a or path.startswith(a + "/") for a in allowed), path
            assert (REPO / path).exists(), path


# --- the Secrets ------------------------------------------------------------------------------


@pytest.fixture
def printed_secrets(tmp_path: Path) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (create-secrets.sh uses it)")
    cert = ensure_dev_cert(tmp_path / "certs")
    env = {
        "PATH": os.environ["PATH"],
        "DATABASE_URL": "postgresql://pi:secret@postgres.example:5432/pi",
        "REDIS_URL": "redis://redis.example:6379/0",
        "TLS_CERT": str(cert.cert_path),
        "TLS_KEY": str(cert.key_path),
    }
    result = subprocess.run(
        ["bash", str(K8S / "create-secrets.sh"), "--print"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_create_secrets_makes_valid_secrets_the_services_accept(
    printed_secrets: list[dict[str, Any]],
) -> None:
    by_name = {s["metadata"]["name"]: s for s in printed_secrets}
    assert set(by_name) == {"pi-secrets", "pi-edge-tls"}
    for secret in printed_secrets:
        assert secret["metadata"]["namespace"] == "pi"
        kubernetes_validate.validate(secret, "1.37", strict=True)
    assert by_name["pi-edge-tls"]["type"] == "kubernetes.io/tls"

    values = {k: base64.b64decode(v).decode() for k, v in by_name["pi-secrets"]["data"].items()}
    assert set(values) == {
        "DATABASE_URL",
        "REDIS_URL",
        "PI_ADMIN_TOKEN",
        "PI_SERVICE_TOKEN",
        "PI_MASTER_KEYS",
    }
    for settings_type in SETTINGS_TYPES.values():
        settings = settings_type.from_env(values)  # raises ConfigError if unusable
        assert settings.database_url.startswith("postgresql://")
        assert len(settings.admin_token) >= 32


def test_create_secrets_generates_fresh_credentials_each_time(
    printed_secrets: list[dict[str, Any]], tmp_path: Path
) -> None:
    first = {s["metadata"]["name"]: s for s in printed_secrets}["pi-secrets"]["data"]
    result = subprocess.run(
        ["bash", str(K8S / "create-secrets.sh"), "--print"],
        env={"PATH": os.environ["PATH"], "DATABASE_URL": "postgresql://x@y/z"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (second,) = [d for d in yaml.safe_load_all(result.stdout) if d]
    for key in ("PI_ADMIN_TOKEN", "PI_SERVICE_TOKEN", "PI_MASTER_KEYS"):
        assert first[key] != second["data"][key]
    assert "REDIS_URL" not in second["data"]  # optional: the services fall back in process
    assert "pi-edge-tls" in result.stderr  # reminds the operator of the TLS Secret
