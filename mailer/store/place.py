"""Whether a SQLite database is still the file at its path.

An open SQLite connection keeps writing into its file after the file was deleted or
replaced (a restore, a `mailer db init` elsewhere, a cleanup script): a run would go on
recording deliveries nobody will ever read, and the next run, on the file now at that
path, would not know them. The delivery engine compares the file at the path with the
one opened (device and inode, one stat per file) at each of its commits.
"""
from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import owner_only


def _identity(path: str) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


@dataclass
class DatabaseFile:
    """A SQLite database file as opened: its path and which file it was."""

    path: Path
    identity: tuple[int, int]
    #: the -wal file's identity, once a connection that keeps it open exists (`watch_wal`)
    wal: tuple[int, int] | None = None
    #: what happened to the file when it was found gone ("removed", "replaced"), else ""
    lost: str = field(default="")

    def __post_init__(self) -> None:
        self._main, self._wal = str(self.path), f"{self.path}-wal"  # checked at every commit: no Path work

    @classmethod
    def opened(cls, database: str) -> DatabaseFile | None:
        """The file a SQLite url's database names, None for anything else (memory, a file: uri)."""
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        path = Path(database).absolute()
        identity = _identity(str(path))
        return cls(path, identity) if identity is not None else None

    def watch_wal(self) -> None:
        """Also watch the -wal file: while a connection is open SQLite keeps it, so another one
        there later is not ours (the run's writes would go where no other program reads)."""
        if self.wal is None:
            self.wal = _identity(self._wal)

    def change(self) -> str:
        """"" while the files at the path are still the ones opened; else "removed" or "replaced"."""
        now = _identity(self._main)
        if now is None:
            return "removed"
        if now != self.identity:
            return "replaced"
        if self.wal is not None:
            wal = _identity(self._wal)
            if wal is None:
                return "removed"
            if wal != self.wal:
                return "replaced"
        return ""

    def rescue(self, dbapi_connection: Any) -> Path | None:
        """Copy the database as `dbapi_connection` (still open on the lost file) sees it to a new
        owner-only file beside the path: every delivery recorded until now is kept there.
        None when that cannot be done (the folder went too, the disk is full)."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.rescued-{stamp}")
        if not isinstance(dbapi_connection, sqlite3.Connection) or target.exists():
            return None
        try:
            owner_only.create_file(target)
            copy = sqlite3.connect(target)
            try:
                dbapi_connection.backup(copy)
            finally:
                copy.close()
        except (OSError, sqlite3.Error):
            target.unlink(missing_ok=True)
            return None
        return target
