"""A send whose SQLite file is removed or replaced while it runs stops (issue 13): it went on
writing into the deleted file and ended "sent 5000", and the next run knew none of it."""
from __future__ import annotations

import os
import re
import shutil
import sqlite3
from pathlib import Path

from conftest import HEADER, Project, when_outbox_holds

RECIPIENTS = 600


def many_contacts(project: Project, n: int = RECIPIENTS) -> None:
    rows = "".join(f"p{i}@c{i % 50}.example,P{i},L{i},C{i % 50},CTO,software,b2b,Salon VivaTech 2026,2026-06-01\n"
                   for i in range(n))
    project.csv.write_text(HEADER + rows, encoding="utf-8")


def database_files(project: Project) -> list[Path]:
    return [Path(f"{project.db}{suffix}") for suffix in ("", "-wal", "-shm")]


def rows_by_state(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM send_log GROUP BY state").fetchall())


def recipients_in_outbox(project: Project) -> list[str]:
    found = []
    for message in project.messages():
        for line in message.split(b"\r\n") if b"\r\n" in message else message.split(b"\n"):
            if line.startswith(b"To: "):
                found.append(line[4:].decode())
                break
    return found


def test_a_database_removed_while_sending_stops_the_run_and_keeps_its_send_log(project: Project) -> None:
    many_contacts(project)

    def remove() -> None:
        for path in database_files(project):
            path.unlink(missing_ok=True)

    watcher = when_outbox_holds(project, 150, remove)
    result = project.send()
    watcher.join()
    sent = len(project.messages())
    assert result.exit_code == 1, result.output
    assert f"the database file {project.db} was removed while sending, so nothing more was sent" in result.output
    assert sent < RECIPIENTS, "the run went on after its database was removed"
    # No new, empty database appeared at the path (SQLite makes one on connect).
    assert not project.db.exists()
    rescued = sorted(project.root.glob("mailer.db.rescued-*"))
    assert len(rescued) == 1 and str(rescued[0]) in result.output
    assert rescued[0].stat().st_mode & 0o077 == 0  # personal data: owner-only
    # Every message that went out is recorded in the copy; nothing is left claimed but unsent.
    states = rows_by_state(rescued[0])
    assert states.get("sent") == sent and "sending" not in states, states

    # The next run refuses to start over on a missing database...
    again = project.send()
    assert again.exit_code == 1 and "there is no mailer database" in again.output and "mailer db init" in again.output
    assert len(project.messages()) == sent
    # ...and, the copy put back in place, resumes: everyone mailed exactly once.
    os.replace(rescued[0], project.db)
    resumed = project.send()
    assert resumed.exit_code == 0, resumed.output
    recipients = recipients_in_outbox(project)
    assert len(recipients) == RECIPIENTS and len(set(recipients)) == RECIPIENTS


def test_a_database_replaced_while_sending_stops_the_run_without_writing_into_the_new_file(
        project: Project) -> None:
    many_contacts(project)
    backup = project.root / "backup.db"
    with sqlite3.connect(project.db) as source, sqlite3.connect(backup) as copy:
        source.backup(copy)
    before = backup.read_bytes()

    def restore_backup() -> None:
        shutil.copyfile(backup, project.root / "restoring.db")
        os.replace(project.root / "restoring.db", project.db)

    watcher = when_outbox_holds(project, 150, restore_backup)
    result = project.send()
    watcher.join()
    sent = len(project.messages())
    assert result.exit_code == 1, result.output
    assert f"the database file {project.db} was replaced while sending, so nothing more was sent" in result.output
    assert sent < RECIPIENTS
    # The file now in place is the backup, untouched by the run.
    assert project.db.read_bytes() == before
    rescued = sorted(project.root.glob("mailer.db.rescued-*"))
    assert len(rescued) == 1 and rows_by_state(rescued[0]).get("sent") == sent


def test_a_database_whose_folder_is_removed_says_how_many_messages_are_not_recorded(project: Project) -> None:
    """No copy can be kept (its folder went too): the sentence counts what went out unrecorded."""
    project.write("config.toml", project.base_config.replace("sqlite:///mailer.db", "sqlite:///data/mailer.db"))
    (project.root / "data").mkdir()
    assert project.run("db", "init").exit_code == 0
    many_contacts(project)
    watcher = when_outbox_holds(project, 150, lambda: shutil.rmtree(project.root / "data"))
    result = project.send()
    watcher.join()
    assert result.exit_code == 1, result.output
    found = re.search(rf"the database file {re.escape(str(project.root / 'data' / 'mailer.db'))} was removed while "
                      r"sending, so nothing more was sent; (\d+) messages handed to the transport since it was last "
                      r"seen in place are not recorded there: restore the database from a backup", result.output)
    assert found, result.output
    assert int(found.group(1)) < 100 and len(project.messages()) < RECIPIENTS
    assert not (project.root / "data").exists()


def test_a_database_removed_while_the_run_plans_stops_it_even_with_nothing_to_send(
        project: Project, monkeypatch) -> None:  # noqa: ANN001
    """Removed after the plan recorded its work (here the spool's opt-outs, drained into the lost
    file) and with nobody left to mail: the run ended "nothing to send", exit 0, and the opt-out
    survived only in a deleted file (hostile test, issue 13)."""
    from conftest import SECRET

    import mailer.campaign
    from mailer import open_workspace
    from mailer.errors import DatabaseGone
    from mailer.spool import SpooledOptOut
    from mailer.store import utcnow

    assert project.send().exit_code == 0  # everybody mailed: a rerun has nothing to send
    real = mailer.campaign.decide_campaign

    def decide_then_lose_the_file(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        plan = real(*args, **kwargs)
        for path in database_files(project):
            path.unlink()
        return plan

    monkeypatch.setattr(mailer.campaign, "decide_campaign", decide_then_lose_the_file)
    with open_workspace(project.config, {"MAILER_SECRET": SECRET}) as workspace:
        token = workspace.unsubscribe_token("2026-12-cloud-audit", "claire@client.example", "fr")
        workspace.spool.append(SpooledOptOut(token, "one-click", "", utcnow()))
        try:
            mailer.campaign.send_campaign(workspace, project.campaign)
        except DatabaseGone as exc:
            gone = exc
        else:
            raise AssertionError("the run went on without its database file")
    assert "was removed" in str(gone) and gone.rescued
    rescued = sqlite3.connect(gone.rescued)
    assert rescued.execute("select origin from suppressions").fetchall() == [("one-click",)]
    assert not project.db.exists()  # nothing made a new, empty database at the path
