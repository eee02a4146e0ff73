"""Commands that only read never write: they work while another process holds the database's
write lock (a send committing, an import), instead of waiting for it and failing on "locked"."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from conftest import Project


@contextmanager
def write_locked(project: Project) -> Iterator[None]:
    """Another connection holds SQLite's write lock (BEGIN IMMEDIATE, a write pending)."""
    holder = sqlite3.connect(project.db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO settings (key, value) VALUES ('held-by-test', '1')")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


def test_status_suppress_list_check_and_explain_work_while_another_process_writes(project: Project) -> None:
    assert project.send().exit_code == 0
    assert project.run("suppress", "add", "gone@client.example").exit_code == 0
    preview_folder = str(project.root / "preview")
    assert project.run("preview", str(project.campaign), "--out", preview_folder).exit_code == 0
    with write_locked(project):
        for args in (("status", str(project.campaign)), ("suppress", "list"),
                     ("suppress", "check", "gone@client.example"), ("explain", "claire@client.example"),
                     # a folder preview already recorded (for `forget`) costs no write
                     ("preview", str(project.campaign), "--out", preview_folder)):
            result = project.run(*args)
            assert result.exit_code == 0, f"mailer {' '.join(args)}: {result.output}"
            assert "database is locked" not in result.output
