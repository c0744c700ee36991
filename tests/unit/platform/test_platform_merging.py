"""Set-based forms of statements (pi.platform.db.merging): derived where one statement
over arrays does exactly what the runs would, and nowhere else."""

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from pi.platform.db.statements import Statement

metadata = sa.MetaData()
rows = sa.Table(
    "rows",
    metadata,
    sa.Column("scope", sa.String(40), primary_key=True),
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
    sa.Column("body", sa.LargeBinary),
)
others = sa.Table("others", metadata, sa.Column("id", sa.String(40), primary_key=True))
same_row = sa.and_(rows.c.scope == sa.bindparam("p_scope"), rows.c.id == sa.bindparam("p_id"))


def test_a_one_row_insert_becomes_an_insert_from_unnest_returning_its_keys() -> None:
    statement = Statement(postgresql.insert(rows).on_conflict_do_nothing().returning(rows.c.value))
    form = statement.merged
    assert form is not None and form.insert
    assert "FROM unnest(%(scope)b::VARCHAR[], %(id)b::VARCHAR[]" in form.sql
    assert "%(body)b::BYTEA[]" in form.sql  # sized text is cast unsized, binary as bytea
    assert form.sql.endswith(
        "ON CONFLICT DO NOTHING RETURNING rows.value, rows.scope AS _pi_k0, rows.id AS _pi_k1"
    )
    assert form.key == ("scope", "id") and form.returning == 1
    runs = [{"scope": "a", "id": str(n), "value": 4 + n, "body": None} for n in (1, 2)]
    assert form.arrays(runs)["value"] == [5, 6]
    # Rows come back by key, in any order; a run whose row conflicted gets none.
    assert form.outcomes([(6, "a", "2")], runs) == [[], [(6,)]]


def test_a_conditional_update_by_primary_key_becomes_an_update_from_unnest() -> None:
    statement = Statement(
        rows.update()
        .where(same_row, rows.c.value == sa.bindparam("p_old", type_=sa.BigInteger()))
        .values(value=rows.c.value + sa.bindparam("p_delta", type_=sa.BigInteger()))
        .returning(rows.c.value)
    )
    form = statement.merged
    assert form is not None and not form.insert
    assert "WITH ORDINALITY AS _pi_rows(p_delta, p_id, p_old, p_scope, _pi_n)" in form.sql
    assert "rows.value = _pi_rows.p_old::BIGINT" in form.sql
    assert form.sql.endswith("RETURNING rows.value, _pi_rows._pi_n")
    assert form.key == ("p_scope", "p_id")
    runs = [{"p_scope": "a", "p_id": str(n), "p_old": 0, "p_delta": 1} for n in range(3)]
    assert form.outcomes([(1, 3), (1, 1)], runs) == [[(1,)], [], [(1,)]]


def test_statements_a_merged_form_could_get_wrong_run_as_they_are() -> None:
    not_by_key = rows.update().where(rows.c.value == sa.bindparam("p_v")).values(value=1)
    by_part_of_the_key = rows.update().where(rows.c.id == sa.bindparam("p_id")).values(value=1)
    subquery = (
        rows.update()
        .where(same_row, rows.c.id.in_(sa.select(others.c.id).scalar_subquery()))
        .values(value=1)
    )
    any_of = rows.update().where(rows.c.id == sa.any_(sa.bindparam("p_ids"))).values(value=1)
    function = rows.update().where(same_row).values(value=sa.func.abs(sa.bindparam("p_v")))
    from_select = rows.insert().from_select(
        ["scope", "id", "value", "body"],
        sa.select(others.c.id, others.c.id, sa.literal(1), sa.null()),
    )
    upsert = postgresql.insert(rows)
    upsert = upsert.on_conflict_do_update(
        index_elements=["scope", "id"], set_={"value": upsert.excluded.value}
    )
    for core in (not_by_key, by_part_of_the_key, subquery, any_of, function, from_select, upsert):
        assert Statement(core).merged is None, core
    assert Statement(sa.select(rows)).merged is None
    assert Statement(rows.delete().where(same_row)).merged is None
