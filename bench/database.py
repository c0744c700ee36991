"""The benchmark database: a fresh `pi_bench` on a PostgreSQL server, and checks on it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from pi.platform.db.engine import libpq_url

SETTINGS_REPORTED = (
    "server_version",
    "synchronous_commit",
    "fsync",
    "full_page_writes",
    "wal_sync_method",
    "commit_delay",
    "shared_buffers",
    "max_connections",
)


@dataclass(frozen=True)
class Postgres:
    """`database` on the server of `server_url` (a `postgresql://` URL, whatever its
    database part: TCP or a unix socket's `?host=`)."""

    server_url: str
    database: str

    def url(self, database: str | None = None) -> str:
        parts = urlsplit(libpq_url(self.server_url))
        return urlunsplit(parts._replace(path="/" + (database or self.database)))

    def connect(self, database: str | None = None) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(database), autocommit=True, connect_timeout=10)

    def describe(self) -> str:
        """Where the server is, for people (never the password)."""
        parts = urlsplit(libpq_url(self.server_url))
        if parts.hostname:
            return f"{parts.hostname}:{parts.port or 5432}"
        return "the unix socket of " + (parts.query or "the default directory")


def recreate_database(pg: Postgres) -> None:
    """Drop and create the benchmark database, with durable commits forced on for it.

    `ALTER DATABASE ... SET synchronous_commit = on` applies to every session in this
    database only, so the benchmark measures durable commits even on a server whose
    default is off, without touching the server's configuration.
    """
    if not pg.database.startswith("pi_bench"):
        raise ValueError(
            f"refusing to drop {pg.database!r}: the bench database name starts with pi_bench"
        )
    with pg.connect("postgres") as conn:
        name = sql.Identifier(pg.database)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
        conn.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = on").format(name))


def drop_database(pg: Postgres) -> None:
    with pg.connect("postgres") as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(pg.database))
        )


def server_settings(pg: Postgres) -> dict[str, Any]:
    """What decides durability and capacity, as seen by a session in the bench database."""
    out: dict[str, Any] = {}
    with pg.connect() as conn:
        for name in SETTINGS_REPORTED:
            out[name] = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]  # type: ignore[index]
        out["connections_in_use"] = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        ).fetchone()[0]  # type: ignore[index]
    with pg.connect("postgres") as conn:
        # The server-wide value (the bench database forces it on for its own sessions).
        out["server_synchronous_commit"] = conn.execute("SHOW synchronous_commit").fetchone()[0]  # type: ignore[index]
    out["durable_commits"] = (
        out["synchronous_commit"] in ("on", "remote_write", "remote_apply", "local")
        and out["fsync"] == "on"
    )
    return out


def scalar(pg: Postgres, query: str, *params: Any) -> Any:
    with pg.connect() as conn:
        row = conn.execute(query, params or None).fetchone()
        return None if row is None else row[0]


def table_exists(pg: Postgres, qualified: str) -> bool:
    return bool(scalar(pg, "SELECT to_regclass(%s) IS NOT NULL", qualified))


def wait_outbox_drained(pg: Postgres, timeout: float) -> dict[str, Any]:
    """Wait until the payment service's outbox holds no undelivered movement.

    The flow is only done when the transaction service has applied every movement; a
    backlog left at the end of a phase means the mesh did not keep up with the load.
    """
    if not table_exists(pg, "payments.outbox"):
        return {"checked": False}
    query = "SELECT count(*) FROM payments.outbox WHERE delivered_time IS NULL"
    started = time.monotonic()
    backlog_at_end = int(scalar(pg, query))
    backlog = backlog_at_end
    while backlog and time.monotonic() - started < timeout:
        time.sleep(0.25)
        backlog = int(scalar(pg, query))
    return {
        "checked": True,
        "undelivered_at_end_of_load": backlog_at_end,
        "undelivered_after_wait": backlog,
        "drain_seconds": round(time.monotonic() - started, 2),
    }


_DB_COUNTERS = (
    "xact_commit",
    "xact_rollback",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "blks_read",
    "blks_hit",
    "sessions",
)


def database_counters(pg: Postgres) -> dict[str, int]:
    """Cumulative pg_stat_database counters of the bench database (commits, rows, ...)."""
    columns = ", ".join(_DB_COUNTERS)
    with pg.connect() as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            f"SELECT {columns} FROM pg_stat_database WHERE datname = %s", (pg.database,)
        ).fetchone()
    return dict(zip(_DB_COUNTERS, (int(v or 0) for v in row or ()), strict=False))


def counters_per_flow(before: dict[str, int], after: dict[str, int], flows: int) -> dict[str, Any]:
    """What the database did per payment flow during a phase (the stats are flushed by
    backends at least every second, so the last second may be missing)."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in before}
    per_flow = {k: round(v / flows, 2) for k, v in delta.items()} if flows else {}
    return {"total": delta, "per_flow": per_flow}


# Statements the bench itself sends to the bench database (these counters, the outbox
# and database checks), left out of the services' count.
_OWN_STATEMENTS = ("pg_stat", "pg_catalog", "information_schema", "pg_advisory_unlock_all")
_UTILITY = ("BEGIN", "COMMIT", "ROLLBACK", "SET ", "SAVEPOINT", "RELEASE")


def reset_statements(pg: Postgres) -> bool:
    """Zero pg_stat_statements for a phase; False when the server does not load it
    (`shared_preload_libraries`: the bench's embedded server does, a given one may not)."""
    try:
        with pg.connect() as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
    except psycopg.Error:
        return False
    return True


def statements_per_flow(pg: Postgres, flows: int, top: int = 12) -> dict[str, Any]:
    """What the services sent to the bench database since `reset_statements`, per flow:
    every statement execution (a merged group statement once, however many units it
    carries), of which transaction control (BEGIN, COMMIT, SET LOCAL ...), and the most
    frequent statements with the time pg_stat_statements gives them per flow (planning
    and execution, ms). Wall-clock time: it includes lock waits and, on a box whose cores
    are all busy, waiting for a core; it is not PostgreSQL's CPU (the CPU table is)."""
    with pg.connect() as conn:
        rows = conn.execute(
            "SELECT s.query, s.calls, s.total_plan_time + s.total_exec_time"
            " FROM pg_stat_statements s"
            " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s",
            (pg.database,),
        ).fetchall()
    counted = [
        (q, int(c), float(ms)) for q, c, ms in rows if not any(m in q for m in _OWN_STATEMENTS)
    ]
    total = sum(c for _, c, _ in counted)
    control = sum(c for q, c, _ in counted if q.lstrip().upper().startswith(_UTILITY))
    per = (lambda n: round(n / flows, 3)) if flows else (lambda n: 0.0)
    frequent = sorted(counted, key=lambda item: -item[1])[:top]
    slowest = sorted(counted, key=lambda item: -item[2])[:top]
    return {
        "per_flow": round(per(total), 2),
        "transaction_control_per_flow": round(per(control), 2),
        "other_per_flow": round(per(total - control), 2),
        "ms_per_flow": per(sum(ms for _, _, ms in counted)),
        "top": [_statement(q, c, ms, per) for q, c, ms in frequent],
        "slowest": [_statement(q, c, ms, per) for q, c, ms in slowest],
    }


def _statement(query: str, calls: int, ms: float, per: Callable[[float], float]) -> dict[str, Any]:
    return {
        "per_flow": round(per(calls), 2),
        "ms_per_flow": per(ms),
        "query": " ".join(query.split())[:160],
    }
