"""Issue 13: an opt-out is never lost while the database is busy (a long import) or away.

A real `mailer serve` process, a real second writer holding the database's lock (SQLite's
write lock, or PostgreSQL's ACCESS EXCLUSIVE lock on the suppression list), real imports.
"""
from __future__ import annotations

import logging
import os
import re
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy
from conftest import HEADER, SECRET, Project, counts
from test_unsubscribe_server import MailerServe, unsubscribe_urls
from web_server import UnsubscribeServer

from mailer import open_workspace
from mailer.optouts import OPTOUT_PATIENCE

BOTH_DATABASES = True


class Lock:
    """Another writer holding the database: SQLite's write lock (BEGIN IMMEDIATE), or on
    PostgreSQL an ACCESS EXCLUSIVE lock on `table`, until `release`."""

    def __init__(self, project: Project, table: str = "suppressions") -> None:
        self.project = project
        if project.is_postgres:
            self.engine = sqlalchemy.create_engine(project.database_url, poolclass=sqlalchemy.pool.NullPool)
            self.conn = self.engine.connect()
            self.conn.exec_driver_sql(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        else:
            self.sqlite = sqlite3.connect(project.db, isolation_level=None, check_same_thread=False)
            self.sqlite.execute("BEGIN IMMEDIATE")
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.project.is_postgres:
            self.conn.rollback()
            self.conn.close()
            self.engine.dispose()
        else:
            self.sqlite.execute("ROLLBACK")
            self.sqlite.close()


@contextmanager
def locked(project: Project, table: str = "suppressions", seconds: float | None = None) -> Iterator[Lock]:
    """The database locked for the block, or only for its first `seconds`."""
    lock = Lock(project, table)
    timer = threading.Timer(seconds, lock.release) if seconds is not None else None
    if timer is not None:
        timer.start()
    try:
        yield lock
    finally:
        if timer is not None:
            timer.join()
        lock.release()


def spool_file(project: Project) -> Path:
    """Where the spool is: beside the SQLite file, or beside config.toml for PostgreSQL."""
    workspace = open_workspace(project.config, {"MAILER_SECRET": SECRET})  # keeps the secret's fingerprint
    workspace.close()
    return project.root / ("mailer.optout-spool" if project.is_postgres else "mailer.db.optout-spool")


def post(url: str) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = httpx.post(url, data={"List-Unsubscribe": "One-Click"}, timeout=20)
    return response, time.monotonic() - start


def test_an_opt_out_while_the_database_stays_locked_is_spooled_then_recorded_by_the_next_send(
        project: Project) -> None:
    assert project.send().exit_code == 0
    spool = spool_file(project)
    lock = None
    try:
        with MailerServe(project) as server:
            url = unsubscribe_urls(project)["claire@client.example"].replace("https://mail.acme.fr", server.base)
            lock = Lock(project)
            response, waited = post(url)
            print(f"one-click POST against a locked database: answered {response.status_code} after {waited:.2f} s")
            assert response.status_code == 200
            assert "Acme SAS ne vous enverra plus de messages" in response.text
            assert OPTOUT_PATIENCE - 0.5 <= waited < OPTOUT_PATIENCE + 3
            assert spool.exists() and stat.S_IMODE(os.stat(spool).st_mode) == 0o600
            kept = spool.read_text()
            assert kept.count("\n") == 1 and "claire" not in kept and "client.example" not in kept
            if not project.is_postgres:  # a read does not wait for SQLite's writer (on PostgreSQL the lock blocks it)
                status = project.run("status", "2026-12-cloud-audit")
                assert status.exit_code == 0 and "Opt-outs waiting to be recorded: 1" in status.output
        # the server stops before the lock goes, so that the next command is the one to record it
    finally:
        if lock is not None:
            lock.release()
    assert project.sql("select count(*) from suppressions") == [(0,)]
    status = project.run("status", "2026-12-cloud-audit")
    assert "Opt-outs waiting to be recorded: 1" in status.output

    log = server.output
    assert "Traceback" not in log and "claire" not in log
    assert [line for line in log.splitlines() if "spool" in line and "opt-out" in line][0]
    assert "POST /u/… 200" in log

    project.campaign.write_text(project.campaign.read_text().replace("2026-12-cloud-audit", "2027-01-next"))
    before = len(project.messages())
    result = project.send()
    assert result.exit_code == 0, result.output
    assert counts(result.output)["suppressed"] == 1 and counts(result.output)["sent"] == 1
    assert "recorded 1 opt-outs that waited" in result.output
    assert len(project.messages()) == before + 1
    assert b"claire@client.example" not in project.messages()[-1]
    assert project.sql("select scope, origin, campaign_id from suppressions") == [
        ("address", "one-click", "2026-12-cloud-audit")]
    assert not spool.exists()
    assert "Opt-outs waiting" not in project.run("status", "2026-12-cloud-audit").output


def test_an_opt_out_while_the_database_is_locked_briefly_is_written_directly(
        project: Project, caplog: pytest.LogCaptureFixture) -> None:
    """Shorter than the server's patience: it waits, and the suppression list gets it (no spool)."""
    assert project.send().exit_code == 0
    spool = spool_file(project)
    with open_workspace(project.config, {"MAILER_SECRET": SECRET}) as workspace, \
            UnsubscribeServer(workspace) as server:
        url = unsubscribe_urls(project)["paul@telco.example"].replace("https://mail.acme.fr", server.url)
        with locked(project, seconds=1.0):
            response, waited = post(url)
    print(f"one-click POST against a database locked for 1 s: answered {response.status_code} after {waited:.2f} s")
    assert response.status_code == 200
    assert 0.8 <= waited < OPTOUT_PATIENCE
    assert project.sql("select origin, campaign_id from suppressions") == [("one-click", "2026-12-cloud-audit")]
    assert not spool.exists()
    assert not [r for r in caplog.records if r.name == "mailer.server" and r.levelno >= logging.WARNING]


@pytest.mark.databases("postgresql")
def test_an_opt_out_while_postgresql_refuses_connections_briefly_is_written_once_it_is_back(
        project: Project, caplog: pytest.LogCaptureFixture) -> None:
    """The database away for a moment (its connections cut, new ones refused): retried, not a 500."""
    assert project.send().exit_code == 0
    name = sqlalchemy.engine.make_url(project.database_url).database
    admin = sqlalchemy.create_engine(os.environ["MAILER_TEST_POSTGRES_URL"], isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)

    def allow(connections: bool) -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(connections).lower()}')
            if not connections:
                conn.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")

    with open_workspace(project.config, {"MAILER_SECRET": SECRET}) as workspace, \
            UnsubscribeServer(workspace) as server:
        url = unsubscribe_urls(project)["paul@telco.example"].replace("https://mail.acme.fr", server.url)
        assert httpx.get(url).status_code == 200  # the server holds a pooled connection now
        allow(False)
        timer = threading.Timer(1.0, allow, [True])
        timer.start()
        try:
            response, waited = post(url)
        finally:
            timer.join()
            allow(True)
    admin.dispose()
    print(f"one-click POST while PostgreSQL refused connections for 1 s: {response.status_code} after {waited:.2f} s")
    assert response.status_code == 200
    assert project.sql("select origin from suppressions") == [("one-click",)]
    assert not [r for r in caplog.records if r.name == "mailer.server" and r.levelno >= logging.WARNING]


def write_contacts(path: Path, rows: int, bad_line: int | None = None) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write(HEADER)
        for i in range(rows):
            kind = "bx" if bad_line is not None and i + 2 == bad_line else "b2b"
            out.write(f"person{i}@company{i % 97}.example,First{i},Last{i},Company {i % 97},CTO,software,{kind},"
                      "Salon VivaTech 2026,2026-06-01\n")


def mailer_process(project: Project, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mailer", "--config", str(project.config), *args],
                            env=dict(os.environ, MAILER_SECRET=SECRET, MAILER_CONFIG=""),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_suppress_add_succeeds_while_a_long_import_runs(project: Project) -> None:
    rows = 8_000
    big = project.root / "big.csv"
    write_contacts(big, rows)
    start = time.monotonic()
    importing = mailer_process(project, "contacts", "import", str(big), "--list", "big")
    while importing.poll() is None and project.sql("select count(*) from contacts") == [(0,)]:
        time.sleep(0.05)  # until the import's first batch is in
    began = time.monotonic()
    added = project.run("suppress", "add", "jeanne@client.example", "--reason", "asked by phone")
    took = time.monotonic() - began
    [(imported_by_then,)] = project.sql("select count(*) from contacts")
    output, _ = importing.communicate(timeout=120)
    elapsed = time.monotonic() - start
    print(f"import of {rows} rows: {elapsed:.1f} s; `suppress add` during it: {took:.2f} s, when {imported_by_then} "
          "rows were in")
    assert importing.returncode == 0, output
    assert f"{rows} new" in output
    assert added.exit_code == 0 and "1 added" in added.output, added.output
    assert imported_by_then < rows, "suppress add only got in after the import"
    assert took < 5
    assert project.sql("select count(*) from contacts") == [(rows,)]
    assert project.sql("select count(*) from suppressions") == [(1,)]


def test_an_import_with_one_bad_row_writes_nothing_and_touches_no_lock(project: Project) -> None:
    """The whole file is validated before the first write: a bad row near the end (past several
    batches) leaves the database as it was, and the import does not even wait for another writer."""
    bad = project.root / "bad.csv"
    write_contacts(bad, 6_000, bad_line=5_999)
    spool_file(project)  # a first opening keeps the secret's fingerprint (a write) before the lock is taken
    with locked(project, table="lists") as lock:
        start = time.monotonic()
        importing = mailer_process(project, "contacts", "import", str(bad), "--list", "big")
        try:
            output, _ = importing.communicate(timeout=40)  # done with the lock still held: it never waited
        except subprocess.TimeoutExpired:
            importing.kill()
            output, _ = importing.communicate()
        took = time.monotonic() - start
        lock.release()
    print(f"import of 6000 rows with a bad one at line 5999, the database locked: exit {importing.returncode} "
          f"after {took:.1f} s")
    assert importing.returncode == 2, output
    assert "bad.csv:5999: kind 'bx' must be 'b2b' or 'b2c'" in output
    assert "nothing was imported" in output and "--skip-invalid" in output
    assert project.sql("select count(*) from contacts") == [(0,)]
    assert project.sql("select count(*) from lists") == [(0,)]
    skipped = project.run("contacts", "import", str(bad), "--list", "big", "--skip-invalid")
    assert skipped.exit_code == 0 and "5999 new" in skipped.output
    assert project.sql("select count(*) from contacts") == [(5_999,)]


def test_an_opt_out_spooled_while_a_campaign_runs_stops_its_message(project: Project) -> None:
    """Spooled after the plan (here: while the send asks for confirmation): the delivery engine
    records the spool before it claims messages, and the claim stops that address's message."""
    from mailer import send_campaign
    from mailer.spool import SpooledOptOut
    from mailer.store import utcnow

    with open_workspace(project.config, {"MAILER_SECRET": SECRET}) as workspace:
        def spool_claire(plan: object, to_send: int) -> bool:
            token = workspace.unsubscribe_token("2026-12-cloud-audit", "claire@client.example", "fr")
            workspace.spool.append(SpooledOptOut(token, "one-click", "", utcnow()))
            return True

        summary = send_campaign(workspace, project.campaign, confirm=spool_claire)
    assert summary.to_send == 2 and summary.sent == 1
    sent_to = b"".join(project.messages())
    assert b"paul@telco.example" in sent_to and b"claire@client.example" not in sent_to
    assert project.sql("select origin from suppressions") == [("one-click",)]
    assert project.sql("select state, rule from send_log where address_key = 'claire@client.example'") == [
        ("blocked", "suppressed")]
    assert not spool_file(project).exists()


def test_an_opt_out_spooled_mid_run_stops_its_message_even_when_the_database_cannot_take_it_yet(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """The running send could not record the spool before its claim (the database stayed busy past
    SPOOL_PATIENCE, then freed for the claim): the claim itself must still honour what waits in
    the spool, or the person is mailed after `mailer serve` answered 200 (hostile test, issue 13)."""
    import mailer.sending
    from mailer import send_campaign
    from mailer.spool import SpooledOptOut
    from mailer.store import utcnow

    def busy(*args: object, **kwargs: object) -> None:
        raise sqlalchemy.exc.OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked"))

    with open_workspace(project.config, {"MAILER_SECRET": SECRET}) as workspace:
        def spool_claire(plan: object, to_send: int) -> bool:
            token = workspace.unsubscribe_token("2026-12-cloud-audit", "claire@client.example", "fr")
            workspace.spool.append(SpooledOptOut(token, "one-click", "", utcnow()))
            monkeypatch.setattr(mailer.sending, "apply_spooled_optouts", busy)
            return True

        summary = send_campaign(workspace, project.campaign, confirm=spool_claire)
    sent_to = b"".join(project.messages())
    assert b"paul@telco.example" in sent_to and b"claire@client.example" not in sent_to
    assert summary.sent == 1
    assert project.sql("select state, rule from send_log where address_key = 'claire@client.example'") == [
        ("blocked", "suppressed")]
    assert spool_file(project).exists()  # still waiting: the next writer records it


@pytest.mark.databases("sqlite")  # the thread pool and the spool are the same on PostgreSQL; SQLite's lock is quick
def test_many_opt_outs_at_once_against_a_locked_database_are_each_answered_within_the_patience(
        project: Project) -> None:
    """80 one-click POSTs together while SQLite stays locked: past the connection pool (15) the
    attempts queued for a connection, and each spooled opt-out had an fsync of its own, one after
    the other: the server took up to 5.1 s (measured on a shared 2-core machine) for what it promises
    in ~3.3 (hostile test, issue 13). Now at most 4 wait on the database at once, an opt-out that
    cannot get a turn within the patience is spooled, once the database is known busy the next ones
    are spooled at once, and appends that arrive together share one fsync: 3.6-3.9 s."""
    from concurrent.futures import ThreadPoolExecutor

    assert project.send().exit_code == 0  # the campaign is known
    with open_workspace(project.config, {"MAILER_SECRET": SECRET}) as workspace:
        tokens = [workspace.unsubscribe_token("2026-12-cloud-audit", f"p{i}@many.example", "fr") for i in range(80)]
    with MailerServe(project) as server, locked(project):
        with ThreadPoolExecutor(80) as pool:
            answers = list(pool.map(lambda token: post(f"{server.base}/u/{token}"), tokens))
    codes = sorted({response.status_code for response, _ in answers})
    # as the server measured each request (the 80 clients of this test, on a busy machine, take
    # seconds to start their own connections)
    served = [float(ms) / 1000 for ms in re.findall(r"POST /u/… 200 ([0-9.]+)ms", server.output)]
    slowest = max(served)
    print(f"80 one-click POSTs against a locked database: {codes}, the slowest served in {slowest:.1f} s "
          f"(client side: {max(waited for _, waited in answers):.1f} s)")
    assert codes == [200] and len(served) == 80
    # Each answered once durable, none held far past the patience; how close to it is a measure
    # for a benchmark on a quiet machine (3.6-3.9 s measured, 5.1 s before), not for this test.
    assert slowest < OPTOUT_PATIENCE + 15
    spool = spool_file(project)
    waiting = spool.read_text().count("\n") if spool.exists() else 0  # the rest: drained once the lock went
    assert waiting + project.sql("select count(*) from suppressions")[0][0] == 80
