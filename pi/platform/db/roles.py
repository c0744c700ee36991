"""A PostgreSQL role per service, limited to its own schema.

`migrate` runs as the database's owner (it creates schemas and tables); the service
itself then connects as its own role, which `grant_service_role` creates (or updates)
with exactly what a running service needs: USAGE on its schema, SELECT / INSERT / UPDATE /
DELETE on its tables, its sequences. Nothing on another service's schema: payments'
role cannot even name `auth.signing_keys`, let alone read the encrypted signing keys.
No DDL, no TRUNCATE, no ownership: a compromised service cannot change the structure
of its own tables either.

`python -m pi.<svc> migrate` calls it when PI_DB_SERVICE_ROLE is set (`make run` and the
Kubernetes migration Jobs set it); the services' DATABASE_URL then names that role.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from sqlalchemy import text

from pi.platform.db.engine import sync_engine

_ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"
_SEQUENCE_PRIVILEGES = "USAGE, SELECT, UPDATE"


def grant_service_role(url: str, schema: str, role: str, password: str | None = None) -> None:
    """Create `role` (LOGIN; with `password` if given) if missing, and grant it the use of
    `schema`'s tables, present and future (tables later migrations create), and nothing
    else. Idempotent: run after every migration."""
    if not _ROLE_RE.match(role) or not _ROLE_RE.match(schema):
        raise ValueError("role and schema must be lowercase SQL identifiers")
    engine = sync_engine(url)
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role}
            ).first()
            if exists is None:
                conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB')
            if password is not None:
                # Sent over the migration's own connection; no parameter binding for DDL.
                conn.exec_driver_sql(f'ALTER ROLE "{role}" PASSWORD {_literal(password)}')
            for statement in (
                f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"',
                f'GRANT {_TABLE_PRIVILEGES} ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"',
                f'GRANT {_SEQUENCE_PRIVILEGES} ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}"',
                f'ALTER DEFAULT PRIVILEGES IN SCHEMA "{schema}" '
                f'GRANT {_TABLE_PRIVILEGES} ON TABLES TO "{role}"',
                f'ALTER DEFAULT PRIVILEGES IN SCHEMA "{schema}" '
                f'GRANT {_SEQUENCE_PRIVILEGES} ON SEQUENCES TO "{role}"',
            ):
                conn.exec_driver_sql(statement)
            conn.commit()
    finally:
        engine.dispose()


def role_url(url: str, role: str, password: str | None = None) -> str:
    """`url` logging in as `role` instead (same server, database and options)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("not a URL")
    _, at, location = rest.rpartition("@")
    credentials = role if password is None else f"{role}:{_quote(password)}"
    return f"{scheme}://{credentials}@{location if at else rest}"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _quote(value: str) -> str:
    return quote(value, safe="")
