"""Database trouble is said in one sentence naming the database and what to do, exit 1, and never
with SQL or its parameters (they hold addresses and names) (issue 13)."""
from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SECRET, Project


def assert_one_clean_sentence(output: str) -> None:
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, output
    for leak in ("[SQL", "SELECT", "UPDATE", "INSERT", "parameters", "@client.example", "Traceback"):
        assert leak not in output, (leak, output)


def test_a_database_locked_past_the_busy_timeout_is_named_with_what_to_do(project: Project) -> None:
    project.write("config.toml", project.base_config.replace('url = "sqlite:///mailer.db"',
                                                             'url = "sqlite:///mailer.db"\nbusy_timeout_seconds = 0.2'))
    other = sqlite3.connect(project.db, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        result = project.send()
    finally:
        other.close()
    assert result.exit_code == 1, result.output
    assert (f"Error: the database file {project.db} is locked by another program and stayed locked past the busy "
            "timeout: wait for that program to finish or stop it") in result.output, result.output
    assert_one_clean_sentence(result.output)
    assert project.messages() == []


@pytest.mark.parametrize("damage", ["garbage", "torn pages"])
def test_a_file_that_is_not_a_mailer_database_or_is_damaged_is_named_with_what_to_do(
        project: Project, damage: str) -> None:
    assert project.send("--limit", "1").exit_code == 0
    if damage == "garbage":
        project.db.write_bytes(b"not a database, whatever its name says\n" * 200)
        for suffix in ("-wal", "-shm"):
            Path(f"{project.db}{suffix}").unlink(missing_ok=True)
        expected = "is not a mailer database, or is damaged beyond reading: restore it from a backup"
    else:
        with sqlite3.connect(project.db) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with project.db.open("r+b") as handle:  # page 1 (the schema) stays; every other page is noise
            handle.seek(4096)
            handle.write(os.urandom(project.db.stat().st_size - 4096))
        expected = "is damaged (SQLite found its content malformed): restore it from a backup"
    result = project.send()
    assert result.exit_code == 1, result.output
    assert f"Error: the database file {project.db} {expected}" in result.output, result.output
    assert_one_clean_sentence(result.output)
    assert len(project.messages()) == 1


def test_a_full_disk_is_named_with_what_to_do(project: Project, tmp_path: Path) -> None:
    """A real full disk: a small tmpfs, mounted in a mount namespace of the mailer process alone."""
    assert shutil.which("unshare"), "needs unshare (util-linux, installed with Debian) to mount a small tmpfs"
    source = tmp_path.parent / f"{tmp_path.name}-source"
    shutil.copytree(project.root, source)
    rows = "".join(f"p{i}@c{i}.example,P{i},L{i},C{i},CTO,software,b2b,Salon VivaTech 2026,2026-06-01\n"
                   for i in range(300))
    (source / "contacts.csv").write_text((source / "contacts.csv").read_text() + rows, encoding="utf-8")
    used = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    size_kb = used // 1024 + 48
    script = ('mount -t tmpfs -o size="$SIZE"k tmpfs "$TARGET" || exit 97; cp -a "$SOURCE"/. "$TARGET"/ || exit 98; '
              'exec "$PYTHON" -m mailer --config "$TARGET/config.toml" send "$TARGET/campaigns/offer.toml" --yes')
    env = dict(os.environ, SIZE=str(size_kb), TARGET=str(project.root), SOURCE=str(source), PYTHON=sys.executable,
               MAILER_SECRET=SECRET, MAILER_CONFIG="", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode not in (97, 98) and "unshare:" not in done.stderr, \
        f"cannot mount a small tmpfs here (user namespaces needed): {done.stderr.strip()}"
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert (f"Error: the disk holding the database file {project.db} is full: free space on it") in output, output
    assert_one_clean_sentence(output)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_postgresql_is_named_without_its_password(project: Project) -> None:
    port = closed_port()
    url = f"postgresql+psycopg://mailer:S3cret-pw@127.0.0.1:{port}/mailer"
    project.write("config.toml", project.base_config.replace('url = "sqlite:///mailer.db"', f'url = "{url}"'))
    result = project.send()
    assert result.exit_code == 1, result.output
    assert (f"Error: PostgreSQL at 127.0.0.1:{port} is unreachable (Connection refused), so the database 'mailer' "
            "cannot be used: start the server or check host and port in [database] url") in result.output, result.output
    assert "S3cret-pw" not in result.output
    assert_one_clean_sentence(result.output)
