"""Optional CPU profiles of the services during the measured flow (BENCH_PROFILE=1).

py-spy (not a project dependency: `pip install py-spy` into the venv for a profiling
session) samples each service process at 100 Hz and writes collapsed stacks to the work
directory (`profile-<process>.txt`, ready for flamegraph.pl or speedscope). It samples
only the thread holding the GIL (`--gil`): on a box where every core is busy, that is the
Python work itself, not time spent waiting for the database or for a core. The report
gets, per process, the functions with the most samples: `self` (on top of the stack),
`total` (the platform's own functions anywhere on the stack: servicers, use cases,
stores, interceptors) and `self` time by package (sqlalchemy, psycopg, grpc, pi, ...),
as shares of all samples.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.config import relative


def available() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(
        self,
        targets: dict[str, int],
        duration: float,
        workdir: Path,
        *,
        native: bool = False,
        rate: int = 100,
    ) -> None:
        self._binary = available()
        self._targets = targets
        self._duration = max(1, int(duration))
        self._workdir = workdir
        self._native = native
        self._rate = rate
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> Profiler:
        if self._binary is None:
            return self
        for name, pid in self._targets.items():
            args = [
                self._binary, "record", "-p", str(pid), "-d", str(self._duration),
                "-r", str(self._rate), "-f", "raw", "-o", str(self._path(name)), "--gil",
            ]  # fmt: skip
            if self._native:
                args.append("--native")
            self._procs[name] = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        return self

    def _path(self, name: str) -> Path:
        return self._workdir / f"profile-{name.replace('#', '-')}.txt"

    def finish(self, top: int = 15) -> dict[str, Any]:
        if self._binary is None:
            return {"available": False, "hint": "pip install py-spy into .venv"}
        out: dict[str, Any] = {"available": True, "processes": {}}
        for name, proc in self._procs.items():
            try:
                proc.wait(timeout=self._duration + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            path = self._path(name)
            if path.exists():
                out["processes"][name] = {
                    "file": relative(str(path)),
                    **summarize(path.read_text(), top),
                }
        return out


def summarize(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        samples += count
        self_counts[_short(frames[-1])] += count
        packages[_package(frames)] += count
        for frame in {_short(f) for f in frames if _is_pi_work(f)}:
            total_counts[frame] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": fn, "percent": round(100 * n / samples, 1)}
            for fn, n in counter.most_common(top)
        ]

    return {
        "samples": samples,
        "self_by_package": share(packages),
        "self": share(self_counts),
        "total": share(total_counts),
    }


_PACKAGES = (
    "sqlalchemy", "psycopg", "psycopg_pool", "grpc", "google/protobuf", "uvloop", "jwt",
    "cryptography", "redis", "greenlet", "asyncio", "logging", "json",
)  # fmt: skip


def _package(frames: list[str]) -> str:
    """Where the innermost Python frame's code lives: a library, `pi/<svc>`, or stdlib."""
    where = frames[-1].partition(" (")[2].rstrip(")")
    path = where.rpartition(":")[0] or where
    parts = path.split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    joined = "/".join(parts)
    if parts[0] == "pi":
        return "/".join(parts[:2])
    if parts[0] == "generated":
        return "generated"
    for name in _PACKAGES:
        if joined.startswith(name + "/") or joined == name + ".py":
            return name
    if len(parts) > 1:
        return parts[0]
    return "stdlib " + joined.removesuffix(".py")


_ENTRY_POINTS = (
    "pi/platform/runtime/cli.py",
    "pi/platform/runtime/wiring.py",
    "pi/platform/runtime/server.py",
)


def _is_pi_work(frame: str) -> bool:
    """A frame of the platform's own code below the process entry points (`total`)."""
    where = frame.partition(" (")[2]
    if not (where.startswith("pi/") or "/pi/" in where):
        return False
    if "__main__.py" in where or "/main.py" in where or where.startswith("pi/main.py"):
        return False
    return not any(entry in where for entry in _ENTRY_POINTS)


def _short(frame: str) -> str:
    """`fn (path/to/module.py:123)` -> `fn (module.py)`: merge lines of one function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    parts = path.split("/")
    for anchor in ("site-packages", "pi", "generated", "bench"):
        if anchor in parts:
            path = "/".join(parts[parts.index(anchor) + (1 if anchor == "site-packages" else 0) :])
            break
    else:
        path = parts[-1]
    return f"{name} ({path})"
