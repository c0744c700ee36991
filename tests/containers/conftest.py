"""The container tier: the image built with podman (`make image`), a PostgreSQL of the
test's own, and the containers the manifests describe.

Skipped where podman is not installed, unless CI=true (as `.ci/run` runs) or
PI_REQUIRE_CONTAINERS=1: there a missing podman fails instead of passing quietly.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pi.platform.db.embedded import EmbeddedPostgres
from tests.containers import ports

REPO = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    """Called as this conftest is loaded, before any test runs: from then on no connection
    the suite opens is given a port a pod needs (tests/containers/ports.py)."""
    ports.reserve()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.containers)


@pytest.fixture(scope="session")
def image() -> str:
    """`make image`: the reference of the image built from this tree (cached by content)."""
    if shutil.which("podman") is None:
        if os.environ.get("PI_REQUIRE_CONTAINERS") == "1" or os.environ.get("CI") == "true":
            pytest.fail("podman is required (CI, or PI_REQUIRE_CONTAINERS=1)")
        pytest.skip("podman is not installed (apt-get install podman runc mmdebstrap)")
    done = subprocess.run(
        ["make", "--no-print-directory", "image"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"make image failed:\n{done.stderr[-4000:]}"
    return done.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def container_pg() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test session on 127.0.0.1:<free port> (the containers run as
    user 10001 and cannot reach the embedded server's private socket); never the host's."""
    directory = Path(tempfile.mkdtemp(prefix="pi-ct-pg-"))
    server = EmbeddedPostgres(
        directory / "data", database="postgres", durable=False, tcp_port=free_port()
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
