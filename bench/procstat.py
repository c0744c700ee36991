"""CPU seconds and resident memory of processes, read from /proc.

`Sampler` watches named groups of processes ("envoy", "payments", "postgres", ...) from a
background thread while a phase runs and reports, per group, the CPU seconds spent during
the phase and the peak resident memory:

- CPU: utime + stime of every process in the group, the difference between the last and
  the first sample of each pid (a pid that appears mid-phase counts from zero). The
  sampling period bounds the CPU lost for a process that exits mid-phase.
- Memory: for single processes the peak of VmRSS over the samples and VmHWM (the
  kernel's own high-water mark, since the process started). For PostgreSQL the group's
  memory is the peak of the summed PSS (proportional set size), so the shared buffers are
  counted once rather than once per backend.

The machine's busy CPU (from /proc/stat) is sampled too, so a report can show how much
CPU went to processes outside the benchmark (another test run on the same box).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    comm: str
    ppid: int
    cpu_ticks: int
    children_ticks: int
    start_ticks: int


def read_stat(pid: int) -> ProcStat | None:
    """/proc/<pid>/stat, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm is in parentheses and may itself contain spaces or parentheses.
    head, _, tail = raw.rpartition(")")
    comm = head.partition("(")[2]
    fields = tail.split()
    # fields[0] is state (field 3 of the man page); utime is field 14 -> index 11.
    return ProcStat(
        pid=pid,
        comm=comm,
        ppid=int(fields[1]),
        cpu_ticks=int(fields[11]) + int(fields[12]),
        children_ticks=int(fields[13]) + int(fields[14]),
        start_ticks=int(fields[19]),
    )


def read_status_kib(pid: int, *names: str) -> dict[str, int]:
    """Selected `kB` lines of /proc/<pid>/status (e.g. VmRSS, VmHWM); {} if gone."""
    wanted = set(names)
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in wanted:
                    out[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return out


def read_pss_kib(pid: int) -> int | None:
    """Proportional set size from /proc/<pid>/smaps_rollup (needs ptrace access: root)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


# "postgres: [15/main: ]<user> <database> <client>(<port>) <state>": a client backend.
_BACKEND_TITLE = re.compile(
    r"^postgres: (?:\S+: )?(?P<user>\S+) (?P<db>\S+) (?:\S+\(\d+\)|\[local\])"
)


def postgres_pids(database: str | None = None) -> list[int]:
    """PostgreSQL server processes: the postmaster and its auxiliaries, and backends.

    With `database`, client backends are limited to those connected to it (their process
    title is `postgres: <user> <database> <client> <state>`); auxiliary processes (WAL
    writer, checkpointer, ...) and the postmaster are always included.
    """
    pids = []
    for pid in all_pids():
        stat = read_stat(pid)
        if stat is None or stat.comm not in ("postgres", "postmaster"):
            continue
        if database is not None:
            backend = _BACKEND_TITLE.match(cmdline(pid))
            if backend is not None and backend.group("db") != database:
                continue
        pids.append(pid)
    return pids


def pids_by_comm(*names: str) -> list[int]:
    out = []
    for pid in all_pids():
        stat = read_stat(pid)
        if stat is not None and stat.comm in names:
            out.append(pid)
    return out


def machine_cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    values = [int(v) for v in parts[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user/nice
    return total - idle, total


@dataclass
class _Track:
    first: dict[int, int] = field(default_factory=dict)
    last: dict[int, int] = field(default_factory=dict)
    rss_peak_kib: int = 0
    hwm_kib: dict[int, int] = field(default_factory=dict)
    pss_sum_peak_kib: int = 0
    pids_seen: set[int] = field(default_factory=set)


GroupSource = Callable[[], Iterable[int]]


class Sampler:
    """Sample groups of processes every `interval` seconds between `start()` and `stop()`.

    `groups` maps a group name to a function returning its current pids; `pss_groups`
    names the groups whose memory is reported as summed PSS (PostgreSQL).

    The sampler shares the cores it measures, so it samples rarely: CPU counters are
    cumulative and VmHWM is the kernel's own peak, so only PostgreSQL's summed PSS and
    processes that exit mid-phase lose precision. At 0.5 s it cost ~0.09 cores (reading
    46 PostgreSQL backends' smaps_rollup), 5% of the 2-core box.
    """

    def __init__(
        self,
        groups: dict[str, GroupSource],
        *,
        pss_groups: Iterable[str] = (),
        interval: float = 2.0,
    ) -> None:
        self._groups = groups
        self._pss_groups = set(pss_groups)
        self._interval = interval
        self._tracks = {name: _Track() for name in groups}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self._elapsed = 0.0
        self._boot_ticks = 0
        self._machine_first = (0, 0)
        self._machine_last = (0, 0)

    def start(self) -> Sampler:
        self._started_at = time.monotonic()
        self._boot_ticks = _uptime_ticks()
        self._machine_first = machine_cpu_ticks()
        self._sample(first=True)
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sample(first=False)
        self._machine_last = machine_cpu_ticks()
        self._elapsed = time.monotonic() - self._started_at
        return self.result()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._sample(first=False)
            except Exception:  # a vanished process mid-read must not kill the sampler
                continue

    def _sample(self, *, first: bool) -> None:
        for name, source in self._groups.items():
            track = self._tracks[name]
            try:
                pids = list(source())
            except Exception:
                pids = []
            rss_sum = 0
            pss_sum = 0
            for pid in pids:
                stat = read_stat(pid)
                if stat is None:
                    continue
                if pid not in track.first:
                    # Existed when the phase started: count from now. Started later: from 0.
                    born_during_phase = not first and stat.start_ticks >= self._boot_ticks
                    track.first[pid] = 0 if born_during_phase else stat.cpu_ticks
                track.last[pid] = stat.cpu_ticks
                track.pids_seen.add(pid)
                mem = read_status_kib(pid, "VmRSS", "VmHWM")
                rss_sum += mem.get("VmRSS", 0)
                if "VmHWM" in mem:
                    track.hwm_kib[pid] = mem["VmHWM"]
                if name in self._pss_groups:
                    pss_sum += read_pss_kib(pid) or 0
            track.rss_peak_kib = max(track.rss_peak_kib, rss_sum)
            track.pss_sum_peak_kib = max(track.pss_sum_peak_kib, pss_sum)

    def result(self) -> dict[str, Any]:
        busy0, total0 = self._machine_first
        busy1, total1 = self._machine_last
        ncpu = os.cpu_count() or 1
        machine_busy_s = (busy1 - busy0) / CLK_TCK
        groups: dict[str, Any] = {}
        tracked_cpu = 0.0
        for name, track in self._tracks.items():
            ticks = sum(track.last[pid] - track.first.get(pid, 0) for pid in track.last)
            cpu_s = ticks / CLK_TCK
            tracked_cpu += cpu_s
            entry: dict[str, Any] = {
                "cpu_seconds": round(cpu_s, 2),
                "cpu_cores": round(cpu_s / self._elapsed, 3) if self._elapsed else None,
                "processes": len(track.pids_seen),
            }
            if name in self._pss_groups:
                entry["peak_pss_mib"] = round(track.pss_sum_peak_kib / 1024, 1)
                entry["peak_rss_mib"] = entry["peak_pss_mib"]
                entry["memory_note"] = "summed PSS of all processes (shared buffers counted once)"
            else:
                entry["peak_rss_mib"] = round(
                    max(track.rss_peak_kib, sum(track.hwm_kib.values())) / 1024, 1
                )
            groups[name] = entry
        return {
            "elapsed_seconds": round(self._elapsed, 2),
            "groups": groups,
            "machine": {
                "cpus": ncpu,
                "busy_cpu_seconds": round(machine_busy_s, 2),
                "utilization": round((busy1 - busy0) / (total1 - total0), 3)
                if total1 > total0
                else None,
                "untracked_cpu_seconds": round(max(machine_busy_s - tracked_cpu, 0.0), 2),
            },
        }


def _uptime_ticks() -> int:
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * CLK_TCK)
