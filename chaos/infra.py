"""What a fault run owns and breaks: its PostgreSQL, its Redis, the mesh, a TCP fault proxy.

Everything here is started by the harness, listens on 127.0.0.1 or a unix socket in the
work dir, and is stopped by pid; nothing else on the machine is signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.mesh import Mesh, MeshError
from pi.launcher.supervisor import die_with_parent
from pi.platform.db.embedded import EmbeddedPostgres


class OwnedPostgres:
    """The embedded PostgreSQL of the run, restartable with a fast or immediate shutdown."""

    def __init__(self, data_dir: Path, max_connections: int) -> None:
        self.server = EmbeddedPostgres(
            data_dir,
            database="pi_chaos",
            max_connections=max_connections,
            log_path=data_dir.parent / "log" / "postgres.log",
        )

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.server.start()

    def restart(self, mode: str, down_for: float = 0.0) -> None:
        """`fast` (SIGINT: sessions ended, checkpoint) or `immediate` (SIGQUIT: no
        checkpoint; crash recovery on start), then start again after `down_for` s."""
        pid = self.server.pid
        if pid is None:
            raise RuntimeError("the chaos PostgreSQL is not running")
        if mode == "immediate":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
        self.server.stop()  # fast shutdown, or just reaps the one already going down
        time.sleep(down_for)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


class OwnedRedis:
    """A redis-server on a unix socket in the work dir (no persistence), stoppable."""

    def __init__(self, directory: Path, binary: str) -> None:
        self.directory = directory
        self.binary = binary
        self.socket = directory / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary, "--port", "0", "--unixsocket", str(self.socket),
            "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
            "--dir", str(self.directory), "--daemonize", "no",
        ]  # fmt: skip
        with open(self.directory / "redis.log", "ab") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()),
            )
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start (see {self.directory}/redis.log)")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()


@dataclass
class ProxyMode:
    """What the fault proxy does to each chunk and connection."""

    latency: float = 0.0  # seconds added before forwarding a chunk
    drop: float = 0.0  # chance, per chunk, of cutting the connection
    partition: bool = False  # refuse new connections and cut the open ones


class FaultProxy:
    """A TCP proxy on 127.0.0.1 between the payment and transaction services (HTTP/2 is
    forwarded as bytes). `mode` is changed while it runs; it lives on its own thread."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self.mode = ProxyMode()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._rng = random.Random()

    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        future.result(10)

    def set(self, mode: ProxyMode) -> None:
        self.mode = mode
        if mode.partition:
            self._loop.call_soon_threadsafe(self._cut_all)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            self._cut_all()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)

    def _cut_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode.partition:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(65536):
                mode = self.mode
                if mode.partition or (mode.drop and self._rng.random() < mode.drop):
                    break
                if mode.latency:
                    await asyncio.sleep(mode.latency)
                writer.write(chunk)
                await writer.drain()
        writer.transport.abort()


@dataclass
class ChaosMesh(Mesh):
    """The bench's mesh, plus what faults need: kill one process, restart a service with
    other settings; and quick restarts (the launcher's backoff reaches 30 s)."""

    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    # Payment replica i reaches transaction replica i through the fault proxy on this
    # port + i (None: directly).
    transactions_proxy_base: int | None = None

    def service_env(self, name: str, replica: int) -> dict[str, str]:
        env = super().service_env(name, replica)
        if name == "payments" and self.transactions_proxy_base is not None:
            env["PI_TRANSACTIONS_TARGET"] = f"127.0.0.1:{self.transactions_proxy_base + replica}"
        env.update(self.overrides.get(name, {}))
        return env

    def _supervise(
        self, name: str, argv: list[str], env: Mapping[str, str], probe: Any, address: str
    ) -> Any:
        from pi.launcher.supervisor import Backoff, ProcessSpec, Supervised

        spec = ProcessSpec(
            name=name,
            argv=argv,
            log_path=self.workdir / f"{name.replace('#', '-')}.log",
            probe=probe,
            env=dict(env),
            address=address,
            cwd=str(self.repo),
        )

        async def create() -> Any:
            proc = Supervised(
                spec, self._on_change, probe_interval=0.5, backoff=Backoff(0.2, 1.0, 5.0)
            )
            self._tasks.append(asyncio.create_task(proc.run()))
            return proc

        proc = self._call(create(), timeout=10)
        self._procs.append(proc)
        return proc

    def processes(self, group: str) -> list[Any]:
        return [p for p in self._procs if p.name.partition("#")[0] == group]

    def kill(self, group: str, rng: random.Random, wait: float = 10.0) -> str | None:
        """SIGKILL one live process of `group` (its supervisor restarts it), waiting up to
        `wait` s for one to be up; which one."""
        deadline = time.monotonic() + wait
        live = [p for p in self.processes(group) if p.pid is not None]
        while not live and time.monotonic() < deadline:
            time.sleep(0.1)
            live = [p for p in self.processes(group) if p.pid is not None]
        if not live:
            return None
        proc = rng.choice(live)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        return str(proc.name)

    def reconfigure(self, service: str, env: dict[str, str], timeout: float = 60) -> None:
        """Restart every replica of `service` with `env` over its usual settings."""
        self.overrides[service] = env
        old = self.processes(service)

        async def stop_old() -> None:
            await asyncio.gather(*(p.stop(10) for p in old))

        self._call(stop_old(), timeout=40)
        self._procs[:] = [p for p in self._procs if p not in old]
        deadline = time.monotonic() + timeout
        for replica in range(self.replicas):
            port = self.ports.service(service, replica)
            proc = self._supervise(
                f"{service}#{replica}",
                [self.python, "-m", f"pi.{service}"],
                self.service_env(service, replica),
                self._grpc_probe(port),
                f":{port}",
            )
            self._wait_healthy(proc, deadline)

    def wait_all_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            try:
                self._wait_healthy(proc, deadline)
            except MeshError:
                return False
        return True
