"""What the manifests depend on outside k8s/: the rendered Envoy config (current, and
accepted by Envoy), the image the Dockerfile builds, and the Secrets create-secrets.sh
makes."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509

from pi.edge import EnvoyNotFound, ensure_dev_cert, find_envoy, validate
from pi.edge.identities import MESH_IDENTITIES, ensure_identities
from pi.platform.db.roles import role_url
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
    edge = ensure_identities(tmp_path / "certs", ["edge"])["edge"]
    in_pod = {
        "/etc/pi/mesh/ca.crt": edge.ca_path,
        "/etc/pi/mesh/tls.crt": edge.cert_path,
        "/etc/pi/mesh/tls.key": edge.key_path,
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
    ensure_identities(tmp_path / "certs", MESH_IDENTITIES)
    env = {
        "PATH": os.environ["PATH"],
        "DATABASE_URL": "postgresql://pi:secret@postgres.example:5432/pi",
        "REDIS_URL": "redis://redis.example:6379/0",
        "TLS_CERT": str(cert.cert_path),
        "TLS_KEY": str(cert.key_path),
        "MESH_CERTS_DIR": str(tmp_path / "certs"),
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


def test_create_secrets_gives_each_service_only_its_own_secrets(
    printed_secrets: list[dict[str, Any]],
) -> None:
    by_name = {s["metadata"]["name"]: s for s in printed_secrets}
    tls = {"pi-auth-tls", "pi-transactions-tls", "pi-payments-tls", "pi-edge-mesh-tls"}
    assert set(by_name) == {
        "pi-migrations",
        "pi-auth",
        "pi-transactions",
        "pi-payments",
        "pi-edge-tls",
        "pi-admin-tls",
        *tls,
    }
    for secret in printed_secrets:
        assert secret["metadata"]["namespace"] == "pi"
        kubernetes_validate.validate(secret, "1.37", strict=True)
    for name in (*tls, "pi-admin-tls", "pi-edge-tls"):
        assert by_name[name]["type"] == "kubernetes.io/tls", name

    def values(name: str) -> dict[str, str]:
        return {k: base64.b64decode(v).decode() for k, v in by_name[name]["data"].items()}

    assert set(values("pi-migrations")) == {"DATABASE_URL"}
    owner = values("pi-migrations")["DATABASE_URL"]
    master_keys = set()
    for service, settings_type in SETTINGS_TYPES.items():
        own = values(f"pi-{service}")
        expected = {"DATABASE_URL", "REDIS_URL", "PI_MASTER_KEYS", "PI_DB_SERVICE_ROLE_PASSWORD"}
        only_its = {"auth": {"PI_ADMIN_TOKEN"}, "payments": {"PI_CARD_FINGERPRINT_KEY"}}
        assert set(own) == expected | only_its.get(service, set())
        # The service logs in as its own role, with the password its migration sets.
        password = own["PI_DB_SERVICE_ROLE_PASSWORD"]
        assert own["DATABASE_URL"] == role_url(owner, f"pi_{service}", password)
        # (The pod's TLS files, named by pi-config, stand in for the service token here.)
        unused = secrets.token_urlsafe(32)
        settings = settings_type.from_env({**own, "PI_SERVICE_TOKEN": unused})
        assert settings.database_url.startswith(f"postgresql://pi_{service}:")
        master_keys.add(own["PI_MASTER_KEYS"])
    assert len(master_keys) == 3, "each service has master keys of its own"
    assert len(values("pi-auth")["PI_ADMIN_TOKEN"]) >= 32
    for name in (*tls, "pi-admin-tls"):
        cert = x509.load_pem_x509_certificate(values(name)["tls.crt"].encode())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        identity = name.removeprefix("pi-").removesuffix("-tls").removesuffix("-mesh")
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        assert uris == [f"spiffe://pi-platform/{identity}"], name
        assert "BEGIN CERTIFICATE" in values(name)["ca.crt"]


def test_create_secrets_generates_fresh_credentials_each_time(
    printed_secrets: list[dict[str, Any]], tmp_path: Path
) -> None:
    first = {s["metadata"]["name"]: s["data"] for s in printed_secrets}
    result = subprocess.run(
        ["bash", str(K8S / "create-secrets.sh"), "--print"],
        env={"PATH": os.environ["PATH"], "DATABASE_URL": "postgresql://x@y/z"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    second = {d["metadata"]["name"]: d["data"] for d in yaml.safe_load_all(result.stdout) if d}
    for name, key in (
        ("pi-auth", "PI_ADMIN_TOKEN"),
        ("pi-auth", "PI_MASTER_KEYS"),
        ("pi-payments", "PI_MASTER_KEYS"),
        ("pi-payments", "PI_DB_SERVICE_ROLE_PASSWORD"),
    ):
        assert first[name][key] != second[name][key]
    assert "REDIS_URL" not in second["pi-auth"]  # optional: the services fall back in process
    assert "pi-edge-tls" in result.stderr  # reminds the operator of the TLS Secret
    assert "cert-manager" in result.stderr  # and of where the mesh identities come from
