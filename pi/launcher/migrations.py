"""The migrations step: every service migrates its own schema before any service starts.

The three run at once, each logging to `<var>/log/<service>-migrate.log`; a failure
shows the end of its log and stops the launch.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pi.launcher.console import Console
from pi.launcher.identities import service_env
from pi.launcher.options import SERVICES, LaunchOptions
from pi.launcher.preflight import LaunchError
from pi.launcher.supervisor import tail


async def migrate(options: LaunchOptions, env: dict[str, str], out: Console) -> bool:
    """True once every service migrated; raises LaunchError if any failed."""

    async def one(service: str) -> tuple[str, int, Path]:
        log_path = options.var / "log" / f"{service}-migrate.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            process = await asyncio.create_subprocess_exec(
                options.python,
                "-m",
                f"pi.{service}",
                "migrate",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=service_env(options, env, service, migrate=True),
                cwd=str(options.root),
            )
            try:
                return service, await process.wait(), log_path
            except asyncio.CancelledError:
                process.kill()
                raise

    started = time.monotonic()
    results = await asyncio.gather(*(one(service) for service in SERVICES))
    failed = [(service, code, log) for service, code, log in results if code != 0]
    for service, code, log in failed:
        out.say(f"!! migrating {service} failed (exit {code}):")
        for line in tail(log, 12):
            out.say(f"   | {line}")
    if failed:
        raise LaunchError("migrations failed")
    elapsed = time.monotonic() - started
    out.say(f"{time.strftime('%H:%M:%S')}  migrations      done in {elapsed:.1f}s")
    return True
