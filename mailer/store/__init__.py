"""The database: one module per aggregate, behind one `Store`.

    tables.py        the tables (a change needs a migration)
    contacts.py      contacts and lists                       store.contacts
    suppressions.py  the suppression list                      store.suppressions
    complaints.py    spam complaints (ARF reports)              store.complaints
    sendlog.py       decisions and deliveries                  store.sendlog
    campaigns.py     campaigns, runs, the sending lease         store.campaigns
    people.py        one person across tables: explain, erase  store.people
    settings.py      the unsubscribe secret                    store.settings

SQLite (WAL) is the embedded default; PostgreSQL (psycopg 3) when a team shares one
database. Nobody outside this package writes SQL.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlmodel import create_engine

from .. import owner_only
from ..errors import DatabaseGone, DatabaseMissing, StoreError
from ..states import DELIVERED_STATES, PENDING_STATES, SendState
from . import migrate
from .campaigns import Campaigns
from .complaints import Complaints
from .contacts import Contacts, ImportResult, contact_from_row
from .failures import database_failure, describe_failure, redacted, without_secrets
from .people import People, erased_key
from .place import DatabaseFile
from .reconnect import NEVER, Reconnect
from .sendlog import DECIDABLE_STATES, LogWriter, SendLogRows
from .settings import Settings
from .suppressions import Suppressions
from .tables import (
    CampaignRecord,
    Complaint,
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


def _sqlite_pragmas(busy_timeout: float) -> Callable[[Any, Any], None]:
    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # The busy timeout first: switching to WAL takes a lock another process may hold (a second
        # process opening a new database while the first creates its tables was told "locked").
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()
    return pragmas


def _sqlite_file(database: str | None) -> Path | None:
    """The file a SQLite url names (None: in memory, or a file: uri mailer leaves as given)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


class Store:
    """Everything mailer keeps. Open with `Store.open(url)`; each aggregate is an attribute."""

    def __init__(self, engine: Engine, reconnect: Reconnect = NEVER) -> None:
        self.engine = engine
        self.reconnect = reconnect
        self.notes: list[str] = []  # what opening did that a person should hear of (a schema upgrade)
        self.contacts = Contacts(engine, reconnect)
        self.suppressions = Suppressions(engine)
        self.complaints = Complaints(engine)
        self.sendlog = SendLogRows(engine, reconnect)
        self.campaigns = Campaigns(engine, reconnect)
        self.people = People(engine)
        self.settings = Settings(engine)
        self.created = False  # Store.open made a new database
        #: the SQLite file as opened, to notice it removed or replaced while working
        self.place: DatabaseFile | None = None

    @classmethod
    def open(cls, url: str, *, create: bool = False, busy_timeout: float = 30.0,
             reconnect_seconds: float = 30.0) -> Store:
        """Open the database, its schema upgraded (older) to this code's: `notes` then says what
        was done ("Upgraded the database schema from 0001 to 0002."). A database that does not
        exist, or holds no table, is created only with `create` (`created` then says it was);
        else DatabaseMissing: a lost or mistyped database must not start an empty suppression list.

        A SQLite write waits `busy_timeout` seconds for another program's lock; PostgreSQL work
        that loses its connection is retried on a new one for `reconnect_seconds`. Any other
        database trouble is a StoreError saying what happened and what to do."""
        may_create = [create]
        store = cls(cls._engine(url, busy_timeout, may_create), Reconnect(reconnect_seconds))
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
        except SQLAlchemyError as exc:
            store.close()
            raise database_failure(exc, url) from None
        except BaseException:
            store.close()
            raise
        # From now on a connection never creates the file: one removed meanwhile is an error, not a new database.
        may_create[0] = False
        store.place = DatabaseFile.opened(store.engine.url.database or "") if store.dialect == "sqlite" else None
        store.sendlog.place = store.place
        return store

    @classmethod
    def attach(cls, url: str, *, busy_timeout: float = 30.0, reconnect_seconds: float = 30.0) -> Store:
        """The database another process of this run already opened (a render worker): no schema work."""
        return cls(cls._engine(url, busy_timeout, [False]), Reconnect(reconnect_seconds))

    @property
    def lost(self) -> str:
        """"removed" or "replaced" once a run found its SQLite file so; "" otherwise."""
        return self.place.lost if self.place is not None else ""

    def verify_in_place(self, stage: str) -> None:
        """Raise DatabaseGone when the SQLite file (or its -wal) at the path is no longer the one
        opened: what was written since went to a file nobody will read. A copy of it is kept
        beside the path (from a pooled connection still open on it), as a send's log is."""
        if self.place is None or self.place.lost:
            return
        change = self.place.change()
        if not change:
            return
        self.place.lost = change
        rescued = None
        try:
            raw = self.engine.raw_connection()
            try:
                rescued = self.place.rescue(raw.driver_connection)
            finally:
                raw.invalidate()
        except Exception:  # noqa: BLE001 - no connection on the lost file is left: no copy
            rescued = None
        path = self.place.path
        if rescued is not None:
            raise DatabaseGone(
                f"the database file {path} was {change} while {stage}, so nothing was sent; what this run "
                f"recorded (imported contacts, decisions, opt-outs taken from the spool) was saved to {rescued}: "
                f"check it, put it back in place (mv {rescued} {path}) and rerun the same command",
                rescued=str(rescued))
        raise DatabaseGone(
            f"the database file {path} was {change} while {stage}, so nothing was sent, and what this run "
            "recorded there (imported contacts, decisions, opt-outs taken from the spool) could not be copied: "
            "restore the database from a backup, then rerun the same command")

    @staticmethod
    def _engine(url: str, busy_timeout: float = 30.0, may_create: list[bool] | None = None) -> Engine:
        """The engine of a url. With `may_create`, a SQLite connection makes a missing database file
        only while may_create[0] is true (without it, as SQLite does, always)."""
        try:
            # Statement parameters hold addresses and names: never in an error's text. A pooled
            # PostgreSQL connection is tested before use: after a server restart it is dead.
            engine = create_engine(url, hide_parameters=True,
                                   pool_pre_ping=url.startswith("postgresql"))
        except (SQLAlchemyError, ModuleNotFoundError, ValueError) as exc:
            raise StoreError(f"cannot use database {redacted(url)!r}: {without_secrets(exc, url)}",
                             hint="check [database] url in config.toml") from None
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas(busy_timeout))
            path = _sqlite_file(engine.url.database)
            if path is not None and may_create is not None:
                allowed = may_create

                def existing_only(_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
                    """SQLite creates a missing file on connect: only while creating is allowed."""
                    if not allowed[0] and cargs:
                        cargs[0] = f"file:{quote(str(path.absolute()))}?mode=rw"
                        cparams["uri"] = True

                event.listen(engine, "do_connect", existing_only)
        return engine

    def _no_file(self) -> bool:
        """A SQLite database whose file does not exist (or is empty)."""
        path = _sqlite_file(self.engine.url.database) if self.dialect == "sqlite" else None
        if path is not None:
            return not path.exists() or path.stat().st_size == 0
        return False

    def _no_table(self) -> bool:
        """A database holding no table of any kind."""
        return not inspect(self.engine).get_table_names()

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
        before, after = self._upgrade_when_free()
        # Of processes creating one database together, only the one that ran the migrations created it.
        self.created = self.created and before is None
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
    "DECIDABLE_STATES", "DELIVERED_STATES", "PENDING_STATES", "CampaignRecord", "Complaint", "Contact", "ContactList",
    "Erasure", "ImportResult", "Interaction", "ListMember", "LogWriter", "Run", "SendLog", "SendState", "Setting",
    "Store", "Suppression", "contact_from_row", "database_failure", "describe_failure", "erased_key", "redacted",
    "utcnow",
]
