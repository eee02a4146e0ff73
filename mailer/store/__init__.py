"""The database: one module per aggregate, behind one `Store`.

    tables.py        the tables (a change needs a migration)
    contacts.py      contacts and lists                       store.contacts
    suppressions.py  the suppression list                      store.suppressions
    sendlog.py       decisions and deliveries                  store.sendlog
    campaigns.py     campaigns, runs, the sending lease         store.campaigns
    people.py        one person across tables: explain, erase  store.people
    settings.py      the unsubscribe secret                    store.settings

SQLite (WAL) is the embedded default; PostgreSQL (psycopg 3) when a team shares one
database. Nobody outside this package writes SQL.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError
from sqlmodel import create_engine

from .. import owner_only
from ..errors import DatabaseMissing, StoreError
from ..states import DELIVERED_STATES, PENDING_STATES, SendState
from . import migrate
from .campaigns import Campaigns
from .contacts import Contacts, ImportResult, contact_from_row
from .people import People, erased_key
from .sendlog import DECIDABLE_STATES, LogWriter, SendLogRows
from .settings import Settings
from .sql import BUSY_TIMEOUT_MS
from .suppressions import Suppressions
from .tables import (
    CampaignRecord,
    Contact,
    ContactList,
    Erasure,
    Interaction,
    ListMember,
    Run,
    SendLog,
    Setting,
    Suppression,
    utcnow,
)

# The schema is alembic's: migrations/versions/, applied by migrate.upgrade when a Store opens.


_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pwd|sslpassword|passfile)=)[^&#]*", re.IGNORECASE)


def redacted(url: str) -> str:
    """A database url as it may be shown: its password, if any, as *** (also one given in the
    query, `?password=`). A url SQLAlchemy cannot read is redacted by pattern (whatever sits
    between `user:` and `@`)."""
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unreadable url is still shown, without its password
        shown = re.sub(r"(://[^/@:]*:).*@", r"\1***@", url)
    return _QUERY_SECRET.sub(r"\1***", shown)


def _secrets_in(url: str) -> list[str]:
    """The password of a url, in its authority or its query."""
    found = [m.group(0).split("=", 1)[1] for m in _QUERY_SECRET.finditer(url)]
    try:
        password = make_url(url).password
    except Exception:  # noqa: BLE001 - unreadable: the pattern above is all there is
        password = None
    return [s for s in [*found, str(password) if password else ""] if s]


def _open_hint(dialect: str) -> str:
    """What to check when a database does not open: a SQLite file's folder, a PostgreSQL server."""
    if dialect == "postgresql":
        return ("check that the PostgreSQL server is running and reachable at that host and port, and the user "
                "and password ([database] url and password_env in config.toml, or PGPASSWORD / ~/.pgpass)")
    return "check [database] url in config.toml and that its folder exists"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # The busy timeout first: switching to WAL takes a lock another process may hold (a second
    # process opening a new database while the first creates its tables was told "locked").
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def _without(exc: BaseException | None, url: str) -> str:
    """An error's text on one line, the url (SQLAlchemy quotes one it cannot parse) shown
    redacted, and the password itself (should a driver quote its connection string) as ***."""
    text = " ".join(str(exc).split()).replace(url, redacted(url))
    for secret in _secrets_in(url):
        text = text.replace(secret, "***")
    return text


def describe_failure(exc: BaseException, url: str) -> str:
    """One line on a database error met while working, for a person: which database (redacted) and
    what its driver said (first line only: no SQL, no parameters, no row values)."""
    original = getattr(exc, "orig", None) or exc
    said = (str(original).strip().splitlines() or [""])[0].split("[SQL:", 1)[0].strip()
    for secret in _secrets_in(url):
        said = said.replace(secret, "***")
    return f"the database {redacted(url)!r} failed: {type(original).__name__}: {said}"


class Store:
    """Everything mailer keeps. Open with `Store.open(url)`; each aggregate is an attribute."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.notes: list[str] = []  # what opening did that a person should hear of (a schema upgrade)
        self.contacts = Contacts(engine)
        self.suppressions = Suppressions(engine)
        self.sendlog = SendLogRows(engine)
        self.campaigns = Campaigns(engine)
        self.people = People(engine)
        self.settings = Settings(engine)
        self.created = False  # Store.open made a new database

    @classmethod
    def open(cls, url: str, *, create: bool = False) -> Store:
        """Open the database, its schema upgraded (older) to this code's: `notes` then says what
        was done ("Upgraded the database schema from 0001 to 0002."). A database that does not
        exist, or holds no table, is created only with `create` (`created` then says it was);
        else DatabaseMissing: a lost or mistyped database must not start an empty suppression list."""
        store = cls(cls._engine(url))
        try:
            # The file first, without connecting (which would make SQLite's -wal and -shm files
            # before their modes are checked); then, connected, whether any table is there.
            store.created = store._no_file()
            if not store.created:
                store.notes.extend(store._owner_only())
                store.created = store._no_table()
            if store.created and not create:
                raise DatabaseMissing(
                    f"there is no mailer database at {redacted(url)!r}",
                    hint="create it explicitly (open it with create=True); if it should exist, check [database] "
                         "url: a new database would start with an empty suppression list")
            if store.created:
                store.notes.extend(store._owner_only())
            store.notes.extend(store._check_schema_version())
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def attach(cls, url: str) -> Store:
        """The database another process of this run already opened (a render worker): no schema work."""
        return cls(cls._engine(url))

    @staticmethod
    def _engine(url: str) -> Engine:
        try:
            # Statement parameters hold addresses and names: never in an error's text.
            engine = create_engine(url, hide_parameters=True)
        except (SQLAlchemyError, ModuleNotFoundError, ValueError) as exc:
            raise StoreError(f"cannot use database {redacted(url)!r}: {_without(exc, url)}",
                             hint="check [database] url in config.toml") from None
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def _no_file(self) -> bool:
        """A SQLite database whose file does not exist (or is empty)."""
        database = self.engine.url.database
        if self.dialect == "sqlite" and database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database)
            return not path.exists() or path.stat().st_size == 0
        return False

    def _no_table(self) -> bool:
        """A database holding no table of any kind."""
        try:
            return not inspect(self.engine).get_table_names()
        except (OperationalError, ProgrammingError) as exc:
            url = self.engine.url.render_as_string(hide_password=False)
            raise StoreError(f"cannot open database {redacted(url)!r}: {_without(exc.orig, url)}",
                             hint=_open_hint(self.dialect)) from None

    def _owner_only(self) -> list[str]:
        """A new SQLite file is created 0600 before SQLite opens it (its -wal and -shm take its
        mode): it holds personal data, and the unsubscribe secret when the environment has none.
        Returns a warning for each of the three files that exists with a wider mode."""
        database = self.engine.url.database
        if self.dialect != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
            return []
        path = Path(database)
        owner_only.create_file(path)
        found = (owner_only.too_open(Path(f"{path}{suffix}")) for suffix in ("", "-wal", "-shm"))
        return [warning for warning in found if warning]

    def _check_schema_version(self) -> list[str]:
        """Run the migrations this database lacks (all of them when it is empty; a 0.1.0
        database is recognised); one at a revision this code does not know is refused."""
        try:
            before, after = self._upgrade_when_free()
        except (OperationalError, ProgrammingError) as exc:
            url = self.engine.url.render_as_string(hide_password=False)
            raise StoreError(f"cannot open database {redacted(url)!r}: {_without(exc.orig, url)}",
                             hint=_open_hint(self.dialect)) from None
        note = migrate.upgrade_note(before, after)
        return [note] if note else []

    def _upgrade_when_free(self, patience: float = 30.0) -> tuple[str | None, str]:
        """migrate.upgrade, again while SQLite says "locked": to avoid a deadlock it answers so at
        once, without waiting, to one of two processes opening a new database together."""
        deadline = time.monotonic() + patience
        while True:
            try:
                return migrate.upgrade(self.engine)
            except OperationalError as exc:
                if self.dialect != "sqlite" or "locked" not in str(exc.orig) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def scrub(self) -> None:
        """After an erasure: no copy of deleted rows may stay in the files.

        SQLite runs with secure_delete (freed content is zeroed); the WAL still holds
        older page images, so checkpoint it and truncate it to zero bytes.
        PostgreSQL: a VACUUM reclaims the dead tuples.
        """
        if self.dialect == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        elif self.dialect == "postgresql":
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM")

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()


__all__ = [
    "DECIDABLE_STATES", "DELIVERED_STATES", "PENDING_STATES", "CampaignRecord", "Contact", "ContactList",
    "Erasure", "ImportResult", "Interaction", "ListMember", "LogWriter", "Run", "SendLog", "SendState", "Setting",
    "Store", "Suppression", "contact_from_row", "erased_key", "redacted", "utcnow",
]
