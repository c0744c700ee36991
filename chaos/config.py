"""Settings of a fault run: defaults, `--quick`, then CHAOS_* environment variables."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

ALL_SCENARIOS = ("F0", "F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8", "F9")


@dataclass(frozen=True)
class ChaosConfig:
    quick: bool = False
    scenarios: tuple[str, ...] = ALL_SCENARIOS  # CHAOS_SCENARIOS: comma list
    duration: float = 25.0  # CHAOS_DURATION: seconds of load (and fault) per scenario
    clients: int = 12  # CHAOS_CLIENTS: client threads
    retries: int = 4  # CHAOS_RETRIES: retries of a failed call, same key, spaced
    timeout: float = 35.0  # CHAOS_TIMEOUT: a client gives up on a call (Envoy's is 30 s)
    replicas: int = 1  # CHAOS_REPLICAS: processes per service
    replicas_variant: bool = True  # CHAOS_REPLICAS_VARIANT: F1 again with 2 replicas
    redis_down: float = 20.0  # CHAOS_REDIS_DOWN: seconds Redis is stopped in F4
    slowloris: int = 200  # CHAOS_SLOWLORIS: slow connections opened in F9
    settle_timeout: float = 90.0  # CHAOS_SETTLE_TIMEOUT: wait for reconciler and outbox
    recover_timeout: float = 60.0  # CHAOS_RECOVER_TIMEOUT: wait for a clean flow
    window: float = 30.0  # CHAOS_WINDOW: nothing may stay PROCESSING longer, once drained
    # F8 (chaos.openloop): capacity measured closed-loop for overload_measure s, then
    # overload_factor x that, open loop, for overload_seconds, on up to
    # overload_connections connections; no call may wait longer than hang_bound s.
    overload_seconds: float = 30.0  # CHAOS_OVERLOAD_SECONDS
    overload_measure: float = 5.0  # CHAOS_OVERLOAD_MEASURE
    overload_factor: float = 2.0  # CHAOS_OVERLOAD_FACTOR
    overload_connections: int = 1024  # CHAOS_OVERLOAD_CONNECTIONS: > 2x the edge's cap
    hang_bound: float = 10.0  # CHAOS_HANG_BOUND
    # CHAOS_PORT_BASE (services +1/2/3, +100 per replica; metrics +1000): clear of the
    # bench's block (31000, its metrics 32001+), so both can run at once.
    port_base: int = 34000
    workdir: str = str(REPO / "var" / "chaos")  # CHAOS_WORKDIR: PostgreSQL, Redis, logs
    out: str = str(REPO / "chaos" / "results" / "latest.json")  # CHAOS_OUT

    def public(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("workdir", "out"):
            path = Path(out[name])
            out[name] = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name
        out["scenarios"] = list(self.scenarios)
        return out


QUICK: dict[str, Any] = {
    "duration": 6.0,
    "clients": 6,
    "retries": 4,
    "replicas_variant": False,
    "redis_down": 4.0,
    "slowloris": 20,
    "settle_timeout": 45.0,
    "recover_timeout": 40.0,
    "window": 10.0,
    "overload_seconds": 6.0,
    "overload_measure": 2.0,
}


def _coerce(default: Any, raw: str) -> Any:
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, tuple):
        return tuple(part.strip().upper() for part in raw.split(",") if part.strip())
    return type(default)(raw)


def load(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> ChaosConfig:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="each scenario briefly")
    parser.add_argument("--out", help="JSON report path")
    args = parser.parse_args(argv)
    env = os.environ if environ is None else environ
    cfg = ChaosConfig(quick=args.quick)
    if args.quick:
        cfg = replace(cfg, **QUICK)
    values: dict[str, Any] = {}
    for f in fields(cfg):
        raw = env.get(f"CHAOS_{f.name.upper()}")
        if raw is not None and raw.strip() and f.name != "quick":
            values[f.name] = _coerce(getattr(cfg, f.name), raw)
    if args.out:
        values["out"] = args.out
    cfg = replace(cfg, **values)
    unknown = sorted(set(cfg.scenarios) - set(ALL_SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(ALL_SCENARIOS)}")
    return cfg
