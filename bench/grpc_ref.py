"""Run `bench.grpc_flow` in several processes and merge their results."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

from bench.stats import merge_counts, summarize_us
from bench.tools import Completed, run_measured

CALLS = ("create_transaction", "create_payment")


def run(
    *,
    repo: Path,
    transactions_target: str,
    payments_target: str,
    processes: int,
    concurrency: int,
    duration: float,
    tokens: list[str],
    nonce: str,
    idempotency: bool,
    exp_year: int,
    workdir: Path,
    mesh_identity: str | None = None,
) -> dict[str, Any]:
    tokens_file = workdir / f"grpc-tokens-{nonce}.txt"
    tokens_file.write_text("\n".join(tokens) + "\n")
    per_process = [
        concurrency // processes + (1 if i < concurrency % processes else 0)
        for i in range(processes)
    ]
    per_process = [n for n in per_process if n > 0]
    done: list[Completed | BaseException | None] = [None] * len(per_process)
    outs = [workdir / f"grpc-{nonce}-{i}.json" for i in range(len(per_process))]

    def one(i: int, workers: int) -> None:
        args = [
            sys.executable,
            "-m",
            "bench.grpc_flow",
            "--transactions",
            transactions_target,
            "--payments",
            payments_target,
            "--concurrency",
            str(workers),
            "--duration",
            str(duration),
            "--tokens-file",
            str(tokens_file),
            "--worker-offset",
            str(sum(per_process[:i])),
            "--nonce",
            f"{nonce}p{i}",
            "--exp-year",
            str(exp_year),
            "--out",
            str(outs[i]),
        ]
        if idempotency:
            args.append("--idempotency")
        if mesh_identity:
            args += ["--mesh-identity", mesh_identity]
        try:
            done[i] = run_measured(args, timeout=duration + 60, cwd=str(repo))
        except BaseException as exc:  # reported below
            done[i] = exc

    threads = [threading.Thread(target=one, args=(i, n)) for i, n in enumerate(per_process)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    lat: dict[str, list[int]] = {c: [] for c in CALLS}
    statuses: dict[str, dict[str, int]] = {c: {} for c in CALLS}
    flows = not_succeeded = 0
    elapsed = 0.0
    cpu = rss = 0.0
    for i, result in enumerate(done):
        if isinstance(result, BaseException) or result is None:
            raise RuntimeError(f"grpc client {i} failed: {result!r}")
        if result.returncode != 0 or not outs[i].exists():
            raise RuntimeError(
                f"grpc client {i} exited {result.returncode}: {result.stderr[-2000:]}"
            )
        data = json.loads(outs[i].read_text())
        outs[i].unlink()
        for call in CALLS:
            lat[call].extend(data["latencies_us"][call])
            statuses[call] = merge_counts(statuses[call], data["statuses"][call])
        flows += data["flows"]
        not_succeeded += data["not_succeeded"]
        elapsed = max(elapsed, data["elapsed_s"])
        cpu += result.cpu_seconds
        rss += result.max_rss_mib
    tokens_file.unlink(missing_ok=True)
    elapsed = elapsed or duration
    calls: dict[str, dict[str, Any]] = {}
    errors: dict[str, int] = {}
    for call in CALLS:
        codes = statuses[call]
        calls[call] = {
            "requests": sum(codes.values()),
            "per_second": round(sum(codes.values()) / elapsed, 1),
            "statuses": codes,
            "errors": {k: v for k, v in codes.items() if k != "OK"},
            "latency": summarize_us(lat[call]),
        }
        for code, count in calls[call]["errors"].items():
            errors[f"grpc_{code}"] = errors.get(f"grpc_{code}", 0) + count
    if not_succeeded:
        errors["payment_not_succeeded"] = not_succeeded
    total_calls = sum(c["requests"] for c in calls.values())
    return {
        "transactions_target": transactions_target,
        "payments_target": payments_target,
        "duration_s": round(elapsed, 2),
        "concurrency": concurrency,
        "flows": flows,
        "flows_per_second": round(flows / elapsed, 1),
        "api_calls_per_second": round(total_calls / elapsed, 1),
        "calls": calls,
        "errors": errors,
        "error_count": sum(errors.values()),
        "loadgen": {
            "tool": f"bench.grpc_flow x{len(per_process)} (python, grpc.aio + uvloop)",
            "cpu_seconds": round(cpu, 2),
            "cpu_cores": round(cpu / elapsed, 3),
            "peak_rss_mib": round(rss, 1),
        },
    }
