"""Only `mailer init` and `mailer db init` create a database (issue 13): a lost or mistyped one
must never pass for a new campaign's, whose suppression list would be empty."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from conftest import SECRET, Project

from mailer.cli import cli

BOTH_DATABASES = True
CREATE_DATABASE = False


def test_no_command_but_init_creates_the_database(project: Project) -> None:
    for args in (("suppress", "list"), ("check", str(project.campaign), "--no-dns"), ("send", str(project.campaign),
                 "--yes"), ("status", "2026-12-cloud-audit"), ("explain", "claire@client.example"), ("contacts", "import",
                 str(project.csv), "--list", "l")):
        result = project.run(*args)
        assert result.exit_code == 1, (args, result.output)
        assert "there is no mailer database at" in result.output and "mailer db init" in result.output, args
    if project.is_postgres:
        assert project.sql("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'") == [(0,)]
    else:
        assert not project.db.exists()
    assert project.messages() == []
    created = project.run("db", "init")
    assert created.exit_code == 0 and "Created the database" in created.output
    again = project.run("db", "init")
    assert again.exit_code == 0 and "exists already" in again.output
    assert project.send().exit_code == 0 and len(project.messages()) == 2


def test_a_mistyped_database_stops_the_send_instead_of_mailing_opted_out_people(project: Project) -> None:
    assert project.run("db", "init").exit_code == 0
    assert project.run("suppress", "add", "claire@client.example").exit_code == 0
    if project.is_postgres:
        typo = project.database_url + "_typo"
    else:
        typo = "sqlite:///mailerTYPO.db"
    project.write("config.toml", project.base_config.replace(f'url = "{project.database_url}"', f'url = "{typo}"'))
    result = project.send()
    # SQLite: no such file; PostgreSQL: no such database (the server says so). Either way, nothing sent.
    assert result.exit_code == 1 and ("there is no mailer database" in result.output or
                                      "does not exist" in result.output), result.output
    assert project.messages() == []


def test_init_creates_the_sample_database_without_choosing_the_secret(tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "demo"
    made = runner.invoke(cli, ["init", str(target)], env={"MAILER_SECRET": ""})
    assert made.exit_code == 0 and "created the database" in made.output
    assert (target / "mailer.db").exists()
    # The secret production sets later is the one the database keeps (init chose none).
    sent = runner.invoke(cli, ["--config", str(target / "config.toml"), "send",
                               str(target / "campaigns" / "cloud-audit.toml"), "--yes"], env={"MAILER_SECRET": SECRET})
    assert sent.exit_code == 0, sent.output
