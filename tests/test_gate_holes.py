"""The gate holes a hostile tester found (issue 12), end to end through the CLI, on both databases.

Consumers mailed through the role-address exemption, opt-in without proof, an unknown
collection date counted as today (also bringing back people erased at retention),
suppressions that never matched another spelling, and an unsubscribe link nobody could
reach going out over SMTP.
"""
from __future__ import annotations

from datetime import date, timedelta

from conftest import HEADER, Project

BOTH_DATABASES = True

NEWSLETTER = """\
[campaign]
id = "2026-12-news"
kind = "newsletter"
audiences = ["b2b", "b2c"]
subject = "Les nouvelles de décembre"
from = "Acme <news@acme.example>"
template = "../templates/offer"
locale = "fr"

[recipients]
list = "news"
csv = "../news.csv"
"""

NEWS_HEADER = "email,first_name,kind,source,collected_at,consent,consent_at,consent_proof\n"


def blocked(project: Project, campaign_id: str) -> dict[str, str]:
    """address -> rule of the blocked recipients, as `status --show blocked` lists them."""
    out = project.run("status", campaign_id, "--show", "blocked").output
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "@" in parts[0]:
            found[parts[0].lower()] = parts[1]
    return found


def sent_to(project: Project) -> set[str]:
    import email
    return {email.message_from_bytes(m)["To"].rpartition("<")[2].rstrip(">").lower() for m in project.messages()}


def test_consumers_without_consent_are_not_mailed_through_role_addresses(project: Project) -> None:
    project.write("campaigns/news.toml", NEWSLETTER)
    project.write("news.csv", NEWS_HEADER + (
        "info@gmail.com,,b2c,Jeu concours,2026-10-01,,,\n"
        "contact+jane.doe@gmail.com,Jane,b2c,Jeu concours,2026-10-01,,,\n"
        "support@orange.fr,,b2c,Jeu concours,2026-10-01,,,\n"
        "contact@pme.example,,b2b,,,,,\n"                              # a company's reception: exempt
        "contact+jane@pme.example,,b2b,,,,,\n"                         # a tag may reach a person
        "sales@hotmail.fr,,b2b,,,,,\n"                                 # b2b at a consumer provider
        "anne@famille.example,Anne,b2c,Site web,2026-10-01,opt-in,,\n"  # opt-in without its proof
        "bea@famille.example,Bea,b2c,Site web,2026-10-01,opt-in,2026-10-01,formulaire /newsletter\n"))
    result = project.run("send", str(project.root / "campaigns/news.toml"), "--yes")
    assert result.exit_code == 0, result.output
    assert sent_to(project) == {"contact@pme.example", "bea@famille.example"}
    rules = blocked(project, "2026-12-news")
    assert rules == {"info@gmail.com": "no-consent", "contact+jane.doe@gmail.com": "no-consent",
                     "support@orange.fr": "no-consent", "contact+jane@pme.example": "missing-source",
                     "sales@hotmail.fr": "missing-source", "anne@famille.example": "no-consent"}
    detail = project.run("status", "2026-12-news", "--show", "blocked").output
    assert "opt-in without consent_at and consent_proof" in detail


def test_consumer_domains_can_be_extended_in_config(project: Project) -> None:
    project.write("config.toml", project.base_config.replace(
        "retention_years = 3", 'retention_years = 3\nconsumer_domains = ["Mail.Example"]'))
    project.write("campaigns/news.toml", NEWSLETTER)
    project.write("news.csv", NEWS_HEADER + "info@mail.example,,b2b,,,,,\ninfo@pme.example,,b2b,,,,,\n")
    assert project.run("send", str(project.root / "campaigns/news.toml"), "--yes").exit_code == 0
    assert sent_to(project) == {"info@pme.example"}


def test_a_contact_without_a_collection_date_is_not_mailed_unless_the_file_is_dated(project: Project) -> None:
    project.write("contacts.csv", HEADER.replace(",collected_at", "") +
                  "claire@client.example,Claire,Durand,Client SA,CTO,banking,b2b,Salon VivaTech 2026\n")
    result = project.send()
    assert result.exit_code == 0 and project.messages() == []
    assert blocked(project, "2026-12-cloud-audit") == {"claire@client.example": "retention-expired"}
    assert "no collection date" in project.run("status", "2026-12-cloud-audit", "--show", "blocked").output
    assert project.sql("SELECT collected_at FROM contacts") == [(None,)]

    # The campaign states the date of the whole file.
    text = project.campaign.read_text().replace('csv = "../contacts.csv"',
                                                'csv = "../contacts.csv"\ncollected_at = 2026-06-01')
    project.campaign.write_text(text)
    result = project.send()
    assert result.exit_code == 0, result.output
    assert sent_to(project) == {"claire@client.example"}
    assert project.sql("SELECT collected_at FROM contacts") == [("2026-06-01",)]


def test_import_says_how_many_rows_are_undated_and_collected_at_dates_them(project: Project) -> None:
    path = project.write("undated.csv", "email,kind,source\na@pme.example,b2b,Salon\nb@pme.example,b2b,Salon\n")
    result = project.run("contacts", "import", str(path), "--list", "l")
    assert result.exit_code == 0 and "2 rows have no collection date" in result.output
    result = project.run("contacts", "import", str(path), "--list", "l", "--collected-at", "2026-03-04")
    assert result.exit_code == 0 and "no collection date" not in result.output
    assert project.sql("SELECT DISTINCT collected_at FROM contacts") == [("2026-03-04",)]
    future = (date.today() + timedelta(days=3)).isoformat()
    result = project.run("contacts", "import", str(path), "--list", "l", "--collected-at", future)
    assert result.exit_code == 2 and "in the future" in result.output
    assert project.run("contacts", "import", str(path), "--list", "l", "--collected-at", "hier").exit_code == 2


def test_people_erased_at_retention_come_back_only_with_a_later_collection_date(project: Project) -> None:
    old = "email,kind,source,job_title,collected_at\nold@pme.example,b2b,Salon 2019,CTO,2019-01-10\n"
    path = project.write("old.csv", old)
    assert project.run("contacts", "import", str(path), "--list", "prospects").exit_code == 0
    assert project.run("retention", "--apply", "--yes").exit_code == 0
    assert project.sql("SELECT count(*) FROM contacts") == [(0,)]

    undated = project.write("again.csv", "email,kind,source,job_title\nold@pme.example,b2b,Salon 2019,CTO\n")
    result = project.run("contacts", "import", str(undated), "--list", "prospects")
    assert "Skipped 1 rows of people whose data was erased" in result.output
    assert project.sql("SELECT count(*) FROM contacts") == [(0,)]
    # The same file dated before the erasure: still out.
    result = project.run("contacts", "import", str(undated), "--list", "prospects", "--collected-at", "2019-01-10")
    assert project.sql("SELECT count(*) FROM contacts") == [(0,)]
    # Collected again since (the erasure moved back two days: a date is all an import gives): back.
    project.sql("UPDATE erasures SET erased_at = ?", (date.today() - timedelta(days=2)).isoformat() + " 10:00:00")
    result = project.run("contacts", "import", str(undated), "--list", "prospects", "--collected-at",
                         (date.today() - timedelta(days=2)).isoformat())
    assert project.sql("SELECT count(*) FROM contacts") == [(0,)]  # the day of the erasure is not after it
    today = date.today().isoformat()
    result = project.run("contacts", "import", str(undated), "--list", "prospects", "--collected-at", today)
    assert project.sql("SELECT collected_at FROM contacts") == [(today,)]


def test_people_erased_on_request_never_come_back(project: Project) -> None:
    assert project.run("forget", "claire@client.example", "--yes").exit_code == 0
    today = date.today().isoformat()
    back = project.write("back.csv", f"email,kind,source,job_title,collected_at\nClaire+X@client.example,b2b,Site,CTO,{today}\n"
                         "claire@client.example,b2b,Site,CTO,{today}\n".replace("{today}", today))
    result = project.run("contacts", "import", str(back), "--list", "prospects")
    assert "Skipped 2 rows" in result.output, result.output
    assert project.sql("SELECT count(*) FROM contacts WHERE email_key LIKE 'claire%'") == [(0,)]


def test_suppressions_are_refused_rather_than_kept_in_a_spelling_nothing_matches(project: Project) -> None:
    for value in ("jane@client.example,", "@.sub.example", "@*.star.example", "jane", '"a b"@client.example',
                  "@client", "@"):
        result = project.run("suppress", "add", value)
        assert result.exit_code == 2 and "is not a" in result.output, (value, result.output)
    assert project.sql("SELECT count(*) FROM suppressions") == [(0,)]
    for value in ("jane@client.example.", "<jane@client.example>", "mailto:jane@client.example?subject=x",
                  "Jane Doe <Jane+x@Client.Example>", '"jane"@client.example'):
        result = project.run("suppress", "add", value)
        assert result.exit_code == 0, (value, result.output)
    assert project.sql("SELECT count(*) FROM suppressions") == [(1,)]  # one mailbox
    assert "suppressed" in project.run("suppress", "check", "jane@client.example").output
    result = project.run("suppress", "add", "jane@gmail.com", '"j.a.n.e"@googlemail.com')
    assert "1 added, 0 already" in result.output, result.output  # one more mailbox, given twice


def test_suppressions_match_every_spelling_of_a_domain_and_a_mailbox(project: Project) -> None:
    project.write("contacts.csv", HEADER + "".join(
        f"{address},X,Y,Z,CTO,software,b2b,Salon,2026-06-01\n" for address in (
            "z@xn--bcher-kva.example", "y@mail.bücher.example", "q@client.example", "r@eu.client.example",
            "jeanne+promo@pme.example", "j.e.a.n.n.e@googlemail.com", "other@pme.example")))
    for value in ("@Bücher.example", "@client.example.", "jeanne@pme.example", "jeanne+x@gmail.com"):
        result = project.run("suppress", "add", value)
        assert result.exit_code == 0 and "1 added" in result.output, (value, result.output)
    # The same entries typed another way are already there.
    again = project.run("suppress", "add", "@XN--BCHER-KVA.EXAMPLE", "@CLIENT.example", "Jeanne+Y@PME.example",
                        "jeanne@googlemail.com")
    assert "0 added, 4 already on the list" in again.output, again.output
    result = project.send()
    assert result.exit_code == 0, result.output
    assert sent_to(project) == {"other@pme.example"}
    assert set(blocked(project, "2026-12-cloud-audit").values()) == {"suppressed"}
    check = project.run("suppress", "check", "R@EU.Client.Example")
    assert "suppressed" in check.output and "@client.example" in check.output
    assert "not on the suppression list" in project.run("suppress", "check", "jeanne@other.example").output
    several = project.run("suppress", "check", "jeanne@other.example", "JEANNE+x@pme.example").output.splitlines()
    assert several[0] == "jeanne@other.example: not on the suppression list."
    assert several[1] == "JEANNE+x@pme.example: suppressed." and "the mailbox (manual)" in several[2]
    # Removing the mailbox under another spelling removes it.
    assert project.run("suppress", "remove", "jeanne+zz@pme.example", "--yes").exit_code == 0
    assert "not on the suppression list" in project.run("suppress", "check", "jeanne@pme.example").output


def test_an_opt_out_by_one_click_covers_the_other_spellings(project: Project) -> None:
    from starlette.testclient import TestClient

    from mailer import open_workspace
    from mailer.server import create_app
    project.write("contacts.csv", HEADER + "Claire+News@client.example,Claire,D,C,CTO,software,b2b,Salon,2026-06-01\n")
    assert project.send().exit_code == 0
    message = project.messages()[0].decode()
    token = message.split("/u/", 1)[1].split(">", 1)[0]
    ws = open_workspace(project.config, {"MAILER_SECRET": "test-secret-0123456789"})
    with TestClient(create_app(ws)) as client:
        assert client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    ws.close()
    for spelling in ("claire@client.example", "CLAIRE+other@client.example"):
        assert "suppressed" in project.run("suppress", "check", spelling).output
    project.write("contacts.csv", HEADER + "claire@client.example,Claire,D,C,CTO,software,b2b,Salon,2026-06-01\n")
    project.campaign.write_text(project.campaign.read_text().replace("2026-12-cloud-audit", "2027-01-next"))
    assert project.send().exit_code == 0
    assert blocked(project, "2027-01-next") == {"claire@client.example": "suppressed",
                                                "claire+news@client.example": "suppressed"}


SMTP = 'type = "smtp"'


def smtp_config(project: Project, base_url: str, extra: str = "") -> None:
    text = project.base_config.replace('type = "maildir"', SMTP)
    text = text.replace('base_url = "https://mail.acme.fr"', f'base_url = "{base_url}"{extra}')
    project.write("config.toml", text)


def test_an_unsubscribe_link_nobody_can_reach_does_not_go_out_over_smtp(project: Project) -> None:
    for url in ("http://localhost:8080", "https://localhost:8443", "https://127.0.0.1", "https://192.168.1.20",
                "https://10.0.0.5:8080", "https://unsub", "https://mail.acme.local", "http://mail.acme.fr",
                "https://[::1]:8080", "https://mailer.internal", "https://127.1", "https://0x7f.0.0.1",
                "https://0177.0.0.1", "https://10.1", "https://１２７.０.０.１", "https://foo.%6cocalhost",
                "https://[::ffff:0:7f00:1]", "https://[64:ff9b::7f00:1]", "https://[::127.0.0.1]",
                "https://localhost\\\\@mail.acme.fr", "https://user@mail.acme.fr", "https://mail.acme.example",
                "https://x.onion"):
        smtp_config(project, url)
        result = project.run("check", str(project.campaign), "--no-dns", "--no-smtp")
        assert result.exit_code == 3, (url, result.output)
        assert "NOT OK" in result.output and "base_url" in result.output, url
        assert project.send().exit_code == 3
    # The maildir outbox leaves nothing: a local link is fine there.
    project.write("config.toml", project.base_config.replace(
        'base_url = "https://mail.acme.fr"', 'base_url = "http://localhost:8080"'))
    assert project.run("check", str(project.campaign), "--no-dns").exit_code == 0


def test_a_test_setup_may_allow_a_local_link_and_every_run_says_so(project: Project) -> None:
    smtp_config(project, "http://localhost:8080", "\nallow_local_url = true")
    result = project.run("check", str(project.campaign), "--no-dns", "--no-smtp")
    assert result.exit_code == 0, result.output
    assert "allow_local_url = true" in result.output and "cannot reach" in result.output


def test_a_nul_character_in_a_csv_is_a_row_error_on_both_databases(project: Project) -> None:
    path = project.root / "nul.csv"
    path.write_bytes(b"email,first_name,kind,source,collected_at\n"
                     b"ok@pme.example,Ok,b2b,Salon,2026-06-01\nnul@pme.example,Jo\x00e,b2b,Salon,2026-06-01\n")
    result = project.run("contacts", "import", str(path), "--list", "l")
    assert result.exit_code == 2, result.output
    assert "nul.csv:3: a NUL character in first_name" in result.output
    assert "unexpected" not in result.output
    assert project.sql("SELECT count(*) FROM contacts") == [(0,)]
    result = project.run("contacts", "import", str(path), "--list", "l", "--skip-invalid")
    assert result.exit_code == 0 and project.sql("SELECT email FROM contacts") == [("ok@pme.example",)]


def test_forget_erases_every_spelling_of_the_mailbox_and_copies_a_mail_client_renamed(project: Project) -> None:
    project.write("contacts.csv", HEADER + "".join(
        f"{address},Zyxwv,Qrst,C,CTO,software,b2b,Salon,2026-06-01\n" for address in (
            "jane@client.example", "Jane+news@client.example", "j.a.n.e@gmail.com", "jane+x@googlemail.com",
            "janet@client.example")))
    preview = project.root / "preview"
    assert project.run("preview", str(project.campaign), "--out", str(preview)).exit_code == 0
    assert len(list(preview.glob("*.eml"))) == 5
    assert project.send().exit_code == 0
    outbox = project.root / "outbox"
    first = sorted((outbox / "new").iterdir())[0]
    (outbox / "cur").mkdir(exist_ok=True)
    first.rename(outbox / "cur" / (first.name + ":2,S"))  # what a mail client does to a message it shows
    for mailbox in ("jane@client.example", "jane@gmail.com"):
        result = project.run("forget", mailbox, "--yes")
        assert result.exit_code == 0, result.output
    left = [p for p in project.root.rglob("*") if p.is_file() and p.suffix != ".db" and "-wal" not in p.name
            and b"Zyxwv" in p.read_bytes() and p.name not in ("contacts.csv",)]
    names = sorted(p.name for p in left)
    # Only janet's preview (.eml, .html) and outbox copy are left: she is someone else.
    assert len(left) == 3 and all(b"janet" in p.read_bytes() or "janet" in p.name for p in left), names
    assert project.sql("SELECT email_key FROM contacts") == [("janet@client.example",)]


def test_a_database_failure_is_one_sentence_without_sql_or_personal_data(project: Project) -> None:
    assert project.run("suppress", "list").exit_code == 0  # the database, created
    if project.is_postgres:
        project.sql("CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk full (simulated)'; "
                    "END $$ LANGUAGE plpgsql")
        project.sql("CREATE TRIGGER refuse BEFORE INSERT ON contacts FOR EACH ROW EXECUTE FUNCTION refuse()")
    else:
        project.sql("CREATE TRIGGER refuse BEFORE INSERT ON contacts BEGIN SELECT RAISE(ABORT, "
                    "'disk full (simulated)'); END")
    result = project.run("contacts", "import", str(project.csv), "--list", "l")
    assert result.exit_code == 1
    assert "disk full (simulated)" in result.output and "failed" in result.output
    for leak in ("claire", "Claire", "Durand", "[SQL", "parameters", "INSERT", "unexpected"):
        assert leak not in result.output, (leak, result.output)


def test_a_database_password_is_never_shown(project: Project) -> None:
    for url in ("postgresql+psycopg://mailer@127.0.0.1:1/mailer?password=Sekr3tPW",
                "postgresql+psycopg://mailer:Sekr3tPW@127.0.0.1:1/mailer?connect_timeout=2"):
        project.write("config.toml", project.base_config.replace(f'url = "{project.database_url}"', f'url = "{url}"'))
        result = project.run("suppress", "list")
        assert result.exit_code in (1, 2) and "Sekr3tPW" not in result.output, result.output
        assert "127.0.0.1:1" in result.output
    project.write("config.toml", project.base_config.replace(
        f'url = "{project.database_url}"', 'url = ["postgresql+psycopg://mailer:Sekr3tPW@127.0.0.1:1/mailer"]'))
    result = project.run("suppress", "list")
    assert result.exit_code == 2 and "Sekr3tPW" not in result.output and "[database] url" in result.output


def test_an_address_longer_than_any_address_is_a_row_error(project: Project) -> None:
    path = project.root / "long.csv"
    path.write_text("email,first_name,kind,source,collected_at\nok@pme.example,Victim,b2b,Salon,2026-06-01\n"
                    + "x" * 9000 + "@pme.example,Two,b2b,Salon,2026-06-01\n")
    result = project.run("contacts", "import", str(path), "--list", "l")
    assert result.exit_code == 2 and "long.csv:3: email is 9,012 characters long" in result.output
    assert "Victim" not in result.output and "ok@pme.example" not in result.output


def test_an_unsubscribe_url_whose_token_would_not_reach_the_server_is_refused(project: Project) -> None:
    for url in ("https://mail.acme.fr#x", "https://mail.acme.fr/?x=1", "https://mail.acme.fr:99999",
                "https://mail.acme.fr:0", "https://mail.acme.fr:443:80"):
        project.write("config.toml", project.base_config.replace(
            'base_url = "https://mail.acme.fr"', f'base_url = "{url}"'))
        result = project.run("check", str(project.campaign), "--no-dns")
        assert result.exit_code == 3 and "base_url" in result.output, (url, result.output)
