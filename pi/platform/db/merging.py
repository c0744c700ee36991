"""Set-based statements: many runs of one INSERT or UPDATE sent as one statement.

When the group commit (`pi.platform.db.group_commit`) sends the units of concurrent
requests together, the same statement comes once per unit: the idempotency claim, the
INSERT of a payment, the conditional UPDATE of its transaction's ref. PostgreSQL spends
most of its CPU on the statements themselves (parse, plan, executor start-up, per
statement), and psycopg about as much per statement in Python, so N runs of one statement
go as one, with arrays of their values (`unnest`):

    INSERT INTO t (a, b) VALUES (%(a)s, %(b)s) ON CONFLICT DO NOTHING RETURNING t.a
      -> INSERT INTO t (a, b) SELECT r.a, r.b FROM unnest(%(a)b::VARCHAR[], %(b)b::BIGINT[])
         AS r(a, b) ON CONFLICT DO NOTHING RETURNING t.a, t.<primary key>...
    UPDATE t SET b=%(p_b)s WHERE t.a = %(p_a)s AND t.b = %(p_old)s
      -> UPDATE t SET b=r.p_b FROM unnest(...) WITH ORDINALITY AS r(p_a, p_b, p_old, _n)
         WHERE t.a = r.p_a AND t.b = r.p_old RETURNING r._n

Each run's outcome (its row, its count, whether it hit) is read back from the rows the
merged statement returns: an UPDATE's by the ordinal of its values, an INSERT's by the
primary key it inserted. `MergedForm.of(statement)` derives the form from the Core
statement, and only where that is exact:

- an INSERT of one row of bind parameters (with or without ON CONFLICT and RETURNING),
  into a table with a primary key; an UPDATE whose WHERE fixes the whole primary key to
  parameters and whose SET and WHERE refer to the table's own columns and parameters
  only (no subquery: each row is decided on itself, as one run would decide it);
- the runs merged must touch distinct rows (distinct primary keys, `key`): then one
  statement over them does what the runs would have done one after the other. With two
  runs on one row the group sends them one by one instead.

Anything else (INSERT .. SELECT, DELETE, subqueries) has no merged form and runs as is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Column, Insert, Table, Update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import CompileError
from sqlalchemy.sql import operators
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ClauseElement,
    Grouping,
    Null,
)

__all__ = ["MergedForm"]

# What a run of the statement binds: `%(name)s`, with the cast SQLAlchemy adds, if any.
_PARAM = re.compile(r"%\((\w+)\)s(::[A-Z][A-Z ]*(?:\(\d+\))?(?:\[\])?)?")
_INSERT = re.compile(r"^INSERT INTO (\S+) \(([^)]*)\) VALUES \(", re.DOTALL)
_SIZED_TEXT = re.compile(r"^((?:VAR)?CHAR)\(\d+\)$")
_ROWS = "_pi_rows"  # the alias of the unnested values
_ORDINAL = "_pi_n"  # their ordinal (1-based), returned by a merged UPDATE
_KEY_COLUMN = "_pi_k"  # a primary-key column returned by a merged INSERT (+ index)

# Comparisons a merged UPDATE may keep in its WHERE (evaluated on the row alone).
_COMPARISONS = {
    operators.eq,
    operators.ne,
    operators.lt,
    operators.le,
    operators.gt,
    operators.ge,
    operators.is_,
    operators.is_not,
    operators.is_distinct_from,
    operators.is_not_distinct_from,
    operators.add,
    operators.sub,
    operators.and_,
}


class MergedForm:
    """The set-based form of a statement: `sql` over arrays named as its parameters."""

    __slots__ = ("insert", "key", "names", "returning", "sql")

    def __init__(
        self,
        sql: str,
        names: tuple[str, ...],
        key: tuple[str, ...],
        *,
        insert: bool,
        returning: int,
    ) -> None:
        self.sql = sql
        self.names = names  # the parameters, one array each
        self.key = key  # the parameters that name the row a run writes
        self.insert = insert
        self.returning = returning  # columns the original statement returns

    @classmethod
    def of(
        cls, statement: ClauseElement, compiled: SQLCompiler, dialect: Dialect
    ) -> MergedForm | None:
        """The merged form of `statement` (compiled as `compiled`), or None if it has none."""
        try:
            if isinstance(statement, Insert):
                return _merged_insert(statement, compiled, dialect)
            if isinstance(statement, Update):
                return _merged_update(statement, compiled, dialect)
        except (CompileError, KeyError, TypeError):
            pass  # a type or shape this does not know: the statement runs as is
        return None

    def key_of(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(values[name] for name in self.key)

    def arrays(self, runs: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
        """The merged statement's parameters: one array per parameter, a run per index."""
        return {name: [values[name] for values in runs] for name in self.names}

    def outcomes(
        self, rows: Sequence[Sequence[Any]], runs: Sequence[Mapping[str, Any]]
    ) -> list[list[Sequence[Any]]]:
        """The rows the merged statement returned, per run (each row cut to the columns
        the original statement returns)."""
        per_run: list[list[Sequence[Any]]] = [[] for _ in runs]
        width = self.returning
        if self.insert:
            index = {self.key_of(values): n for n, values in enumerate(runs)}
            for row in rows:
                per_run[index[tuple(row[width:])]].append(row[:width])
        else:
            for row in rows:
                per_run[row[width] - 1].append(row[:width])
        return per_run


def _merged_insert(statement: Insert, compiled: SQLCompiler, dialect: Dialect) -> MergedForm | None:
    table = statement.table
    if not isinstance(table, Table) or not table.primary_key.columns:
        return None
    match = _INSERT.match(compiled.string)
    if match is None or statement._multi_values or statement.select is not None:
        return None
    target, columns_sql = match.groups()
    values_sql, tail = _closing(compiled.string[match.end() :])
    columns = [column.strip() for column in columns_sql.split(",")]
    values = [value.strip() for value in _split(values_sql)]
    if len(columns) != len(values):
        return None
    names: list[str] = []
    casts: list[str] = []
    for value in values:
        param = _PARAM.fullmatch(value)
        if param is None:
            return None  # an expression, not a parameter: not merged
        names.append(param.group(1))
        casts.append(_array_type(compiled, param.group(1), dialect))
    by_column = dict(zip(columns, names, strict=True))
    try:
        key = tuple(by_column[column.name] for column in table.primary_key.columns)
    except KeyError:
        return None
    tail, returning = _returning(tail)
    if "%(" in tail or "DO UPDATE" in tail:
        return None  # ON CONFLICT DO UPDATE: its SET would need the rows too
    unnest = ", ".join(f"%({n})b::{c}" for n, c in zip(names, casts, strict=True))
    keys = ", ".join(
        f"{target}.{column.name} AS {_KEY_COLUMN}{i}"
        for i, column in enumerate(table.primary_key.columns)
    )
    select = ", ".join(f"{_ROWS}.{column}" for column in columns)
    sql = (
        f"INSERT INTO {target} ({columns_sql}) SELECT {select} FROM unnest({unnest})"
        f" AS {_ROWS}({columns_sql}){tail} RETURNING {_join(returning, keys)}"
    )
    return MergedForm(sql, tuple(names), key, insert=True, returning=len(returning))


def _merged_update(statement: Update, compiled: SQLCompiler, dialect: Dialect) -> MergedForm | None:
    table = statement.table
    where = statement.whereclause
    if not isinstance(table, Table) or not table.primary_key.columns or where is None:
        return None
    parts = [where, *(statement._values or {}).values()]
    if not all(_on_the_row(part, table) for part in parts):
        return None
    fixed = _fixed_columns(where, table, compiled)
    try:
        key = tuple(fixed[column.name] for column in table.primary_key.columns)
    except KeyError:
        return None
    sql, returning_sql = _returning(compiled.string)
    if " WHERE " not in sql:
        return None
    names = sorted(set(_PARAM_NAMES.findall(sql)))
    head, _, condition = sql.partition(" WHERE ")
    unnest = ", ".join(f"%({n})b::{_array_type(compiled, n, dialect)}" for n in names)
    rows = f"{_ROWS}({', '.join(names)}, {_ORDINAL})"
    merged = (
        f"{_to_rows(head)} FROM unnest({unnest}) WITH ORDINALITY AS {rows}"
        f" WHERE {_to_rows(condition)} RETURNING {_join(returning_sql, f'{_ROWS}.{_ORDINAL}')}"
    )
    return MergedForm(merged, tuple(names), key, insert=False, returning=len(returning_sql))


_PARAM_NAMES = re.compile(r"%\((\w+)\)s")


def _to_rows(sql: str) -> str:
    # A run's parameter becomes the column of the unnested values it is in.
    return _PARAM_NAMES.sub(lambda m: f"{_ROWS}.{m.group(1)}", sql)


def _returning(sql: str) -> tuple[str, list[str]]:
    """The SQL before RETURNING, and the expressions it returns."""
    head, found, returned = sql.partition(" RETURNING ")
    return head, [column.strip() for column in _split(returned)] if found else []


def _join(columns: Sequence[str], extra: str) -> str:
    return ", ".join([*columns, extra])


def _closing(sql: str) -> tuple[str, str]:
    """`sql` up to the parenthesis that closes the one open before it, and what follows."""
    depth = 0
    for index, char in enumerate(sql):
        if char == "(":
            depth += 1
        elif char == ")":
            if depth == 0:
                return sql[:index], sql[index + 1 :]
            depth -= 1
    raise KeyError("unbalanced parentheses")


def _split(sql: str) -> list[str]:
    """Top-level comma-separated items (commas inside parentheses stay)."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in sql:
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        depth += char == "("
        depth -= char == ")"
        current.append(char)
    if current and "".join(current).strip():
        items.append("".join(current))
    return items


def _array_type(compiled: SQLCompiler, name: str, dialect: Dialect) -> str:
    type_ = compiled.binds[name].type
    sql = type_.dialect_impl(dialect).compile(dialect=dialect)
    # A sized VARCHAR cast would silently cut a longer value; the column checks its size.
    sql = _SIZED_TEXT.sub(r"\1", sql)
    return f"{sql}[]"


def _on_the_row(element: Any, table: Table) -> bool:
    """Whether `element` refers only to `table`'s columns and parameters (no subquery,
    no function): what a merged UPDATE can evaluate per row as one run would."""
    if isinstance(element, Column):
        return element.table is table
    if isinstance(element, BindParameter | Null):
        return True
    if isinstance(element, Grouping):
        return _on_the_row(element.element, table)
    if isinstance(element, BinaryExpression):
        return element.operator in _COMPARISONS and all(
            _on_the_row(side, table) for side in (element.left, element.right)
        )
    if isinstance(element, BooleanClauseList):
        return element.operator is operators.and_ and all(
            _on_the_row(clause, table) for clause in element.clauses
        )
    return False


def _fixed_columns(where: Any, table: Table, compiled: SQLCompiler) -> dict[str, str]:
    """Columns the WHERE sets equal to a parameter: {column name: parameter name}."""
    fixed: dict[str, str] = {}
    pending = [where]
    while pending:
        clause = pending.pop()
        if isinstance(clause, Grouping):
            pending.append(clause.element)
        elif isinstance(clause, BooleanClauseList) and clause.operator is operators.and_:
            pending.extend(clause.clauses)
        elif (
            isinstance(clause, BinaryExpression)
            and clause.operator is operators.eq
            and isinstance(clause.left, Column)
            and clause.left.table is table
            and isinstance(clause.right, BindParameter)
        ):
            fixed[clause.left.name] = compiled.bind_names[clause.right]
    return fixed
