"""SQL shared by the aggregate modules: dialect-aware inserts and fast executemany.

Only `mailer.store` uses this module: nobody else writes SQL.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import bindparam, update

#: how long a SQLite connection waits for another writer's lock before "database is locked":
#: longer than any transaction of mailer's (an import commits every few thousand rows)
BUSY_TIMEOUT_MS = 30_000


class _DriverStatement:
    """A Core statement compiled once for a dialect, run with the driver's executemany.

    SQLAlchemy's per-row parameter handling (`construct_params`) cost more than
    SQLite's own work on the hot paths (claims and outcomes of the send log, gate
    decisions, contact upserts). Compiled once, each row only goes through the
    bind processors of its own columns (a datetime to SQLite text, for example)
    and the DBAPI cursor gets plain tuples (qmark) or dicts (pyformat).
    """

    def __init__(self, statement: Any, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        self.statement = statement  # keeps the cache key's object alive
        self.sql = compiled.string
        self.positional = compiled.positional
        names = list(compiled.positiontup or []) if compiled.positional else list(compiled.binds)
        # One function per statement turns a row dict into the driver's parameters: each
        # value through its column's bind processor; a literal of the statement (a WHERE
        # constant) when the row has no value for it.
        namespace: dict[str, Any] = {}
        values = []
        for index, name in enumerate(names):
            bind = compiled.binds[name]
            if bind.required or bind.callable:
                value = f"row[{name!r}]"
            else:
                namespace[f"d{index}"] = bind.value
                value = f"row.get({name!r}, d{index})"
            process = _last_value_kept(bind.type.dialect_impl(dialect).bind_processor(dialect))
            if process is not None:
                namespace[f"p{index}"] = process
                value = f"p{index}({value})"
            values.append(value if compiled.positional else f"{name!r}: {value}")
        body = f"({', '.join(values)},)" if compiled.positional else f"{{{', '.join(values)}}}"
        exec(f"def convert(row):\n    return {body}\n", namespace)  # noqa: S102 - our own column names only
        self.convert = namespace["convert"]

    def parameters(self, rows: Sequence[dict[str, Any]]) -> list[Any]:
        return list(map(self.convert, rows))


def _last_value_kept(process: Callable[[Any], Any] | None) -> Callable[[Any], Any] | None:
    """A bind processor that remembers its last value: the rows of one executemany mostly share
    their timestamps (one `now` per batch), and a datetime's processor is pure Python."""
    if process is None:
        return None
    last: list[Any] = [object(), None]

    def processed(value: Any) -> Any:
        if value is last[0]:
            return last[1]
        result = process(value)
        if type(value) in (datetime, date):  # immutable: safe to recognise by identity
            last[0], last[1] = value, result
        return result

    return processed


_DRIVER_STATEMENTS: dict[tuple[int, str], _DriverStatement] = {}


def execute_many(conn: Any, statement: Any, rows: Sequence[dict[str, Any]]) -> int:
    """`conn.execute(statement, rows)` for long-lived statements, without SQLAlchemy's per-row cost.

    Returns the rowcount summed over the rows (sqlite3 and psycopg both sum it).
    """
    if not rows:
        return 0
    key = (id(statement), conn.dialect.name)
    driver = _DRIVER_STATEMENTS.get(key)
    if driver is None or driver.statement is not statement:
        driver = _DRIVER_STATEMENTS[key] = _DriverStatement(statement, conn.dialect)
    return conn.exec_driver_sql(driver.sql, driver.parameters(rows)).rowcount


def advisory_lock_key(name: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit integer) named after what it guards."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def dialect_insert(dialect: str, table: Any) -> Any:
    """An INSERT with the dialect's ON CONFLICT clauses (PostgreSQL or SQLite)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    return insert(table)



def insert_ignore(dialect: str, table: Any) -> Any:
    """INSERT … ON CONFLICT DO NOTHING."""
    return dialect_insert(dialect, table).on_conflict_do_nothing()


_UPDATE_STATEMENTS: dict[tuple[str, tuple[str, ...]], Any] = {}


def update_by_id(conn: Any, table: Any, rows: Sequence[dict[str, Any]]) -> None:
    """UPDATE … WHERE id = ? as one executemany per set of columns.

    Statements are built once per (table, columns): on the send path this runs
    for every group commit, and building a statement costs more than running it.
    Changes to one id are merged first, later values winning: grouped by columns,
    a row's later change could otherwise run before its earlier one (a retry's
    success written, then its 4xx answer over it).
    """
    merged: dict[Any, dict[str, Any]] = {}
    for row in rows:
        merged.setdefault(row["id"], {}).update(row)
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in merged.values():
        columns = tuple(sorted(k for k in row if k != "id"))
        groups.setdefault(columns, []).append({"_id": row["id"], **{f"_{k}": row[k] for k in columns}})
    for columns, params in groups.items():
        statement = _UPDATE_STATEMENTS.get((table.name, columns))
        if statement is None:
            statement = update(table).where(table.c.id == bindparam("_id")).values(
                {k: bindparam(f"_{k}") for k in columns})
            _UPDATE_STATEMENTS[(table.name, columns)] = statement
        execute_many(conn, statement, params)
