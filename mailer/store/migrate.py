"""Schema migrations: bring a database to the schema of this code.

The revisions live in `migrations/versions/` (alembic); the configuration is built
here, so nothing but the package is needed at run time (no alembic.ini).

- An empty database is created by running every revision (not `create_all`).
- A database written by mailer 0.1.0 (its tables, no `alembic_version`,
  `settings.schema_version` "1") is stamped at the baseline, 0001, then upgraded.
- A database at a revision this code does not know (a newer mailer upgraded it) is
  refused: nothing is written.

Two processes opening the same database at once: the upgrade runs under a lock
(PostgreSQL: a transaction-level advisory lock; SQLite: BEGIN IMMEDIATE), in one
transaction, and each process looks at the revision again once it holds the lock,
so one upgrades and the other finds the work done. After an upgrade,
`settings.schema_version` holds the head revision: mailer 0.1.0 refuses such a
database instead of reading a schema it does not know.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import column, delete, insert, inspect, select, table, text
from sqlalchemy.engine import Connection, Engine

from ..errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().with_name("migrations")
VERSIONS = MIGRATIONS / "versions"

BASELINE = "0001"
"""The revision that is the schema of mailer 0.1.0, the last release before migrations."""

# The tables 0.1.0 created, and what it wrote in settings.schema_version.
RELEASE_0_1_0_TABLES = frozenset({"contacts", "lists", "list_members", "suppressions", "campaigns", "runs",
                                  "send_log", "interactions", "erasures", "settings"})
RELEASE_0_1_0_SCHEMA_VERSION = "1"

_ADVISORY_LOCK = 0x6D61696C6572  # "mailer": one key for every mailer process on the server
_settings = table("settings", column("key"), column("value"))


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """alembic's configuration, in code: the migrations folder of this package.

    `connection`: the migrations run on it, inside the caller's transaction (what
    `upgrade` does). `url`: for alembic's own commands (drafting a revision).
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def known_revisions() -> tuple[str, ...]:
    """Every revision, oldest first.

    Read from the file names (`NNNN_what.py`, revision NNNN, each revising the one
    before): opening a database at head, every command's case, then needs no alembic
    import, which costs more than the rest of opening. tests/test_migrations.py checks
    that the names and alembic's history agree.
    """
    found = sorted(m.group(1) for p in VERSIONS.glob("*.py") if (m := re.fullmatch(r"(\d{4})_\w+\.py", p.name)))
    if not found:  # pragma: no cover - the package ships its revisions
        raise StoreError(f"no schema migrations found in {VERSIONS}", hint="reinstall mailer")
    return tuple(found)


def head_revision() -> str:
    """The revision this code's tables correspond to."""
    return known_revisions()[-1]


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at: None when it holds no mailer tables yet,
    `BASELINE` for a database written by mailer 0.1.0 (before migrations existed).

    Raises StoreError when the database holds tables of mailer's names but is
    neither (not a mailer database, or a damaged one).
    """
    with engine.connect() as conn:
        return _current(conn)


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the database to `head_revision()`; returns (revision before, revision after).

    Before is None for a database that had no mailer tables (now created), and
    equals after when there was nothing to do (including when another process did
    it meanwhile). Raises StoreError for a database at a revision this code does not
    know, or one that is not a mailer database; nothing is written then.
    """
    head = head_revision()
    with engine.connect() as conn:  # without a lock: the usual case, nothing to do
        found = _current(conn)
    _refuse_unknown(engine, found)
    if found == head:
        return found, head
    with _locked(engine) as conn:
        found = _current(conn)  # again: another process may have upgraded it while we waited
        _refuse_unknown(engine, found)
        if found == head:
            return found, head
        from alembic import command

        config = alembic_config(connection=conn)
        if found is not None and _stamped(conn) is None:
            command.stamp(config, BASELINE)  # a 0.1.0 database: it has the baseline's tables already
        command.upgrade(config, "head")
        conn.execute(delete(_settings).where(_settings.c.key == "schema_version"))
        conn.execute(insert(_settings).values(key="schema_version", value=head))
    return found, head


def downgrade(engine: Engine, revision: str) -> tuple[str | None, str]:
    """Take the schema back to `revision` (the one an older mailer expects); returns (before, after).

    Under the same lock and in one transaction as `upgrade`. A revision's downgrade
    may have to fill in what the older schema requires (0002: an unknown collection
    date becomes the day the contact was recorded).
    """
    if revision not in known_revisions():
        raise StoreError(f"there is no schema revision {revision}",
                         hint=f"the revisions are {', '.join(known_revisions())}")
    from alembic import command

    with _locked(engine) as conn:
        found = _current(conn)
        _refuse_unknown(engine, found)
        if found is None:
            raise StoreError("the database has no mailer schema to take back", hint="open it with mailer first")
        config = alembic_config(connection=conn)
        if _stamped(conn) is None:
            command.stamp(config, BASELINE)
        command.downgrade(config, revision)
        version = RELEASE_0_1_0_SCHEMA_VERSION if revision == BASELINE else revision
        conn.execute(delete(_settings).where(_settings.c.key == "schema_version"))
        conn.execute(insert(_settings).values(key="schema_version", value=version))
    return found, revision


def upgrade_note(before: str | None, after: str) -> str | None:
    """The line a person reads after `upgrade` changed an existing database (None otherwise)."""
    if before is None or before == after:
        return None
    return f"Upgraded the database schema from {before} to {after}."


# --------------------------------------------------------------------------- internals

def _stamped(conn: Connection) -> str | None:
    """What alembic_version says (None: no such table, or empty)."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(versions) > 1:
        raise StoreError(f"the database's schema history names {len(versions)} revisions ({', '.join(versions)})",
                         hint="report this, with the database, to mailer's maintainers")
    return versions[0] if versions else None


def _current(conn: Connection) -> str | None:
    revision = _stamped(conn)
    if revision is not None:
        return revision
    names = set(inspect(conn).get_table_names())
    ours = names & RELEASE_0_1_0_TABLES
    if not ours:
        return None
    version = None
    if "settings" in ours:
        version = conn.execute(select(_settings.c.value).where(_settings.c.key == "schema_version")).scalar()
    # 0.1.0 wrote schema_version just after creating the tables: a process stopped in between left none.
    if ours == RELEASE_0_1_0_TABLES and version in (RELEASE_0_1_0_SCHEMA_VERSION, None):
        return BASELINE
    url = conn.engine.url.render_as_string(hide_password=True)
    if version is not None:
        problem = f"database {url!r} has schema version {version} and no migration history"
    else:
        problem = f"database {url!r} has tables named as mailer's ({', '.join(sorted(ours))}) but is not a mailer database"
    raise StoreError(problem, hint="use the mailer version that created it, or a new database")


def _refuse_unknown(engine: Engine, revision: str | None) -> None:
    if revision is not None and revision not in known_revisions():
        url = engine.url.render_as_string(hide_password=True)
        raise StoreError(
            f"database {url!r} is at schema revision {revision}, which this mailer does not know "
            f"(its newest is {head_revision()}): a newer mailer has upgraded it",
            hint="upgrade mailer to the version that last used this database")


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that only one process at a time gets; committed at the end."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            with _sqlite_immediate(conn):
                yield conn
            return
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})
            yield conn


@contextmanager
def _sqlite_immediate(conn: Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (the write lock at once: a second process waits on busy_timeout) with
    foreign keys off, as SQLite asks for rebuilding a table that others reference (and the
    pragma has no effect inside a transaction); the keys are checked before committing."""
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    saved = dbapi.isolation_level
    dbapi.isolation_level = None  # the driver begins nothing by itself
    try:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise StoreError(f"the schema upgrade would break {len(broken)} references between tables; "
                                 "nothing was changed", hint="report this, with the database, to mailer's maintainers")
        except BaseException:
            if dbapi.in_transaction:
                conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")
    finally:
        conn.rollback()  # SQLAlchemy's own idea of the transaction (nothing left to undo)
        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        conn.commit()
        dbapi.isolation_level = saved
