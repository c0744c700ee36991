"""Driving Envoy over HTTP/JSON with wrk and the Lua scripts in bench/lua/.

Result files written by the scripts' done() (one record per line):

    summary <duration_us> <requests> <bytes> <connect> <read> <write> <status> <timeout>
    counters ...                       (per thread; fields depend on the script)
    status [<call type>] <http status> <count>
    lat <call type> <us> <us> ...      (flow.lua: per thread, per call type)
    latency <min> <max> <mean> <p50> <p95> <p99> <p99.9>   (connections.lua, microseconds)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from bench.stats import summarize_us
from bench.tools import Completed, run_measured

LUA_DIR = Path(__file__).parent / "lua"
CALL_TYPES = ("create_transaction", "create_payment")


def _socket_errors(fields: list[str]) -> dict[str, int]:
    names = ("connect", "read", "write", "status_4xx_5xx", "timeout")
    return {name: int(v) for name, v in zip(names, fields[4:9], strict=True)}


def run_flow(
    url: str,
    *,
    connections: int,
    duration: float,
    tokens: list[str],
    nonce: str,
    idempotency: bool,
    exp_year: int,
    timeout_s: float = 5.0,
    workdir: str,
) -> dict[str, Any]:
    """The payment flow with `connections` connections (one wrk thread each)."""
    tokens_file = Path(workdir) / f"tokens-{nonce}.txt"
    tokens_file.write_text("\n".join(tokens) + "\n")
    out_file = Path(workdir) / f"flow-{nonce}.txt"
    env = {
        **os.environ,
        "BENCH_TOKENS_FILE": str(tokens_file),
        "BENCH_OUT": str(out_file),
        "BENCH_NONCE": nonce,
        "BENCH_IDEMPOTENCY": "1" if idempotency else "0",
        "BENCH_EXP_YEAR": str(exp_year),
    }
    seconds = max(1, round(duration))
    args = [
        "wrk",
        "-t",
        str(connections),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        f"{timeout_s:g}s",
        "-s",
        str(LUA_DIR / "flow.lua"),
        url,
    ]
    done = run_measured(args, timeout=seconds + 60, env=env)
    if done.returncode != 0 or not out_file.exists():
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    result = parse_flow(out_file.read_text())
    result["loadgen"] = _loadgen(done, "wrk", connections)
    out_file.unlink(missing_ok=True)
    return result


def parse_flow(text: str) -> dict[str, Any]:
    latencies: dict[str, list[float]] = {t: [] for t in CALL_TYPES}
    statuses: dict[str, dict[str, int]] = {t: {} for t in CALL_TYPES}
    totals = {"flows": 0, "not_succeeded": 0, "missing_id": 0, "sent": 0, "answered": 0}
    summary: dict[str, Any] = {}
    samples: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        kind = parts[0]
        if kind == "summary":
            summary = {
                "duration_s": int(parts[1]) / 1e6,
                "requests": int(parts[2]),
                "bytes": int(parts[3]),
                "socket_errors": _socket_errors(parts),
            }
        elif kind == "counters":
            for name, value in zip(totals, parts[1:], strict=False):
                totals[name] += int(value)
        elif kind == "status":
            call, code, count = parts[1], parts[2], int(parts[3])
            statuses[call][code] = statuses[call].get(code, 0) + count
        elif kind == "lat":
            latencies[parts[1]].extend(float(v) for v in parts[2:])
        elif kind == "sample" and len(parts) >= 3:
            key = f"{parts[1]} {parts[2]}"
            samples.setdefault(key, line.split(" ", 3)[3] if len(parts) > 3 else "")
    duration = summary.get("duration_s") or 1.0
    calls: dict[str, dict[str, Any]] = {}
    for call in CALL_TYPES:
        codes = dict(sorted(statuses[call].items()))
        calls[call] = {
            "requests": sum(codes.values()),
            "per_second": round(sum(codes.values()) / duration, 1),
            "statuses": codes,
            "errors": {k: v for k, v in codes.items() if k != "200"},
            "latency": summarize_us(latencies[call]),
        }
    errors: dict[str, int] = {}
    for call in CALL_TYPES:
        for code, count in calls[call]["errors"].items():
            errors[f"http_{code}"] = errors.get(f"http_{code}", 0) + count
    for name, count in summary.get("socket_errors", {}).items():
        if name != "status_4xx_5xx" and count:
            errors[f"socket_{name}"] = count
    if totals["not_succeeded"]:
        errors["payment_not_succeeded"] = totals["not_succeeded"]
    if totals["missing_id"]:
        errors["transaction_without_id"] = totals["missing_id"]
    return {
        "duration_s": round(duration, 2),
        "flows": totals["flows"],
        "flows_per_second": round(totals["flows"] / duration, 1),
        "api_calls": summary.get("requests", 0),
        "api_calls_per_second": round(summary.get("requests", 0) / duration, 1),
        "calls": calls,
        "errors": dict(sorted(errors.items())),
        "error_count": sum(errors.values()),
        "error_samples": samples,
        "socket_errors": summary.get("socket_errors", {}),
    }


def run_connections(
    url: str,
    *,
    connections: int,
    threads: int,
    duration: float,
    interval_ms: int,
    targets: list[tuple[str, str]],
    timeout_s: float = 10.0,
    workdir: str,
) -> dict[str, Any]:
    """`connections` keep-alive connections, each GETting a transaction every interval."""
    fd, targets_path = tempfile.mkstemp(prefix="targets-", suffix=".txt", dir=workdir)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{token} {txn}\n" for token, txn in targets)
    out_file = Path(workdir) / "connections.txt"
    threads = max(1, min(threads, connections))
    env = {
        **os.environ,
        "BENCH_TARGETS_FILE": targets_path,
        "BENCH_OUT": str(out_file),
        "BENCH_INTERVAL_MS": str(interval_ms),
        "BENCH_CONNS_PER_THREAD": str(connections // threads),
    }
    seconds = max(1, round(duration))
    args = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        f"{timeout_s:g}s",
        "-s",
        str(LUA_DIR / "connections.lua"),
        url,
    ]
    done = run_measured(args, timeout=seconds + 90, env=env)
    Path(targets_path).unlink(missing_ok=True)
    if done.returncode != 0 or not out_file.exists():
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    result = parse_connections(out_file.read_text(), connections=connections)
    result["loadgen"] = _loadgen(done, "wrk", threads)
    out_file.unlink(missing_ok=True)
    return result


def parse_connections(text: str, *, connections: int) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    latency: dict[str, Any] = {}
    sent = answered = 0
    statuses: dict[str, int] = {}
    samples: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "summary":
            summary = {
                "duration_s": int(parts[1]) / 1e6,
                "requests": int(parts[2]),
                "socket_errors": _socket_errors(parts),
            }
        elif parts[0] == "latency":
            us = [float(v) for v in parts[1:]]
            latency = {
                "min_ms": round(us[0] / 1000, 3),
                "max_ms": round(us[1] / 1000, 3),
                "mean_ms": round(us[2] / 1000, 3),
                "p50_ms": round(us[3] / 1000, 3),
                "p95_ms": round(us[4] / 1000, 3),
                "p99_ms": round(us[5] / 1000, 3),
                "p99_9_ms": round(us[6] / 1000, 3),
            }
        elif parts[0] == "counters":
            sent += int(parts[1])
            answered += int(parts[2])
        elif parts[0] == "status":
            statuses[parts[1]] = statuses.get(parts[1], 0) + int(parts[2])
        elif parts[0] == "sample" and len(parts) >= 2:
            samples.setdefault(parts[1], line.split(" ", 2)[2] if len(parts) > 2 else "")
    duration = summary.get("duration_s") or 1.0
    errors = {f"http_{k}": v for k, v in sorted(statuses.items()) if k != "200"}
    for name, count in summary.get("socket_errors", {}).items():
        if name != "status_4xx_5xx" and count:
            errors[f"socket_{name}"] = count
    # At the end wrk drops what is in flight: at most one request per connection.
    unanswered = sent - answered
    return {
        "connections": connections,
        "duration_s": round(duration, 2),
        "requests_sent": sent,
        "requests_answered": answered,
        "in_flight_at_end": unanswered,
        "all_answered": unanswered <= connections and not errors,
        "requests_per_second": round(answered / duration, 1),
        "statuses": dict(sorted(statuses.items())),
        "latency": latency,
        "errors": errors,
        "error_count": sum(errors.values()),
        "error_samples": samples,
    }


def _loadgen(done: Completed, name: str, threads: int) -> dict[str, Any]:
    return {
        "tool": name,
        "threads": threads,
        "cpu_seconds": round(done.cpu_seconds, 2),
        "cpu_cores": round(done.cpu_seconds / done.wall_seconds, 3) if done.wall_seconds else None,
        "peak_rss_mib": round(done.max_rss_mib, 1),
    }
