"""Opt-outs the database could not take in time, kept in a local file until it can.

`mailer serve` answers a one-click POST with 200 only once the opt-out is durable:
in the database, or, when the database stays busy (a long import held SQLite's write
lock) or unreachable past the request's patience, appended here. The next command
that writes (a send, an import, `suppress add`…) and the server itself move the
entries to the suppression list; `mailer status` says how many wait.

One JSON line per opt-out: the signed unsubscribe token (campaign id, locale and the
keyed hash of the address — never the address), how it came (`one-click`, `link`),
the reason chosen on the page and when. The file is owner-only, each line is
fsync'd before the POST is answered, and every access holds an exclusive `flock`
(briefly: the database is written without it). A file replaced under a writer (by
`forget`, below) is noticed by its inode and opened again.
"""
from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .errors import SpoolUnreadable
from .owner_only import FILE_MODE

FORMAT = 1


@dataclass(frozen=True)
class SpooledOptOut:
    token: str
    origin: str   # "one-click" | "link"
    reason: str
    at: datetime  # when the person asked (kept as the suppression's date)

    def line(self) -> bytes:
        return json.dumps({"v": FORMAT, "token": self.token, "origin": self.origin, "reason": self.reason,
                           "at": self.at.isoformat()}, separators=(",", ":")).encode("ascii") + b"\n"

    @classmethod
    def parse(cls, line: bytes) -> SpooledOptOut | None:
        """The entry a line holds, or None for a line that is not one (cut short by a crash)."""
        try:
            data = json.loads(line)
            at = datetime.fromisoformat(data["at"])
            entry = cls(str(data["token"]), str(data["origin"]), str(data.get("reason", "")),
                        at if at.tzinfo else at.replace(tzinfo=UTC))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None  # RecursionError: a line of "[[[[…" must not stop every command
        return entry if data.get("v") == FORMAT else None


class OptOutSpool:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, entry: SpooledOptOut) -> None:
        """Add one opt-out, on disk (file and folder fsync'd) when this returns. Raises OSError."""
        self.append_many([entry])

    def append_many(self, entries: list[SpooledOptOut]) -> None:
        """Add opt-outs with one write and one fsync (many people unsubscribing at once while the
        database is busy: an fsync each, one after the other, made the last wait seconds)."""
        created = not self.path.exists()
        with self._locked(create=True) as descriptor:
            assert descriptor is not None
            size = os.fstat(descriptor).st_size
            if size and os.pread(descriptor, 1, size - 1) != b"\n":
                os.write(descriptor, b"\n")  # a line a crash cut short stays on its own
            os.write(descriptor, b"".join(entry.line() for entry in entries))
            os.fsync(descriptor)
        if created:
            _sync_folder(self.path.parent)

    def pending(self) -> int:
        """How many opt-outs wait (0 when there is no file)."""
        return len(self._read()[0])

    def entries(self) -> list[SpooledOptOut]:
        return [entry for entry, _ in self._read()[0]]

    def drain(self, apply: Callable[[list[SpooledOptOut]], list[SpooledOptOut]]) -> int:
        """Give the waiting entries to `apply`, which writes them to the database (idempotently)
        and returns those it took; these are then removed from the file, and lines that hold no
        entry are moved to `aside_path`. Entries appended meanwhile, or not taken, stay. If `apply` raises, nothing
        is removed. Returns how many entries were taken."""
        found, unreadable = self._read()
        if not found and not unreadable:
            return 0
        taken = set(apply([entry for entry, _ in found]) if found else [])
        if unreadable:  # they may still hold a person's signed token: kept aside, never deleted
            self._set_aside(sorted(unreadable))
        self._forget({line for entry, line in found if entry in taken} | unreadable)
        return len(taken)

    @property
    def aside_path(self) -> Path:
        """Where lines that hold no entry go (another format's, damaged ones), for the operator."""
        return self.path.with_name(self.path.name + ".unreadable")

    def _set_aside(self, lines: list[bytes]) -> None:
        descriptor = os.open(self.aside_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        try:
            os.write(descriptor, b"".join(lines))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    # ------------------------------------------------------------------ the file

    def _read(self) -> tuple[list[tuple[SpooledOptOut, bytes]], set[bytes]]:
        """(entries with their lines, lines that are no entry). SpoolUnreadable (an OSError) when
        the file exists but cannot be read."""
        try:
            with self._locked(create=False) as descriptor:
                if descriptor is None:
                    return [], set()
                data = _read_all(descriptor)
        except OSError as exc:
            raise SpoolUnreadable(
                f"the opt-out spool {self.path} cannot be read ({exc.strerror or type(exc).__name__})",
                hint="it holds opt-outs `mailer serve` could not record yet: do not delete it; make it a "
                     "file its owner can read and write again, then rerun") from None
        found, unreadable = [], set()
        for line in data.splitlines(keepends=True):
            entry = SpooledOptOut.parse(line) if line.endswith(b"\n") else None
            if entry is not None:
                found.append((entry, line))
            elif line.strip() and line.endswith(b"\n"):
                unreadable.add(line)  # a partial last line may still be being written: left alone
        return found, unreadable

    def _forget(self, lines: set[bytes]) -> None:
        """Remove these lines (whoever applied them), keeping the others, in place or by rename."""
        with self._locked(create=False) as descriptor:
            if descriptor is None:
                return
            kept = [line for line in _read_all(descriptor).splitlines(keepends=True) if line not in lines]
            if not kept:
                os.unlink(self.path)
            else:
                fresh = self.path.with_name(self.path.name + ".new")
                fresh.unlink(missing_ok=True)  # a crash's leftover, or a symlink: never written through
                out = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
                try:
                    os.write(out, b"".join(kept))
                    os.fsync(out)
                finally:
                    os.close(out)
                os.replace(fresh, self.path)
        _sync_folder(self.path.parent)

    @contextmanager
    def _locked(self, *, create: bool) -> Iterator[int | None]:
        """The spool file's descriptor, held under an exclusive lock; None when there is no file
        (and not `create`). Opened again when another process replaced or removed the file
        while this one waited for the lock."""
        while True:
            flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
            try:
                descriptor = os.open(self.path, flags, FILE_MODE)
            except FileNotFoundError:
                if create:
                    raise
                yield None
                return
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
                try:
                    current = os.stat(self.path).st_ino
                except FileNotFoundError:
                    current = None
                if current != os.fstat(descriptor).st_ino:
                    continue  # replaced or removed meanwhile: the `finally` closes it
                yield descriptor
                return
            finally:
                os.close(descriptor)  # closing releases the lock


def _read_all(descriptor: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(descriptor, 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _sync_folder(folder: Path) -> None:
    """Make a file's creation, rename or removal durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def spool_path(database_url: str, config_path: Path) -> Path:
    """Beside the SQLite database file; for another database, beside config.toml."""
    prefix = "sqlite:///"
    if database_url.startswith(prefix) and ":memory:" not in database_url and "?" not in database_url:
        database = Path(database_url[len(prefix):])
        if database.name:
            return database.with_name(database.name + ".optout-spool")
    return config_path.parent / "mailer.optout-spool"
