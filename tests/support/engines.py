"""SQLAlchemy engines for tests that inspect a schema with `conn.execute(...)`.

The services themselves run no SQLAlchemy engine (see pi.platform.db.database); tests
use one to look at or set up rows. `create_engine_for(url, schema)` maps tables declared
with no schema into `schema` and sets `search_path` to it, as the services' connections
do; dispose of it when done (the `make_engine` fixture does).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pi.platform.db.engine import sqlalchemy_url, validate_schema


def create_engine_for(url: str, schema: str, **options: Any) -> AsyncEngine:
    validate_schema(schema)
    settings: dict[str, Any] = {
        # Opened lazily; a test rarely holds more than a couple at once.
        "pool_size": 4,
        "max_overflow": 4,
        "connect_args": {"options": f"-c search_path={schema}"},
        "execution_options": {"schema_translate_map": {None: schema}},
    }
    settings.update(options)
    return create_async_engine(sqlalchemy_url(url), **settings)
