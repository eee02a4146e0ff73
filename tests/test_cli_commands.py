"""CliRunner tests for init, preview, status and the suppression list."""
from __future__ import annotations

import email
from email import policy
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import SECRET, Project, in_a_terminal

from mailer.cli import cli


def walk(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from walk(command, prefix + (name,))


def test_every_command_has_help_text() -> None:
    for path, command in walk(cli):
        assert command.help and len(command.help) > 20, f"mailer {' '.join(path)} has no help"
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, path


def test_init_writes_a_working_sample_and_never_overwrites(tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "demo"
    first = runner.invoke(cli, ["init", str(target)])
    assert first.exit_code == 0
    assert (target / "config.toml").is_file() and (target / "campaigns" / "cloud-audit.toml").is_file()
    (target / "config.toml").write_text((target / "config.toml").read_text() + "\n# mine\n")
    second = runner.invoke(cli, ["init", str(target)])
    assert "kept" in second.output and (target / "config.toml").read_text().endswith("# mine\n")
    env = {"MAILER_SECRET": SECRET}
    sent = runner.invoke(cli, ["--config", str(target / "config.toml"), "send",
                               str(target / "campaigns" / "cloud-audit.toml"), "--yes"], env=env)
    assert sent.exit_code == 0, sent.output
    outbox = list((target / "outbox" / "new").iterdir())
    assert len(outbox) == 3
    message = email.message_from_bytes(outbox[0].read_bytes(), policy=policy.default)
    text = message.get_body(("plain",)).get_content()
    assert "Acme SAS, 12 rue de la Paix, 75002 Paris, France" in text
    assert "http://localhost:8080/u/" in text
    status = runner.invoke(cli, ["--config", str(target / "config.toml"), "status",
                                 str(target / "campaigns" / "cloud-audit.toml")], env=env)
    for rule in ("not-relevant", "missing-source", "retention-expired", "audience", "invalid-address"):
        assert rule in status.output


def test_a_secret_is_created_once_when_the_variable_is_unset(project: Project) -> None:
    first = project.run("suppress", "list", env={"MAILER_SECRET": ""})
    assert "created a random secret" in first.output
    second = project.run("suppress", "list", env={"MAILER_SECRET": ""})
    assert "created a random secret" not in second.output


def test_preview_writes_eml_and_html_and_prints_one(project: Project) -> None:
    out = project.root / "preview"
    result = project.run("preview", str(project.campaign), "--out", str(out))
    assert result.exit_code == 0
    assert len(list(out.glob("0*.eml"))) == 2 and len(list(out.glob("0*.html"))) == 2 and (out / "index.html").exists()
    assert "List-Unsubscribe: <https://mail.acme.fr/u/" in result.output
    assert "marc@soft.example" in result.output and "not-relevant" in result.output
    assert project.messages() == []
    assert project.sql("select count(*) from send_log") == [(0,)]


def test_preview_to_one_address(project: Project) -> None:
    out = project.root / "one"
    result = project.run("preview", str(project.campaign), "--to", "PAUL@telco.example", "--out", str(out))
    assert result.exit_code == 0
    assert len(list(out.glob("*.eml"))) == 1
    assert "To: Paul Martin <paul@telco.example>" in result.output
    missing = project.run("preview", str(project.campaign), "--to", "nobody@x.example", "--out", str(out))
    assert missing.exit_code == 2 and "is not among the recipients" in missing.output


def test_status_of_an_unknown_campaign(project: Project) -> None:
    result = project.run("status", "no-such-campaign")
    assert result.exit_code == 2 and "no send log for campaign 'no-such-campaign'" in result.output


def test_suppress_add_list_remove_export(project: Project) -> None:
    added = project.run("suppress", "add", "Jean@Example.com", "@competitor.example", "--reason", "phone call")
    assert added.exit_code == 0 and "2 added" in added.output
    again = project.run("suppress", "add", "jean@example.com")
    assert "0 added, 1 already on the list" in again.output
    listed = project.run("suppress", "list")
    assert "competitor.example" in listed.output and "manual" in listed.output and "2 entries" in listed.output
    assert "jean" not in listed.output.lower()
    exported = project.run("suppress", "export")
    assert exported.output.startswith("scope,value,origin,created_at")
    assert "jean" not in exported.output.lower()
    assert project.run("suppress", "remove", "JEAN@example.com").exit_code == 0
    assert project.run("suppress", "remove", "jean@example.com").exit_code == 2
    bad = project.run("suppress", "add", "@")
    assert bad.exit_code == 2


def test_suppress_import_lines_and_csv(project: Project) -> None:
    lines = project.write("s.txt", "# old tool\na@x.example\n@spam.example\n\nb@x.example\n")
    result = project.run("suppress", "import", str(lines))
    assert result.exit_code == 0 and "3 added" in result.output
    table = project.write("s.csv", "name,email\nA,a@x.example\nC,c@x.example\n")
    result = project.run("suppress", "import", str(table))
    assert "1 added, 1 already" in result.output
    bad = project.write("bad.txt", "a@x.example\nnot an address\n")
    result = project.run("suppress", "import", str(bad))
    assert result.exit_code == 2 and "bad.txt:2:" in result.output
    assert project.sql("select origin, count(*) from suppressions group by origin") == [("import", 4)]


def test_suppress_mailto_records_the_opt_outs_mailed_to_the_list_unsubscribe_address(project: Project) -> None:
    import re
    assert project.send().exit_code == 0
    inbox = project.root / "inbox" / "new"
    inbox.mkdir(parents=True)
    for index, raw in enumerate(project.messages()):
        header = email.message_from_bytes(raw, policy=policy.default)["List-Unsubscribe"]
        subject = re.search(r"subject=([^>]+)>", header).group(1)
        (inbox / f"{index}.eml").write_bytes(
            f"From: someone@client.example\r\nTo: unsubscribe@acme.example\r\nSubject: {subject}\r\n\r\n".encode())
    (inbox / "junk.eml").write_bytes(b"Subject: unsubscribe-garbage\r\n\r\nplease stop\r\n")
    result = project.run("suppress", "mailto", str(project.root / "inbox"))
    assert result.exit_code == 0
    assert "2 added, 0 already on the list, 1 messages without a valid token." in result.output
    assert project.sql("select origin, campaign_id from suppressions") == [
        ("mailto", "2026-12-cloud-audit"), ("mailto", "2026-12-cloud-audit")]
    again = project.run("suppress", "mailto", str(project.root / "inbox"))
    assert "0 added, 2 already on the list" in again.output


def test_a_different_secret_is_refused_so_recorded_opt_outs_keep_matching(project: Project) -> None:
    project.run("suppress", "add", "jean@example.com")
    other = project.run("suppress", "list", env={"MAILER_SECRET": "another-secret"})
    assert other.exit_code == 1
    assert "not the one this database was first used with" in other.output
    assert "set $MAILER_SECRET back to its previous value" in other.output
    assert project.run("suppress", "list").exit_code == 0


def test_long_steps_before_sending_show_progress_in_a_terminal(project: Project) -> None:
    from conftest import HEADER

    project.csv.write_text(HEADER + "".join(
        f"person{i}@company{i % 7}.example,P{i},L{i},Co,CTO,software,b2b,Salon VivaTech 2026,2026-06-01\n"
        for i in range(6000)))
    import os
    import subprocess
    import sys

    code, shown = in_a_terminal(lambda terminal: subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(project.config), "check", str(project.campaign), "--no-dns"],
        env=dict(os.environ, MAILER_SECRET=SECRET, COLUMNS="160"), stdout=terminal, stderr=terminal,
        stdin=subprocess.DEVNULL))
    assert code == 0, shown[-500:]
    assert "Reading contacts.csv" in shown and "6000/6000" in shown
    assert "Rendering and checking" in shown
    assert "allowed" in shown and "6000" in shown
    # Piped (no terminal), the output stays the plain report.
    piped = project.run("check", str(project.campaign), "--no-dns")
    assert "Reading" not in piped.output and "Rendering and checking" not in piped.output


def test_the_config_beside_the_campaign_file_is_found_from_another_folder(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`mailer send demo/campaigns/x.toml` from outside the project: demo/config.toml, not an error."""
    runner = CliRunner()
    env = {"MAILER_SECRET": SECRET, "MAILER_CONFIG": ""}
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(cli, ["init", "demo"], env=env).exit_code == 0
    result = runner.invoke(cli, ["send", "demo/campaigns/cloud-audit.toml", "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    assert "Campaign 2026-12-cloud-audit" in result.output
    # An id, not a file: the current folder's config or none
    result = runner.invoke(cli, ["status", "2026-12-cloud-audit"], env=env)
    assert result.exit_code == 2 and "config.toml: config file not found" in result.output


def test_contacts_list_show_and_remove(project: Project) -> None:
    assert project.send().exit_code == 0
    listed = project.run("contacts", "list").output
    assert listed.splitlines()[0].split() == ["EMAIL", "NAME", "COMPANY", "JOB", "TITLE", "KIND", "SOURCE",
                                              "COLLECTED", "LISTS"]
    assert "claire@client.example" in listed and "paul@telco.example" in listed and "marc@soft.example" in listed
    found = project.run("contacts", "list", "--search", "TELCO", "--list", "prospects").output
    assert "paul@telco.example" in found and "claire@client.example" not in found
    assert "No contact matches." in project.run("contacts", "list", "--search", "50%_off").output
    limited = project.run("contacts", "list", "--limit", "1").output
    assert "… 2 more" in limited
    shown = project.run("contacts", "show", "Claire@Client.example").output
    for line in ("email:", "claire@client.example", "company:", "Client SA", "lists:", "prospects",
                 "suppressed:", "no", "campaign 2026-12-cloud-audit:", "sent"):
        assert line in shown
    assert project.run("contacts", "show", "nobody@else.example").exit_code == 2
    removed = project.run("contacts", "remove", "paul@telco.example", "--list", "prospects")
    assert removed.exit_code == 0 and "Removed paul@telco.example from the list 'prospects'" in removed.output
    again = project.run("contacts", "remove", "paul@telco.example", "--list", "prospects")
    assert again.exit_code == 2 and "is not in the list 'prospects'" in again.output
    assert "paul@telco.example" not in project.run("contacts", "list", "--list", "prospects").output
    assert "paul@telco.example" in project.run("contacts", "list").output  # the contact stays


def test_status_without_a_campaign_lists_every_campaign_with_its_unsubscribes(project: Project) -> None:
    import re
    assert "No campaign was sent yet" in project.run("status").output
    assert project.send().exit_code == 0
    inbox = project.root / "inbox" / "new"
    inbox.mkdir(parents=True)
    header = email.message_from_bytes(project.messages()[0], policy=policy.default)["List-Unsubscribe"]
    subject = re.search(r"subject=([^>]+)>", header).group(1)
    (inbox / "1.eml").write_bytes(f"From: a@client.example\r\nSubject: {subject}\r\n\r\n".encode())
    assert project.run("suppress", "mailto", str(project.root / "inbox")).exit_code == 0
    lines = project.run("status").output.splitlines()
    assert lines[0].split() == ["CAMPAIGN", "LAST", "RUN", "OUTCOME", "SENT", "FAILED", "DEFERRED", "BLOCKED",
                                "UNSUBSCRIBED", "BOUNCED", "COMPLAINED"]
    assert lines[1].split()[0] == "2026-12-cloud-audit" and lines[1].split()[3:] == ["finished", "2", "0", "0",
                                                                                      "1", "1", "0", "0"]
    one = project.run("status", "2026-12-cloud-audit").output
    assert "Unsubscribed from it: 1 (1 mailto)" in one
