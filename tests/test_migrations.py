"""Schema migrations: a database written by mailer 0.1.0 upgrades without losing a row.

The 0.1.0 databases in tests/fixtures/ were written by the released code (commit
db29943) through its CLI: see tests/fixtures/build_0_1_0.py, which also says how to
rebuild them. They use conftest's SECRET, as every test here does.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import SECRET, Project, counts
from sqlmodel import SQLModel

from mailer.errors import StoreError
from mailer.store import Store, migrate

BOTH_DATABASES = True  # also run on PostgreSQL when MAILER_TEST_POSTGRES_URL is set

FIXTURES = Path(__file__).parent / "fixtures"
HEAD = "0006"  # the newest revision: a new migration changes this line
NOTE = f"Upgraded the database schema from 0001 to {HEAD}."

# Every table 0.1.0 wrote, with the columns that order its rows.
TABLES = {
    "contacts": "id", "lists": "id", "list_members": "list_id, contact_id", "suppressions": "id",
    "erasures": "id", "interactions": "id", "campaigns": "id", "runs": "id", "send_log": "id", "settings": "key",
}

ATTRS = 21  # contacts.attrs, the 22nd column

FOLLOW_UP = """\
[campaign]
id = "2027-02-next"
kind = "prospecting"
audiences = ["b2b"]
subject = "{{ contact.first_name or contact.company }}, encore nous"
from = "Jeanne Martin <jeanne@acme.example>"
template = "../templates/offer"
locale = "fr"

[recipients]
list = "prospects-2026"

[relevance]
job_titles = ["CTO", "DSI", "directeur informatique"]
industries = ["software", "telecom"]
"""


# --------------------------------------------------------------------------- helpers

#: the tests put a database of their own where the project points (a 0.1.0 one, or none)
CREATE_DATABASE = False

def load_0_1_0(project: Project) -> None:
    """Put the 0.1.0 database where the project's config points."""
    if project.is_postgres:
        import psycopg
        url = sqlalchemy.make_url(project.database_url).set(drivername="postgresql")
        with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
            conn.execute((FIXTURES / "mailer-0.1.0.postgresql.sql").read_text(encoding="utf-8"))  # type: ignore[arg-type]
    else:
        shutil.copyfile(FIXTURES / "mailer-0.1.0.db", project.db)
        project.db.chmod(0o600)  # as the owner keeps it (a wider mode is warned of: tests/test_owner_only.py)


def url_of(project: Project) -> str:
    return project.database_url if project.is_postgres else f"sqlite:///{project.db}"


def snapshot(project: Project) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table 0.1.0 wrote (settings without schema_version, which the upgrade moves on)."""
    rows = {name: project.sql(f"SELECT * FROM {name} ORDER BY {order}") for name, order in TABLES.items()}
    rows["settings"] = [row for row in rows["settings"] if row[0] != "schema_version"]
    # columns later revisions added come last (0004: runs.fingerprint, "" for the runs before it;
    # 0005: runs.sender, heartbeat_at, plan_run_id, send_log.claimed_by, campaigns.next_send_at)
    for name, kept in COLUMNS_0_1_0.items():
        rows[name] = [row[:kept] for row in rows[name]]
    return rows


#: how many columns of these tables 0.1.0 had (runs: id, campaign_id, started_at, finished_at, outcome, counts)
COLUMNS_0_1_0 = {"runs": 6, "send_log": 16, "campaigns": 7}


def engine_for(url: str) -> sqlalchemy.Engine:
    return Store._engine(url)  # with the pragmas mailer's own connections get


def schema(url: str) -> dict[str, Any]:
    """What reflection sees of each table: columns, keys, constraints, indexes."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    inspector = sqlalchemy.inspect(engine)
    found: dict[str, Any] = {}
    for name in sorted(set(inspector.get_table_names()) - {"alembic_version"}):
        found[name] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("default")) for c in inspector.get_columns(name)],
            "primary key": inspector.get_pk_constraint(name)["constrained_columns"],
            "foreign keys": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                                   for f in inspector.get_foreign_keys(name)),
            "unique": sorted((u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(name)),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(name)),
        }
    engine.dispose()
    return found


def sqlite_master(path: Path) -> list[tuple[str, str, str]]:
    engine = sqlalchemy.create_engine(f"sqlite:///{path}", poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE '%alembic_version%' "
                                    "ORDER BY type, name").all()
    engine.dispose()
    return [tuple(row) for row in rows]


def upgrade_to(url: str, revision: str) -> None:
    engine = engine_for(url)
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(connection=conn), revision)
    engine.dispose()


# --------------------------------------------------------------------------- a 0.1.0 database

def test_the_fixture_holds_what_0_1_0_wrote(project: Project) -> None:
    load_0_1_0(project)
    rows = snapshot(project)
    assert len(rows["contacts"]) == 6 and all(row[ATTRS] for row in rows["contacts"])
    assert len(rows["lists"]) == 1 and len(rows["list_members"]) == 6
    assert {(r[1], r[4]) for r in rows["suppressions"]} == {
        ("address", "one-click"), ("address", "manual"), ("domain", "manual"), ("address", "erasure")}
    assert sorted(r[2] for r in rows["erasures"]) == ["request", "retention"]
    assert len(rows["interactions"]) == 1 and len(rows["campaigns"]) == 2 and len(rows["runs"]) == 2
    states = {(r[5], r[6]) for r in rows["send_log"]}
    assert {("sent", ""), ("planned", ""), ("blocked", "suppressed"), ("blocked", "retention-expired"),
            ("blocked", "not-relevant"), ("blocked", "invalid-address")} <= states
    assert project.sql("SELECT value FROM settings WHERE key = 'schema_version'") == [("1",)]
    assert migrate.current_revision(engine_for(url_of(project))) == migrate.BASELINE


def test_a_0_1_0_database_upgrades_on_first_use_without_losing_a_row(project: Project) -> None:
    load_0_1_0(project)
    before = snapshot(project)
    result = project.run("status", "2026-12-cloud-audit")
    assert result.exit_code == 0, result.output
    assert result.output.count(NOTE) == 1
    assert counts(result.output)["sent"] == 3 and counts(result.output)["blocked"] == 5
    assert snapshot(project) == before  # every contact, list, suppression, erasure, interaction, run, send-log row
    assert project.sql("SELECT version_num FROM alembic_version") == [(HEAD,)]
    assert project.sql("SELECT value FROM settings WHERE key = 'schema_version'") == [(HEAD,)]  # 0.1.0 refuses it

    again = project.run("status", "2027-01-follow-up")
    assert again.exit_code == 0 and "Upgraded" not in again.output
    assert counts(again.output)["sent"] == 1 and counts(again.output)["planned"] == 1
    assert project.run("db", "upgrade").output.strip() == "The database schema is up to date."


def test_db_upgrade_says_what_it_did(project: Project) -> None:
    load_0_1_0(project)
    result = project.run("db", "upgrade")
    assert result.exit_code == 0 and result.output.count(NOTE) == 1, result.output
    store = Store.open(url_of(project), create=True)
    assert store.notes == []
    store.close()


def test_collected_at_may_now_be_unknown(project: Project) -> None:
    load_0_1_0(project)
    store = Store.open(url_of(project), create=True)
    assert store.notes == [NOTE]
    store.close()
    column = next(c for c in sqlalchemy.inspect(engine_for(url_of(project))).get_columns("contacts")
                  if c["name"] == "collected_at")
    assert column["nullable"] is True
    project.sql("UPDATE contacts SET collected_at = NULL WHERE email_key = ?", "paul.martin@telco.example")
    out = json.loads(project.run("explain", "paul.martin@telco.example", "--format", "json").output)
    assert out["contact"]["collected_at"] is None and out["contact"]["first_name"] == "Paul"
    # An import no longer dates a new contact to the day: the date stays unknown.
    project.write("new.csv", "email,kind,source\nnew.person@client.example,b2b,Salon 2026\n")
    assert project.run("contacts", "import", str(project.root / "new.csv"), "--list", "prospects-2026").exit_code == 0
    assert project.sql("SELECT collected_at FROM contacts WHERE email_key = 'new.person@client.example'") == [(None,)]


def test_opt_outs_recorded_by_0_1_0_still_block_their_addresses(project: Project) -> None:
    load_0_1_0(project)
    # The one-click opt-out: a new campaign to the same list blocks the address.
    campaign = project.write("campaigns/next.toml", FOLLOW_UP)
    result = project.run("send", str(campaign), "--yes")
    assert result.exit_code == 0, result.output
    blocked = project.run("status", "2027-02-next", "--show", "blocked").output
    line = next(line for line in blocked.splitlines() if "claire.durand@client.example" in line.lower())
    assert "suppressed" in line
    # The hashes and the domain match with the same secret: nothing is added again.
    again = project.run("suppress", "add", "someone@elsewhere.example", "@spam-trap.example")
    assert "0 added, 2 already on the list" in again.output, again.output
    # The erased person is not brought back by an import.
    project.write("back.csv", "email,kind,source,collected_at\nsophie.bernard@bakery.example,b2b,Annuaire,2026-02-01\n")
    project.run("contacts", "import", str(project.root / "back.csv"), "--list", "prospects-2026")
    assert project.sql("SELECT count(*) FROM contacts WHERE email_key = 'sophie.bernard@bakery.example'") == [(0,)]


def test_domains_suppressed_as_typed_are_brought_to_the_form_addresses_are_compared_in(project: Project) -> None:
    load_0_1_0(project)
    for row_id, value in ((11, "Bücher.example"), (12, "client.example."), (13, "SPAM-TRAP.example")):
        project.sql("INSERT INTO suppressions (id, scope, value, reason, origin, campaign_id, created_at) "
                    "VALUES (?, 'domain', ?, '', 'manual', '', '2026-11-01 10:00:00')", row_id, value)
    engine = engine_for(url_of(project))
    migrate.upgrade(engine)
    engine.dispose()
    assert sorted(project.sql("SELECT value FROM suppressions WHERE scope = 'domain'")) == [
        ("client.example",), ("spam-trap.example",), ("xn--bcher-kva.example",)]  # the repeated one dropped
    check = project.run("suppress", "check", "z@mail.xn--bcher-kva.example")
    assert check.exit_code == 0 and "suppressed" in check.output and "@xn--bcher-kva.example" in check.output


def test_the_baseline_is_exactly_the_0_1_0_schema(project: Project, spare: str, tmp_path: Path) -> None:
    load_0_1_0(project)
    upgrade_to(spare, migrate.BASELINE)
    assert schema(spare) == schema(url_of(project))
    if not project.is_postgres:  # and on SQLite, the very statements 0.1.0 ran
        assert sqlite_master(tmp_path / "spare.db") == sqlite_master(project.db)


def test_upgrade_reports_from_and_to_and_then_nothing(project: Project) -> None:
    load_0_1_0(project)
    engine = engine_for(url_of(project))
    assert migrate.upgrade(engine) == ("0001", HEAD)
    assert migrate.upgrade(engine) == (HEAD, HEAD)
    assert migrate.current_revision(engine) == migrate.head_revision() == HEAD
    engine.dispose()


def test_the_downgrade_to_0001_dates_unknown_collections(project: Project) -> None:
    load_0_1_0(project)
    schema_of_0_1_0 = schema(url_of(project))
    Store.open(url_of(project), create=True).close()
    project.sql("UPDATE contacts SET collected_at = NULL WHERE email_key = ?", "paul.martin@telco.example")
    engine = engine_for(url_of(project))
    assert migrate.downgrade(engine, "0001") == (HEAD, "0001")
    engine.dispose()
    (created, collected), = project.sql("SELECT created_at, collected_at FROM contacts WHERE email_key = ?",
                                        "paul.martin@telco.example")
    assert collected == created[:10]
    assert project.sql("SELECT value FROM settings WHERE key = 'schema_version'") == [("1",)]  # 0.1.0 takes it again
    assert schema(url_of(project))["contacts"] == schema_of_0_1_0["contacts"]


# --------------------------------------------------------------------------- other databases

def test_a_new_database_is_built_by_the_migrations_and_matches_the_tables(project: Project) -> None:
    assert "there is no mailer database" in project.run("status", "nothing-yet").output  # only init creates one
    result = project.run("db", "init")
    assert "Created the database" in result.output and "Upgraded" not in result.output  # new: created, no note
    assert project.sql("SELECT version_num FROM alembic_version") == [(migrate.head_revision(),)]
    engine = engine_for(url_of(project))
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
    engine.dispose()
    assert differences == []
    command.check(migrate.alembic_config(url_of(project)))  # `alembic check`, as a developer runs it: no new operations


def test_a_database_from_a_newer_mailer_is_refused(project: Project) -> None:
    Store.open(url_of(project), create=True).close()
    project.sql("UPDATE alembic_version SET version_num = '0042'")
    result = project.run("status", "2026-12-cloud-audit")
    assert result.exit_code == 1
    assert "schema revision 0042" in result.output and "newer mailer" in result.output
    assert "upgrade mailer" in result.output
    assert project.sql("SELECT version_num FROM alembic_version") == [("0042",)]
    with pytest.raises(StoreError, match="0042"):
        Store.open(url_of(project), create=True)


def test_tables_of_mailer_names_without_its_history_are_refused(project: Project) -> None:
    load_0_1_0(project)
    project.sql("UPDATE settings SET value = '7' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 7 and no migration history"):
        Store.open(url_of(project), create=True)
    assert project.sql("SELECT value FROM settings WHERE key = 'schema_version'") == [("7",)]


def test_the_revision_files_and_alembic_agree() -> None:
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    history = [s for s in reversed(list(scripts.walk_revisions()))]
    assert tuple(s.revision for s in history) == migrate.known_revisions()
    assert scripts.get_heads() == [migrate.head_revision()]
    for before, script in zip([None, *history], history, strict=False):
        assert script.down_revision == (before.revision if before else None)
        assert Path(script.path).name.startswith(f"{script.revision}_")


# --------------------------------------------------------------------------- two processes at once

RACER = """\
import json, os, sys, time
from mailer.store import Store
go = sys.argv[2]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
store = Store.open(sys.argv[1], create=True)
print(json.dumps(store.notes), flush=True)
store.close()
"""


@pytest.mark.parametrize("start", ["0.1.0", "empty"])
def test_two_processes_opening_a_database_at_once_upgrade_it_once(project: Project, tmp_path: Path, start: str) -> None:
    if start == "0.1.0":
        load_0_1_0(project)
        before = snapshot(project)
    go = tmp_path / "go"
    env = {**os.environ, "MAILER_SECRET": SECRET}
    racers = [subprocess.Popen([sys.executable, "-c", RACER, url_of(project), str(go)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path) for _ in range(2)]
    for racer in racers:
        assert racer.stdout is not None and racer.stdout.readline().strip() == "ready"
    go.touch()
    outcomes = []
    for racer in racers:
        out, err = racer.communicate(timeout=90)
        assert racer.returncode == 0, err
        outcomes.append(json.loads(out))
    assert sorted(outcomes) == ([[], [NOTE]] if start == "0.1.0" else [[], []])  # a new database: no note
    if start == "0.1.0":
        assert snapshot(project) == before
    assert project.sql("SELECT version_num FROM alembic_version") == [(HEAD,)]
    if start == "empty":
        assert project.sql("SELECT key, value FROM settings") == [("schema_version", HEAD)]


# --------------------------------------------------------------------------- fixtures

@pytest.fixture
def spare(project: Project, tmp_path: Path) -> Iterator[str]:
    """A second, empty database of the project's kind."""
    if not project.is_postgres:
        yield f"sqlite:///{tmp_path / 'spare.db'}"
        return
    name = f"mailer_test_{uuid.uuid4().hex[:12]}"
    url = sqlalchemy.make_url(project.database_url)
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()
