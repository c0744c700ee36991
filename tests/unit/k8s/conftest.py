"""Fixtures for the Kubernetes manifest tests: each kustomization, built and parsed.

Builds use `kubectl kustomize` (kubectl ships kustomize). Where kubectl is missing the
overlays cannot be built faithfully, so those tests skip; the base's own files are still
loaded one by one and checked (`raw_base_objects`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "k8s"
KUSTOMIZATIONS = ("base", "overlays/dev", "overlays/prod")

Manifest = dict[str, Any]

_built: dict[str, list[Manifest]] = {}


def kubectl() -> str | None:
    return shutil.which("kubectl")


def build(kustomization: str) -> list[Manifest]:
    """`kubectl kustomize k8s/<kustomization>`, parsed; skips the test without kubectl."""
    if kustomization not in _built:
        binary = kubectl()
        if binary is None:
            pytest.skip("kubectl is not installed: overlays are not built (base files are)")
        result = subprocess.run(
            [binary, "kustomize", str(K8S / kustomization)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"kubectl kustomize {kustomization}:\n{result.stderr}"
        _built[kustomization] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return _built[kustomization]


@pytest.fixture(params=KUSTOMIZATIONS)
def kustomization(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objects(kustomization: str) -> list[Manifest]:
    return build(kustomization)


@pytest.fixture(scope="session")
def build_kustomization() -> Any:
    """The `build(kustomization)` function, for tests that need a particular build."""
    return build


@pytest.fixture(scope="session")
def raw_base_objects() -> list[Manifest]:
    """The objects of the base's resource files, as written (no kustomize involved)."""
    spec = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    docs: list[Manifest] = []
    for resource in spec["resources"]:
        text = (K8S / "base" / resource).read_text()
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs
