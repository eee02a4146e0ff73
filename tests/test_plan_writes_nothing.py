"""check, preview and send --dry-run decide without writing: the database stays exactly as it was."""
from __future__ import annotations

from conftest import CSV, HEADER, Project

import mailer

TABLES = ("contacts", "lists", "list_members", "suppressions", "campaigns", "runs", "send_log", "interactions",
          "erasures", "settings")


def snapshot(project: Project) -> dict[str, list[tuple]]:
    """Every row, but the record of the folders `preview` wrote to (for `forget` to find them)."""
    return {table: sorted((row for row in project.sql(f"select * from {table}")
                           if not str(row[0]).startswith("preview_folder:")), key=repr) for table in TABLES}


def test_check_preview_and_dry_run_leave_the_database_as_it_was(project: Project) -> None:
    first = project.send()  # a real send: the list exists, Claire and Paul were mailed
    assert first.exit_code == 0, first.output
    # The file changes: a new prospect, and Marc now matches the campaign's relevance rules.
    project.write("contacts.csv", CSV.replace("Comptable,food", "CTO,food")
                  + "nina@new.example,Nina,Roy,New,CTO,software,b2b,Salon VivaTech 2026,2026-06-01\n")
    before = snapshot(project)
    for args in (("check", str(project.campaign), "--no-dns"), ("preview", str(project.campaign),
                 "--out", str(project.root / "preview")), ("send", str(project.campaign), "--dry-run")):
        result = project.run(*args)
        assert result.exit_code == 0, result.output
        assert snapshot(project) == before, f"mailer {args[0]} wrote to the database"
    # ... yet they decided on the file as it is now: Marc and Nina would be mailed.
    assert "Dry run: 2 messages would be sent" in result.output
    assert {p.name.split("-", 1)[1] for p in (project.root / "preview").glob("*.eml")} == {
        "marc@soft.example.eml", "nina@new.example.eml"}
    # preview's one write: where it put copies of people's messages.
    assert project.sql("select key from settings where key like 'preview_folder:%'") == [
        (f"preview_folder:{(project.root / 'preview').resolve()}",)]


def test_plan_campaign_decides_on_a_csv_never_imported(project: Project) -> None:
    """Before any import the list does not exist; the plan still shows what the file would give."""
    project.write("contacts.csv", HEADER + "zoe@client.example,Zoé,Bas,Client,CTO,software,b2b,Salon,2026-06-01\n")
    with mailer.open_workspace(project.config, {"MAILER_SECRET": "test-secret-0123456789"}) as ws:
        plan = mailer.plan_campaign(ws, project.campaign)
        assert plan.counts == {"allowed": 1}
        assert [r.key for r in plan.recipients or []] == ["zoe@client.example"]
        assert ws.store.contacts.count() == 0
