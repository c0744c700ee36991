"""`make run`'s database when DATABASE_URL is unset: an embedded PostgreSQL in the var dir.

`start_database` starts it (or reuses one already running on the directory) before the
migrations and puts its URL in the services' environment; `stop_database` stops it after
the services, if this launcher started it. It is sized for the worst case of the mesh:
every replica of every service with its full pool (PI_DB_POOL_SIZE) at once, plus
migrations and tools (`pi.platform.db.embedded.connections_for`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pi.platform.config import DEFAULT_DB_POOL_SIZE
from pi.platform.db.embedded import EmbeddedPostgres, EmbeddedPostgresError, connections_for

__all__ = ["EmbeddedPostgres", "embedded_postgres", "start_database", "stop_database"]

Say = Callable[[str], None]


def embedded_postgres(
    data_dir: Path, env: Mapping[str, str], *, processes: int, log_dir: Path
) -> EmbeddedPostgres:
    """The server for `processes` service processes, each pooling PI_DB_POOL_SIZE
    connections (from `env`, default 20)."""
    try:
        pool_size = int(env.get("PI_DB_POOL_SIZE") or DEFAULT_DB_POOL_SIZE)
    except ValueError:  # the services report it; size for the default meanwhile
        pool_size = DEFAULT_DB_POOL_SIZE
    return EmbeddedPostgres(
        data_dir,
        max_connections=connections_for(processes, pool_size),
        log_path=log_dir / "postgres.log",
    )


def start_database(
    data_dir: Path, env: dict[str, str], *, processes: int, log_dir: Path, say: Say
) -> EmbeddedPostgres | None:
    """With no DATABASE_URL in `env`: start (or reuse) the embedded server on `data_dir`
    and set DATABASE_URL to its URL; None when DATABASE_URL is set.

    Call it from the main thread: the server stops if the thread that started it dies.
    Raises RuntimeError if the server cannot start.
    """
    if (env.get("DATABASE_URL") or "").strip():
        return None
    started = time.monotonic()
    server = embedded_postgres(data_dir, env, processes=processes, log_dir=log_dir)
    try:
        env["DATABASE_URL"] = server.start()
    except EmbeddedPostgresError as error:
        raise RuntimeError(f"the embedded PostgreSQL did not start: {error}") from error
    how = "started" if server.started_here else "reused (it was running)"
    say(
        f"{time.strftime('%H:%M:%S')}  postgres        {how} in "
        f"{time.monotonic() - started:.1f}s  ({data_dir}, "
        f"max_connections {server.max_connections})"
    )
    return server


def stop_database(server: EmbeddedPostgres, say: Say) -> None:
    """Stop the server if `start_database` started it (a reused one is left running)."""
    if not server.started_here:
        return
    try:
        server.stop()
    except EmbeddedPostgresError as error:
        say(f"!! {error}")
        return
    say(f"{time.strftime('%H:%M:%S')}  postgres        stopped")
