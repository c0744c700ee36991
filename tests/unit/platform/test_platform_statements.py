"""What a prebuilt statement compiles to, and what it refuses (no database needed)."""

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY

from pi.platform.db.statements import Statement

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("n", Integer, nullable=False),
)
with_default = Table(
    "with_default",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("n", Integer, nullable=False, default=1),
)


def test_sql_is_compiled_once_for_psycopg_with_no_schema() -> None:
    statement = Statement(select(things).where(things.c.id == bindparam("p_id")))
    # The connection's search_path finds the table, whatever the service's schema.
    assert statement.sql == (
        "SELECT things.id, things.n \nFROM things \nWHERE things.id = %(p_id)s::VARCHAR"
    )


def test_expanding_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="p_ids"):
        Statement(select(things).where(things.c.id.in_(bindparam("p_ids", expanding=True))))


def test_an_array_parameter_is_one_parameter_whatever_its_length() -> None:
    # The PostgreSQL replacement for an expanding IN: one SQL text, prepared once. The
    # array is cast to unsized VARCHAR[]: a cast to VARCHAR(40)[] would cut longer values.
    ids = bindparam("p_ids", type_=ARRAY(String()))
    statement = Statement(select(things.c.n).where(things.c.id == any_(ids)))
    assert statement.sql.endswith("WHERE things.id = ANY (%(p_ids)b::VARCHAR[])")  # binary


def test_client_side_column_defaults_are_refused() -> None:
    with pytest.raises(ValueError, match="defaults"):
        Statement(with_default.insert())
