"""`mailer send` end to end on the embedded defaults: SQLite file + maildir outbox."""
from __future__ import annotations

import email
from email import policy

import pytest
from conftest import HEADER, Project, counts

BOTH_DATABASES = True  # also run on PostgreSQL when MAILER_TEST_POSTGRES_URL is set


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def parts(message: email.message.EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    return text, html


def test_send_writes_one_message_per_allowed_recipient_with_the_footer(project: Project) -> None:
    result = project.send()
    assert result.exit_code == 0, result.output
    messages = [parse(m) for m in project.messages()]
    assert sorted(m["To"].addresses[0].addr_spec for m in messages) == ["claire@client.example", "paul@telco.example"]
    for message in messages:
        text, html = parts(message)
        for body in (text, html):
            assert "Acme SAS" in body
            assert "12 rue de la Paix, 75002 Paris, France" in body
            assert "Salon VivaTech 2026" in body
            assert "https://mail.acme.fr/u/" in body
            assert "https://acme.example/privacy" in body
            assert "dpo@acme.example" in body
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        unsubscribe = message["List-Unsubscribe"]
        assert unsubscribe.startswith("<https://mail.acme.fr/u/")
        assert "<mailto:unsubscribe@acme.example?subject=unsubscribe-" in unsubscribe
        assert message["Message-ID"].endswith("@acme.example>")
        assert message["List-Id"] == "2026-12-cloud-audit <2026-12-cloud-audit.acme.example>"
        # Gmail's feedback loop: complaint rates per campaign, per kind, for sender "mailer"
        assert message["Feedback-ID"] == "2026-12-cloud-audit:prospecting:mailer"
        assert message["Subject"].endswith(", votre audit cloud offert")
        assert message["From"] == "Jeanne Martin <jeanne@acme.example>"
        assert message["Date"]
    assert counts(result.output)["sent"] == 2


@pytest.mark.databases("sqlite")
def test_a_recipient_without_a_name_is_addressed_by_their_organisation(project: Project) -> None:
    """A bare To whose domain the Subject starts with is how brand phishing looks to spam filters
    (tests/test_message_quality.py): the company's name is shown when the person's is unknown."""
    project.write("contacts.csv", HEADER + "contact@pme.example,,,PME SARL,,,b2b,,2026-06-01\n"
                                           "info@nobody.example,,,,,,b2b,,2026-06-01\n")
    assert project.send().exit_code == 0
    assert sorted(parse(m)["To"] for m in project.messages()) == ["PME SARL <contact@pme.example>",
                                                                  "info@nobody.example"]


def test_status_shows_who_was_blocked_by_which_rule(project: Project) -> None:
    project.send()
    result = project.run("status", str(project.campaign), "--show", "blocked")
    assert result.exit_code == 0
    assert counts(result.output)["sent"] == 2
    assert counts(result.output)["not-relevant"] == 1
    assert "marc@soft.example" in result.output
    # by id as well as by file
    assert project.run("status", "2026-12-cloud-audit").exit_code == 0


def test_rerun_resumes_and_nobody_is_mailed_twice(project: Project) -> None:
    first = project.send("--limit", "1")
    assert first.exit_code == 0
    assert len(project.messages()) == 1
    second = project.send()
    assert second.exit_code == 0
    assert "already-sent" in second.output
    third = project.send()
    assert "Nothing to send." in third.output
    recipients = [parse(m)["To"].addresses[0].addr_spec for m in project.messages()]
    assert sorted(recipients) == ["claire@client.example", "paul@telco.example"]
    assert project.sql("select count(*) from send_log where state = 'sent'") == [(2,)]


def test_dry_run_records_and_sends_nothing(project: Project) -> None:
    result = project.send("--dry-run")
    assert result.exit_code == 0
    assert "Dry run: 2 messages would be sent" in result.output
    assert project.messages() == []
    assert project.sql("select count(*) from send_log") == [(0,)]


def test_without_yes_the_counts_are_shown_and_a_no_sends_nothing(project: Project) -> None:
    result = project.run("send", str(project.campaign), input="n\n", env={"MAILER_ASSUME_TTY": "1"})
    assert result.exit_code == 1  # click's Abort
    assert counts(result.output)["allowed"] == 2
    assert "not-relevant" in result.output
    assert "Send 2 messages via maildir" in result.output
    assert project.messages() == []
    # asked before anything was written: the CSV not imported, no campaign, no run, no decision
    for table in ("contacts", "lists", "campaigns", "runs", "send_log"):
        assert project.sql(f"select count(*) from {table}") == [(0,)], table
    yes = project.run("send", str(project.campaign), input="y\n", env={"MAILER_ASSUME_TTY": "1"})
    assert yes.exit_code == 0
    assert len(project.messages()) == 2


def test_without_a_terminal_send_asks_for_yes(project: Project) -> None:
    result = project.run("send", str(project.campaign))
    assert result.exit_code == 2
    assert "--yes" in result.output
    assert project.messages() == []


def test_an_opt_out_between_runs_stops_later_messages(project: Project) -> None:
    project.send("--limit", "1")
    sent_to = parse(project.messages()[0])["To"].addresses[0].addr_spec
    other = ({"claire@client.example", "paul@telco.example"} - {sent_to}).pop()
    assert project.run("suppress", "add", other.upper()).exit_code == 0
    result = project.send()
    assert "suppressed" in result.output
    assert len(project.messages()) == 1


def test_a_domain_on_the_suppression_list_blocks_the_whole_domain(project: Project) -> None:
    project.run("suppress", "add", "@telco.example")
    project.send()
    assert [parse(m)["To"].addresses[0].addr_spec for m in project.messages()] == ["claire@client.example"]


def test_crash_left_sending_row_is_confirmed_from_the_outbox_or_marked_uncertain(project: Project) -> None:
    project.send("--limit", "1")
    # Simulate a process killed between the claim and the write: one row left in `sending`
    # with its file written, one left in `sending` without.
    [(written_id,)] = project.sql("select id from send_log where state = 'sent'")
    project.sql("update send_log set state = 'sending' where id = ?", written_id)
    [(lost_id,)] = project.sql("select id from send_log where state = 'planned'")
    project.sql("update send_log set state = 'sending' where id = ?", lost_id)
    result = project.send()
    assert "1 messages interrupted by a crash were found delivered" in result.output
    assert "marked uncertain" in result.output
    assert dict(project.sql("select id, state from send_log where id in (?, ?)", written_id, lost_id)) == {
        written_id: "sent", lost_id: "uncertain"}
    assert len(project.messages()) == 1  # the uncertain one is not resent
    # Not finished while an allowed recipient waits: exit 4, and what continues.
    assert result.exit_code == 4, result.output
    assert "(0 deferred, 1 uncertain)" in result.output and "--retry-uncertain` sends them again" in result.output
    assert project.send().exit_code == 4  # still waiting: a run that sends nothing says so too
    again = project.send("--retry-uncertain")
    assert again.exit_code == 0
    assert len(project.messages()) == 2


def test_campaign_csv_changes_are_upserted_at_each_run(project: Project) -> None:
    project.send()
    project.csv.write_text(project.csv.read_text() +
                           "new@software.example,Nina,New,Soft,CTO,software,b2b,Salon VivaTech 2026,2026-06-01\n")
    result = project.send()
    assert "1 new" in result.output
    assert len(project.messages()) == 3


def test_duplicate_rows_in_the_campaign_csv_are_counted_once(project: Project) -> None:
    project.csv.write_text(project.csv.read_text() +
                           "CLAIRE@Client.example,Claire,Durand,Client SA,CTO,banking,b2b,Salon VivaTech 2026,2026-06-01\n")
    result = project.send()
    assert counts(result.output)["duplicate"] == 1
    assert len(project.messages()) == 2


def test_html_only_template_gets_a_text_part_derived_from_it(project: Project) -> None:
    project.send()
    text, _ = parts(parse(project.messages()[0]))
    assert "Un audit cloud pour" in text
    assert "<p>" not in text


def test_text_only_template_sends_a_text_message_with_the_footer(project: Project) -> None:
    (project.root / "templates" / "offer.html.j2").unlink()
    project.write("templates/offer.txt.j2", "Bonjour {{ contact.first_name }} <b>!</b>\n")
    assert project.send().exit_code == 0
    message = parse(project.messages()[0])
    assert message.get_content_type() == "text/plain"
    body = message.get_content()
    assert "<b>!</b>" in body  # text templates are not HTML-escaped
    assert "Salon VivaTech 2026" in body and "https://mail.acme.fr/u/" in body


def test_english_campaign_gets_the_english_footer(project: Project) -> None:
    project.campaign.write_text(project.campaign.read_text().replace('locale = "fr"', 'locale = "en"'))
    project.send()
    text, html = parts(parse(project.messages()[0]))
    assert "Where we got your address: Salon VivaTech 2026." in text
    assert "unsubscribe in one click" in html


def test_contact_values_are_escaped_and_cannot_inject_headers(project: Project) -> None:
    project.csv.write_text(HEADER + (
        '"evil@client.example","<script>alert(1)</script>Eve\r\nBcc: victim@else.example","X",'
        '"A&B <i>","CTO","software","b2b","Salon","2026-06-01"\n'))
    project.campaign.write_text(project.campaign.read_text().replace(
        'subject = "{{ contact.first_name }}, votre audit cloud offert"',
        'subject = "{{ contact.company }} {{ contact.attrs.get(\'x\', \'\') }}"'))
    result = project.send()
    assert result.exit_code == 0, result.output
    [raw] = project.messages()
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in head and b"victim@else.example" not in head.replace(b"\r\n ", b" ").split(b"To:")[0]
    message = parse(raw)
    assert message["Bcc"] is None
    assert [a.addr_spec for a in message["To"].addresses] == ["evil@client.example"]
    _, html = parts(message)
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "A&amp;B &lt;i&gt;" in html


def test_rendering_in_worker_processes_gives_the_same_messages(project: Project) -> None:
    result = project.run("send", str(project.campaign), "--yes", env={"MAILER_RENDER_WORKERS": "2"})
    assert result.exit_code == 0, result.output
    messages = [parse(m) for m in project.messages()]
    assert sorted(m["To"].addresses[0].addr_spec for m in messages) == ["claire@client.example", "paul@telco.example"]
    text, html = parts(messages[0])
    assert "Salon VivaTech 2026" in text and "https://mail.acme.fr/u/" in html


def test_template_error_in_a_worker_process_is_reported_like_inline(project: Project) -> None:
    project.write("templates/offer.html.j2", "<p>{{ contact.attrs.segment }}</p>")
    project.csv.write_text(project.csv.read_text().replace("kind,source", "kind,source"))
    result = project.run("send", str(project.campaign), "--yes", env={"MAILER_RENDER_WORKERS": "2"})
    assert result.exit_code == 2
    assert "offer.html.j2:1:" in result.output and "segment" in result.output


def test_a_contact_removed_from_the_list_after_planning_is_not_sent_by_a_later_run(project: Project) -> None:
    project.campaign.write_text(project.campaign.read_text().replace('csv = "../contacts.csv"\n', ""))
    assert project.run("contacts", "import", str(project.csv), "--list", "prospects").exit_code == 0
    project.send("--limit", "1")
    [(planned,)] = project.sql("select address_key from send_log where state = 'planned'")
    project.sql("delete from list_members where contact_id = (select id from contacts where email_key = ?)", planned)
    result = project.send()
    assert "Nothing to send." in result.output
    assert len(project.messages()) == 1
    assert planned not in [parse(m)["To"].addresses[0].addr_spec for m in project.messages()]


def test_templates_can_use_jinja_globals_range_and_namespace(project: Project) -> None:
    project.write("templates/offer.html.j2", "<p>{% for i in range(3) %}{{ i }}{% endfor %}"
                                             "{% set ns = namespace(n=7) %}-{{ ns.n }} {{ contact.first_name }}</p>\n")
    result = project.send()
    assert result.exit_code == 0, result.output
    html = email.message_from_bytes(project.messages()[0], policy=policy.default).get_body(("html",)).get_content()
    assert "012-7 " in html


def test_the_footer_is_under_1_5_kb_and_written_as_a_french_reader_expects(project: Project) -> None:
    assert project.send().exit_code == 0
    text, html = parts(parse(project.messages()[0]))
    footer = html[html.index('<div id="mailer-footer"'):]
    footer = footer[:footer.index("</div>") + len("</div>")]
    assert len(footer.encode()) < 1500, len(footer.encode())
    assert "Origine de votre adresse\u00a0: Salon VivaTech 2026." in footer  # no-break space before ":"
    assert " :" not in footer.replace("\u00a0:", "")
    assert "Origine de votre adresse : Salon VivaTech 2026." in text  # plain text keeps plain spaces


def test_a_members_footer_elides_de_before_a_vowel(project: Project) -> None:
    project.write("config.toml", project.config.read_text().replace('name = "Acme SAS"', 'name = "Association Élan"'))
    project.campaign.write_text(project.campaign.read_text().replace('kind = "prospecting"', 'kind = "members"'))
    project.csv.write_text(HEADER.rstrip("\n") + ",member\n"
                           + "claire@client.example,Claire,Durand,Client SA,CTO,banking,b2b,Adhésion,2026-06-01,yes\n")
    result = project.send()
    assert result.exit_code == 0, result.output
    text, html = parts(parse(project.messages()[0]))
    assert "en tant que membre d'Association Élan." in text


def test_a_repeated_row_does_not_change_the_spelling_the_first_row_gave(project: Project) -> None:
    """The gate keeps the first row of an address; the To: header is that row's spelling too."""
    project.csv.write_text(HEADER
                           + "Claire.Durand@client.example,Claire,Durand,Client SA,CTO,banking,b2b,Salon,2026-06-01\n"
                           + "CLAIRE.DURAND@CLIENT.EXAMPLE,Claire,Durand,Client SA,CTO,banking,b2b,Salon,2026-06-01\n")
    result = project.send()
    assert result.exit_code == 0, result.output
    assert counts(result.output)["duplicate"] == 1
    [raw] = project.messages()
    assert parse(raw)["To"].addresses[0].addr_spec == "Claire.Durand@client.example"


def test_a_changed_template_stops_the_next_run_unless_allowed_and_status_says_who_got_which(project: Project) -> None:
    project.csv.write_text(CSV_FIRST)
    assert project.send().exit_code == 0
    project.write("templates/offer.html.j2", project.root.joinpath("templates/offer.html.j2").read_text()
                  .replace("Un audit", "Une offre"))
    project.csv.write_text(CSV_FIRST + "nina@software.example,Nina,New,Soft,CTO,software,b2b,Salon VivaTech 2026,"
                                       "2026-06-01\n")
    refused = project.send()
    assert refused.exit_code == 2
    assert "the campaign file or its templates changed since earlier runs" in refused.output
    assert "--allow-changes" in refused.output
    assert len(project.messages()) == 1
    project.campaign.write_text(project.campaign.read_text())  # same bytes: still the new version
    allowed = project.run("send", str(project.campaign), "--yes", "--allow-changes")
    assert allowed.exit_code == 0, allowed.output
    assert len(project.messages()) == 2
    status = project.run("status", "2026-12-cloud-audit").output
    line = next(s for s in status.splitlines() if s.startswith("Sent, by version"))
    assert line.count(" 1 (from ") == 2  # one recipient got each version


CSV_FIRST = HEADER + "claire@client.example,Claire,Durand,Client SA,CTO,banking,b2b,Salon VivaTech 2026,2026-06-01\n"
