"""explain, forget, retention and contacts touch: answering a person and keeping nothing past its time."""
from __future__ import annotations

import json
import shutil
from datetime import date, timedelta

import pytest
from conftest import Project, counts

BOTH_DATABASES = True  # also run on PostgreSQL when MAILER_TEST_POSTGRES_URL is set

PEOPLE = """\
email,first_name,last_name,company,job_title,industry,kind,source,source_type,collected_at,consent,consent_at,consent_proof,partner_consent,last_interaction_at,segment
zoe.quintal@client.example,Zoé,Quintal,Client SA,CTO,software,b2b,Salon VivaTech 2026,direct,2026-06-01,,,,,,gold
yann.vasseur@home.example,Yann,Vasseur,,,,b2c,Formulaire acme.example,direct,2026-05-05,opt-in,2026-05-05,https://acme.example/form (case cochée),,,
contact@pme.example,,,PME,,,b2b,,direct,2019-01-01,,,,,,
old.timer@legacy.example,Olga,Tymoshenko,Legacy,CTO,software,b2b,Salon 2020,direct,2020-01-01,,,,,,
soon.gone@legacy.example,Sven,Gonzaga,Legacy,CTO,software,b2b,Salon 2023,direct,{soon},,,,,,
"""


def people(project: Project) -> None:
    soon = (date.today() - timedelta(days=3 * 365 - 20)).isoformat()
    project.csv.write_text(PEOPLE.format(soon=soon))
    project.campaign.write_text(project.campaign.read_text().replace('audiences = ["b2b"]', 'audiences = ["b2b", "b2c"]'))
    assert project.send().exit_code == 0


def test_explain_a_b2b_prospect_in_french(project: Project) -> None:
    people(project)
    out = project.run("explain", "Zoe.Quintal@client.example").output
    assert "Acme SAS, 12 rue de la Paix, 75002 Paris, France" in out and "dpo@acme.example" in out
    for fact in ("Prénom : Zoé", "Nom : Quintal", "Fonction : CTO", "segment : gold", "prospects"):
        assert fact in out
    assert "Source : Salon VivaTech 2026 (collectée directement auprès de vous), le 1er juin 2026." in out
    assert "intérêt légitime" in out
    assert "campagne 2026-12-cloud-audit — « Zoé, votre audit cloud offert »" in out
    assert "Nous supprimerons vos données le 1er juin 2029" in out
    assert "désabonnement en un clic" in out


def test_explain_a_consumer_with_consent_proof_in_english_and_json(project: Project) -> None:
    people(project)
    out = project.run("explain", "yann.vasseur@home.example", "--locale", "en").output
    assert "Consent: given (opt-in)" in out
    assert "your consent, given on 5 May 2026 (https://acme.example/form (case cochée))" in out
    assert "not sent (outside the audience)" not in out
    markdown = project.run("explain", "yann.vasseur@home.example", "--locale", "en", "--format", "markdown").output
    assert "## The data we hold" in markdown
    data = json.loads(project.run("explain", "yann.vasseur@home.example", "--format", "json").output)
    assert data["contact"]["consent_proof"] == "https://acme.example/form (case cochée)"
    assert data["legal_bases"] == {"prospecting": "consent"}
    assert data["deletion_date"] == "2029-05-05"


def test_explain_a_generic_address_and_an_unknown_one(project: Project) -> None:
    people(project)
    generic = project.run("explain", "contact@pme.example").output
    assert "adresse générique d'entreprise" in generic
    assert "Nous supprimerons" not in generic
    unknown = project.run("explain", "nobody@nowhere.example", "--locale", "en").output
    assert "We hold no personal data linked to the address nobody@nowhere.example." in unknown
    assert "do-not-contact" not in unknown


def test_explain_a_suppressed_address_reveals_only_that(project: Project) -> None:
    project.run("suppress", "add", "stranger@else.example")
    out = project.run("explain", "stranger@else.example", "--locale", "en").output
    assert "We hold no personal data" in out
    assert "This address is on our do-not-contact list" in out


def test_forget_leaves_no_trace_in_the_database_files(project: Project) -> None:
    people(project)
    project.run("contacts", "touch", "zoe.quintal@client.example", "--at", "2026-11-01", "--what", "reply")
    result = project.run("forget", "ZOE.QUINTAL@client.example", "--yes")
    assert result.exit_code == 0 and "Erased" in result.output
    if project.is_postgres:  # the rows are gone and VACUUM ran; the server's files are not ours to read
        tables = [t for (t,) in project.sql("select tablename from pg_tables where schemaname = 'public'")]
        raw = repr([project.sql(f'select * from "{t}"') for t in tables]).encode("utf-8")
    else:  # secure_delete zeroes freed pages and the WAL is truncated: check the bytes of every file
        raw = b"".join(p.read_bytes() for p in project.root.glob("mailer.db*"))
    for trace in ("zoe.quintal", "quintal", "zoé"):
        assert trace.encode("utf-8") not in raw.lower(), trace
    assert project.sql("select origin from suppressions") == [("erasure",)]
    assert project.sql("select reason from erasures") == [("request",)]
    # The send log still says a message went out, keyed by hash.
    assert project.sql("select count(*) from send_log where address_key like 'erased:%' and state='sent'") == [(1,)]
    after = project.run("explain", "zoe.quintal@client.example", "--locale", "en").output
    assert "Your data was erased on" in after and "Quintal" not in after
    # The copy of the message in the maildir outbox is gone too; the others stay.
    assert "Removed 1 copies of messages sent to them" in result.output
    remaining = project.messages()
    assert remaining and not any(b"zoe.quintal" in m.lower() or b"Quintal" in m for m in remaining)


def test_a_forgotten_person_is_not_brought_back_by_an_import_or_a_campaign(project: Project) -> None:
    people(project)
    project.run("forget", "zoe.quintal@client.example", "--yes")
    result = project.send()
    assert "Skipped 1 rows of people whose data was erased." in result.output
    assert project.sql("select count(*) from contacts where email_key like 'zoe%'") == [(0,)]
    imported = project.run("contacts", "import", str(project.csv), "--list", "other")
    assert "Skipped 1 rows" in imported.output


def test_forget_clears_what_an_operator_typed_about_the_person(project: Project) -> None:
    project.run("suppress", "add", "jean@client.example", "--reason", "Jean Dupont called to opt out")
    assert project.run("forget", "jean@client.example", "--yes").exit_code == 0
    assert project.sql("select origin, reason from suppressions") == [("manual", "")]
    if not project.is_postgres:
        raw = b"".join(p.read_bytes() for p in project.root.glob("mailer.db*"))
        assert b"Dupont" not in raw


def test_forget_an_unknown_address_still_suppresses_it(project: Project) -> None:
    result = project.run("forget", "never@seen.example", "--yes")
    assert result.exit_code == 0 and "We held no data" in result.output
    assert project.sql("select origin from suppressions") == [("erasure",)]
    assert project.run("forget", "never@seen.example").exit_code == 2  # no terminal: asks for --yes


def test_retention_lists_expired_and_soon_expiring_then_apply_erases(project: Project) -> None:
    people(project)
    project.run("suppress", "add", "old.timer@legacy.example")
    listing = project.run("retention")
    assert listing.exit_code == 0
    assert "old.timer@legacy.example" in listing.output and "collected_at 2020-01-01" in listing.output
    assert "Expired today" in listing.output and "Expiring within 60 days: 1" in listing.output
    assert "soon.gone@legacy.example" in listing.output
    assert "contact@pme.example" not in listing.output  # role address, not personal data
    assert project.sql("select count(*) from contacts") == [(5,)]
    refused = project.run("retention", "--apply")  # no terminal, no --yes: nothing erased
    assert refused.exit_code == 2 and "--yes" in refused.output
    applied = project.run("retention", "--apply", "--yes")
    assert "Erased 1 contacts" in applied.output
    assert project.sql("select count(*) from contacts where email_key = 'old.timer@legacy.example'") == [(0,)]
    assert project.sql("select count(*) from contacts") == [(4,)]
    assert project.sql("select origin from suppressions") == [("manual",)]  # kept, none added
    assert project.sql("select reason from erasures") == [("retention",)]
    # The same stale row in the campaign CSV does not bring the person back.
    result = project.send()
    assert "Skipped 1 rows" in result.output


def test_touch_restarts_the_retention_clock_and_rejects_opens(project: Project) -> None:
    people(project)
    assert "old.timer@legacy.example" in project.run("retention").output
    touched = project.run("contacts", "touch", "old.timer@legacy.example", "--at", date.today().isoformat(),
                          "--what", "reply")
    assert touched.exit_code == 0
    assert "old.timer@legacy.example" not in project.run("retention").output
    assert project.run("contacts", "touch", "old.timer@legacy.example", "--at", "2026-01-01",
                       "--what", "open").exit_code == 2
    assert project.run("contacts", "touch", "nobody@x.example", "--at", "2026-01-01",
                       "--what", "click").exit_code == 2
    future = (date.today() + timedelta(days=3)).isoformat()
    assert project.run("contacts", "touch", "old.timer@legacy.example", "--at", future, "--what", "form").exit_code == 2
    assert counts(project.send().output).get("retention-expired", 0) == 0


def test_forget_removes_the_preview_copies_of_the_person_and_keeps_the_others(project: Project) -> None:
    first, second = project.root / "preview", project.root / "review" / "december"
    for folder in (first, second):
        result = project.run("preview", str(project.campaign), "--out", str(folder))
        assert result.exit_code == 0, result.output
    assert {p.name for p in first.iterdir()} == {"00001-claire@client.example.eml", "00001-claire@client.example.html",
                                                "00002-paul@telco.example.eml", "00002-paul@telco.example.html",
                                                "index.html"}
    (second / "index.html").write_text("<li>Claire.Durand: claire@client.example</li>")  # named in the content only
    (second / "notes.txt").write_text("ask xclaire@client.example and claire@client.example.org")  # others
    (project.root / "gone").mkdir()
    assert project.run("preview", str(project.campaign), "--out", str(project.root / "gone")).exit_code == 0
    shutil.rmtree(project.root / "gone")  # a folder removed since: nothing to do there
    result = project.run("forget", "Claire@Client.example", "--yes")
    assert result.exit_code == 0, result.output
    assert "Removed 6 preview files (mailer preview) that held them." in result.output  # the indexes too
    for folder in (first, second):
        for file in folder.iterdir():
            assert b"claire@client.example" not in file.read_bytes().lower().replace(b"xclaire", b"").replace(
                b"claire@client.example.org", b""), file
    assert {p.name for p in first.iterdir()} == {"00002-paul@telco.example.eml", "00002-paul@telco.example.html"}
    assert {p.name for p in second.iterdir()} == {"00002-paul@telco.example.eml", "00002-paul@telco.example.html",
                                                 "notes.txt"}


def test_forget_lists_previews_it_cannot_reach(project: Project) -> None:
    assert project.run("suppress", "list").exit_code == 0  # the database, created
    project.sql("insert into settings (key, value) values (?, ?)", "preview_folder:/srv/other/preview", "build-02")
    result = project.run("forget", "claire@client.example", "--yes")
    assert result.exit_code == 4
    assert result.stderr.splitlines() == [
        "1 files or folders that may hold them could not be removed:",
        "  /srv/other/preview (previews written on build-02: run forget there too)"]


def test_retention_apply_removes_the_preview_copies_too(project: Project) -> None:
    people(project)
    folder = project.root / "preview"
    assert project.run("preview", str(project.campaign), "--out", str(folder)).exit_code == 0
    (folder / "earlier.eml").write_bytes(b"To: Olga <OLD.TIMER@legacy.example>\r\n\r\nBonjour Olga\r\n")
    applied = project.run("retention", "--apply", "--yes")
    assert applied.exit_code == 0 and "Removed 2 preview files" in applied.output  # and index.html, listing them
    assert not (folder / "earlier.eml").exists() and not (folder / "index.html").exists()


@pytest.mark.parametrize("command", ["explain", "forget"])
def test_explain_and_forget_refuse_what_is_not_an_address(project: Project, command: str) -> None:
    result = project.run(command, "not an email", *(["--yes"] if command == "forget" else []))
    assert result.exit_code == 2, result.output
    assert "'not an email' is not an email address" in result.output
    assert "Vous nous avez" not in result.output
