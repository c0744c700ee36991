"""Supervising child processes: start, probe, restart with backoff, stop cleanly.

Each child runs in its own session (so a Ctrl-C in the terminal reaches only the
launcher, which then stops the children in order) and, on Linux, receives SIGTERM if the
launcher dies without cleaning up (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

Probe = Callable[[], Awaitable[bool]]


class State(enum.Enum):
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    BACKOFF = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one child and how to tell it is healthy."""

    name: str
    argv: Sequence[str]
    log_path: Path
    probe: Probe
    env: Mapping[str, str] | None = None
    address: str = ""
    cwd: str | None = None


@dataclass
class Backoff:
    """Restart delays 1, 2, 4 ... `maximum` s; back to `initial` after a stable run."""

    initial: float = 1.0
    maximum: float = 30.0
    stable_after: float = 30.0
    _next: float = field(default=0.0, init=False)

    def delay(self, ran_for: float) -> float:
        if ran_for >= self.stable_after or self._next == 0.0:
            self._next = self.initial
        current = self._next
        self._next = min(self._next * 2, self.maximum)
        return current


class Supervised:
    """One supervised child: `run()` keeps it alive until `stop()`."""

    def __init__(
        self,
        spec: ProcessSpec,
        on_change: Callable[[Supervised], None],
        *,
        probe_interval: float = 1.0,
        probe_timeout: float = 2.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.spec = spec
        self.state = State.STOPPED
        self.pid: int | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self.next_restart_in: float | None = None
        self._on_change = on_change
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._backoff = backoff or Backoff()
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self._healthy = asyncio.Event()
        self._done = asyncio.Event()

    @property
    def name(self) -> str:
        return self.spec.name

    async def wait_healthy(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._healthy.wait()
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                started = time.monotonic()
                self.last_exit = await self._run_once()
                self._healthy.clear()
                self.pid = None
                if self._stopping.is_set():
                    break
                self.restarts += 1
                self.next_restart_in = self._backoff.delay(time.monotonic() - started)
                self._set(State.BACKOFF)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.next_restart_in):
                        await self._stopping.wait()
                self.next_restart_in = None
        finally:
            # Cancelled (or failed) while the child runs: never leave it behind.
            if self._process is not None and self._process.returncode is None:
                _signal_group(self._process.pid, signal.SIGKILL)
            self._set(State.STOPPED)
            self._done.set()

    async def stop(self, grace: float) -> None:
        """SIGTERM the child's process group, then SIGKILL after `grace` seconds.

        Polls rather than waiting on one process: a restart may be spawning a new child
        at the moment `stop()` is called, and that one must be stopped too.
        """
        self._stopping.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        terminated: set[int] = set()
        while not self._done.is_set():
            process = self._process
            if process is not None and process.returncode is None:
                self._set(State.STOPPING)
                if process.pid not in terminated:
                    terminated.add(process.pid)
                    _signal_group(process.pid, signal.SIGTERM)
                elif loop.time() >= deadline:
                    _signal_group(process.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await self._done.wait()

    def kill_now(self) -> None:
        self._stopping.set()
        if self._process is not None and self._process.returncode is None:
            _signal_group(self._process.pid, signal.SIGKILL)

    async def _run_once(self) -> int:
        """Start the child and wait for it to exit; a failure to start counts as exit 127."""
        try:
            await self._start()
        except OSError as error:
            with open(self.spec.log_path, "ab") as log:
                log.write(f"cannot start {list(self.spec.argv)}: {error}\n".encode())
            return 127
        assert self._process is not None
        exited = asyncio.Event()
        prober = asyncio.create_task(self._probe_until(exited))
        try:
            return await self._process.wait()
        finally:
            exited.set()
            prober.cancel()
            # Bounded: a probe that swallowed its cancellation must not hang the restart.
            await asyncio.wait({prober}, timeout=2)

    async def _start(self) -> None:
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spec.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting\n".encode())
            log.flush()
            self._process = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(self.spec.env) if self.spec.env is not None else None,
                cwd=self.spec.cwd,
                start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()),
            )
        self.pid = self._process.pid
        self._set(State.STARTING)

    async def _probe_until(self, exited: asyncio.Event) -> None:
        was_healthy = False
        while not exited.is_set():
            try:
                async with asyncio.timeout(self._probe_timeout):
                    ok = await self.spec.probe()
            except Exception:  # any failure to answer is simply "not healthy"
                ok = False
            if exited.is_set():
                break
            if ok:
                was_healthy = True
                self._healthy.set()
                self._set(State.HEALTHY)
            else:
                self._healthy.clear()
                self._set(State.UNHEALTHY if was_healthy else State.STARTING)
            await asyncio.sleep(self._probe_interval)

    def _set(self, state: State) -> None:
        if self._stopping.is_set() and state not in (State.STOPPING, State.STOPPED):
            return
        if state is not self.state:
            self.state = state
            self._on_change(self)


def tail(path: Path, lines: int = 8) -> list[str]:
    """The last `lines` lines of a log file (for showing why a child died)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16_384))
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def die_with_parent(parent: int) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGTERM when `parent` dies (Linux).

    `parent` is the pid of the process starting the child (`os.getpid()`); on other
    platforms there is no such hook and None is returned (no `preexec_fn`).
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def hook() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(1)

    return hook
