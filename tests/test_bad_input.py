"""Bad input gets one clear error naming the file and line, exit code 2 (3 for compliance refusals)."""
from __future__ import annotations

import email
import re
from email import policy
from email.header import decode_header, make_header

import pytest
from conftest import CAMPAIGN, CONFIG, HEADER, Project
from smtp_server import RecordingHandler, SmtpServer


def test_unknown_keys_wrong_types_and_bad_enums_are_reported_together(project: Project) -> None:
    project.write("config.toml", CONFIG.replace('port = 2525', 'port = "lots"')
                  .replace('type = "maildir"', 'type = "pigeon"')
                  .replace('[compliance]', '[compliance]\nretension_years = 2'))
    result = project.run("check", str(project.campaign), "--no-dns")
    assert result.exit_code == 2
    out = result.output
    assert "3 problems" in out
    assert f"{project.config}:16: [smtp] port" in out
    assert f"{project.config}:11: [transport] type" in out and "'maildir' or 'smtp'" in out
    assert "retension_years: unknown key (did you mean 'retention_years'?)" in out
    assert "Traceback" not in out


def test_toml_syntax_error_names_the_line(project: Project) -> None:
    project.write("config.toml", CONFIG.replace('name = "Acme SAS"', 'name = "Acme SAS'))
    result = project.run("check", str(project.campaign), "--no-dns")
    assert result.exit_code == 2
    assert "TOML syntax error" in result.output and "line 2" in result.output


def test_missing_config_file_says_how_to_make_one(project: Project) -> None:
    project.config.unlink()
    result = project.run("check", str(project.campaign))
    assert result.exit_code == 2
    assert "config file not found" in result.output and "mailer init" in result.output


def test_campaign_missing_required_keys_and_bad_id(project: Project) -> None:
    project.campaign.write_text(project.campaign.read_text()
                                .replace('id = "2026-12-cloud-audit"', 'id = "bad id/with slash"')
                                .replace('kind = "prospecting"\n', ''))
    result = project.run("check", str(project.campaign), "--no-dns")
    assert result.exit_code == 2
    assert f"{project.campaign}:2: [campaign] id: must be letters, digits" in result.output
    assert "[campaign] is missing the required key 'kind'" in result.output


def test_campaign_template_and_csv_paths_must_exist(project: Project) -> None:
    project.campaign.write_text(project.campaign.read_text()
                                .replace('"../templates/offer"', '"../templates/nope"')
                                .replace('"../contacts.csv"', '"../missing.csv"'))
    result = project.run("send", str(project.campaign), "--yes")
    assert result.exit_code == 2
    assert "nope.html.j2" in result.output and "missing.csv does not exist" in result.output


def test_template_syntax_error_names_template_file_and_line(project: Project) -> None:
    project.write("templates/offer.html.j2", "<p>line one</p>\n<p>{{ contact.first_name }</p>\n")
    result = project.run("send", str(project.campaign), "--yes")
    assert result.exit_code == 2
    assert "offer.html.j2:2: template syntax error" in result.output
    assert project.messages() == []


def test_misspelt_variable_is_an_error_before_anything_is_sent(project: Project) -> None:
    project.write("templates/offer.html.j2", "<p>Hello</p>\n<p>{{ contact.firstname }}</p>\n")
    result = project.run("check", str(project.campaign), "--no-dns")
    assert result.exit_code == 2
    assert "offer.html.j2:2: contact.firstname is not defined: did you mean contact.first_name?" in result.output
    assert "contact.attrs.NAME" in result.output
    send = project.send()
    assert send.exit_code == 2
    assert project.messages() == []


@pytest.mark.parametrize(("written", "said"), [
    ("firstname", "firstname is not defined: did you mean contact.first_name?"),
    ("organization.adress", "organization.adress is not defined: did you mean organization.postal_address?"),
    ("campaign.identifier", "campaign.identifier is not defined (known: campaign.id, campaign.kind, campaign.locale)"),
    ("contact.attrs.segmnt", "contact.attrs.segmnt is not defined (the CSV has no extra columns)"),
])
def test_an_unknown_name_is_named_as_written_with_the_closest_that_exists(project: Project, written: str,
                                                                         said: str) -> None:
    project.write("templates/offer.html.j2", f"<p>Hello</p>\n<p>{{{{ {written} }}}}</p>\n")
    result = project.run("check", str(project.campaign), "--no-dns")
    assert result.exit_code == 2
    assert f"offer.html.j2:2: {said}" in result.output


def test_sandbox_refuses_unsafe_attribute_access(project: Project) -> None:
    project.write("templates/offer.html.j2", "{{ contact.__class__.__mro__ }}\n")
    result = project.run("check", str(project.campaign), "--no-dns")
    assert result.exit_code == 2
    assert "offer.html.j2" in result.output and "unsafe" in result.output.lower()


def test_from_header_must_be_an_address(project: Project) -> None:
    project.campaign.write_text(project.campaign.read_text().replace(
        'from = "Jeanne Martin <jeanne@acme.example>"', 'from = "Jeanne Martin"'))
    result = project.run("check", str(project.campaign), "--no-dns")
    assert result.exit_code == 2
    assert "[campaign] from:" in result.output


def test_missing_organization_fields_refuse_the_campaign_with_exit_3(project: Project) -> None:
    project.write("config.toml", CONFIG.replace('name = "Acme SAS"\n', '')
                  .replace('postal_address = "12 rue de la Paix, 75002 Paris, France"\n', ''))
    result = project.send()
    assert result.exit_code == 3
    assert "[organization] name is empty" in result.output
    assert "[organization] postal_address is empty" in result.output
    assert project.messages() == []


def test_b2b_prospecting_without_relevance_is_refused(project: Project) -> None:
    text = project.campaign.read_text()
    project.campaign.write_text(text[:text.index("[relevance]")])
    result = project.send()
    assert result.exit_code == 3
    assert "needs a [relevance] table" in result.output


def test_smtp_transport_needs_a_vetted_processor(project: Project) -> None:
    project.write("config.toml", CONFIG.replace('type = "maildir"', 'type = "smtp"')
                  .replace('country = "FR"', 'country = "US"')
                  .replace('dpa_signed = true', 'dpa_signed = false'))
    result = project.send()
    assert result.exit_code == 3
    assert "dpa_signed is false" in result.output
    assert "outside the EEA" in result.output
    ok = CONFIG.replace('type = "maildir"', 'type = "smtp"').replace('country = "FR"', 'country = "US"') \
        .replace('dpa_signed = true', 'dpa_signed = true\ntransfer_mechanism = "dpf"')
    project.write("config.toml", ok)
    assert project.run("send", str(project.campaign), "--dry-run").exit_code == 0


def test_processor_is_not_required_for_the_maildir_outbox(project: Project) -> None:
    project.write("config.toml", CONFIG.replace('dpa_signed = true', 'dpa_signed = false'))
    assert project.send().exit_code == 0


def test_list_that_does_not_exist(project: Project) -> None:
    project.campaign.write_text(project.campaign.read_text().replace('csv = "../contacts.csv"\n', '')
                                .replace('list = "prospects"', 'list = "nobody"'))
    result = project.send()
    assert result.exit_code == 2
    assert "no contact list named 'nobody'" in result.output
    assert "mailer contacts import FILE --list nobody" in result.output


def test_debug_shows_the_traceback(project: Project) -> None:
    project.config.unlink()
    result = project.run("--debug", "check", str(project.campaign))
    assert result.exit_code == 2
    assert "Traceback" in result.output


# ------------------------------------------------------------------ contact values that would break headers

EVIL = "=?utf-8?b?WA0KQmNjOiBld0BldmlsLmV4YW1wbGUNCg==?="  # decodes to "X\r\nBcc: ew@evil.example\r\n"
ROW = ",CTO,software,b2b,Salon VivaTech 2026,2026-06-01\n"


def use_smtp(project: Project, port: int) -> None:
    project.write("config.toml", project.base_config.replace('type = "maildir"', 'type = "smtp"')
                  .replace("port = 2525", f"port = {port}"))


def shown_name(raw: bytes) -> str:
    """The To display name as a client decodes it (RFC 2047; see test_render.shown_name)."""
    value = re.search(rb"\r\nTo: (.*?)\r\n(?! )", raw, re.S)
    assert value is not None
    unfolded = value.group(1).replace(b"\r\n", b"").decode("ascii")
    if "=?" not in unfolded:
        return email.message_from_bytes(raw, policy=policy.default)["To"].addresses[0].display_name
    return str(make_header(decode_header(unfolded.rpartition(" <")[0])))


def assert_lines_fit(raw: bytes) -> None:
    """No line over 998 octets; no header line over 78 where it had a space to fold at."""
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        assert len(line) <= 78 or b" " not in line.lstrip(b" ").partition(b": ")[2], line


def test_an_encoded_word_in_a_csv_name_is_shown_as_typed_and_adds_no_recipient(project: Project) -> None:
    project.csv.write_text(HEADER + f"claire@client.example,{EVIL},Durand,Client SA" + ROW, encoding="utf-8")
    preview = project.run("preview", str(project.campaign), "--to", "claire@client.example",
                          "--out", str(project.root / "preview"))
    assert preview.exit_code == 0, preview.output
    assert f"Subject: {EVIL}, votre audit cloud offert\n" in preview.output and "Bcc" not in preview.output
    handler = RecordingHandler()
    with SmtpServer(handler) as server:
        use_smtp(project, server.port)
        result = project.send()
    assert result.exit_code == 0, result.output
    [received] = handler.received
    assert received.rcpt_to == ["claire@client.example"]
    message = received.message
    assert message["Subject"] == f"{EVIL}, votre audit cloud offert"
    assert shown_name(received.data) == f"{EVIL} Durand"
    assert [a.addr_spec for a in message["To"].addresses] == ["claire@client.example"]
    assert "Bcc" not in message and b"evil.example" not in received.data


def test_long_quoted_emoji_rtl_and_control_character_names_are_delivered_folded(project: Project) -> None:
    quoted = 'O\'Brien "the boss" \\ Durand, SA; <ceo@evil.example> @home'
    project.csv.write_text(HEADER + "".join(f"{address},{_csv(first)},{_csv(last)},Co" + ROW for address, first, last in [
        ("claire@client.example", "x" * 5000, quoted),
        ("paul@telco.example", "Zoé 😀 👩‍👩‍👧", "שלום عربي"),
        ("marc@soft.example", "Ma\x02rc\x01\x1b[31m\x7f\x9b", "Pe\u2028tit\x85"),
    ]), encoding="utf-8")
    tail = "votre audit cloud offert " * 30
    project.campaign.write_text(project.campaign.read_text().replace(
        'subject = "{{ contact.first_name }}, votre audit cloud offert"',
        f'subject = "{{{{ contact.last_name }}}}, {tail}"'))
    handler = RecordingHandler()
    with SmtpServer(handler) as server:  # aiosmtpd answers "500 Line too long" past 998 octets and CRLF
        use_smtp(project, server.port)
        result = project.send()
    assert result.exit_code == 0, result.output
    got = {item.rcpt_to[0]: item for item in handler.received}
    assert sorted(got) == ["claire@client.example", "marc@soft.example", "paul@telco.example"]
    expected = {
        "claire@client.example": ("x" * 199 + "…", f"{quoted}, {tail.strip()}"),
        "paul@telco.example": ("Zoé 😀 👩‍👩‍👧 שלום عربي", f"שלום عربي, {tail.strip()}"),
        "marc@soft.example": ("Ma rc [31m Pe tit", f"Pe tit, {tail.strip()}"),
    }
    for address, item in got.items():
        assert item.rcpt_to == [address]
        assert_lines_fit(item.data)
        message = item.message
        assert (shown_name(item.data), message["Subject"]) == expected[address]
        assert [a.addr_spec for a in message["To"].addresses] == [address]
        assert not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for _, value in message.items() for c in value)


def _csv(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def test_a_subject_longer_than_998_characters_is_a_template_error(project: Project) -> None:
    project.csv.write_text(HEADER + f"claire@client.example,{'x' * 5000},Durand,Client SA" + ROW, encoding="utf-8")
    result = project.run("check", str(project.campaign), "--no-dns")
    assert result.exit_code == 2
    assert f"{project.campaign}: [campaign] subject: the subject for claire@client.example is 5,026 characters" \
        in result.output
    assert "truncate" in result.output and "Traceback" not in result.output
    assert project.send().exit_code == 2
    assert project.messages() == []


def test_a_from_domain_mixing_scripts_is_refused_naming_file_value_and_fix(project: Project) -> None:
    look_alike = "jeanne@\u0430cme.example"  # a Cyrillic а, then Latin "cme"
    project.write("campaigns/offer.toml", CAMPAIGN.replace(
        'from = "Jeanne Martin <jeanne@acme.example>"', f'from = "Jeanne Martin <{look_alike}>"'))
    result = project.send("--dry-run")
    assert result.exit_code == 2, result.output
    assert f"{project.campaign}:6: [campaign] from: '{look_alike}': the domain label '\u0430cme' mixes Cyrillic " \
           "and Latin letters ('\u0430' is CYRILLIC SMALL LETTER A" in result.output
    assert "(it is sent as xn--cme-5cd.example); type the domain again in one script" in result.output
    project.write("campaigns/offer.toml", CAMPAIGN.replace('locale = "fr"', f'locale = "fr"\nreply_to = "{look_alike}"'))
    result = project.send("--dry-run")
    assert result.exit_code == 2 and "[campaign] reply_to: " in result.output, result.output
    assert project.messages() == []


def test_one_script_per_label_is_accepted_accents_included(project: Project) -> None:
    for sender in ("jeanne@b\u00fccher.fr", "info@\u65e5\u672c\u8a9e\u3072\u3089\u304c\u306a.jp",
                   "info@\u0442\u0435\u0441\u0442.\u0440\u0444", "jeanne@acme.example"):
        project.write("campaigns/offer.toml", CAMPAIGN.replace("jeanne@acme.example", sender))
        result = project.send("--dry-run")
        assert result.exit_code == 0, f"{sender}: {result.output}"


def test_our_own_addresses_in_config_mixing_scripts_are_refused(project: Project) -> None:
    project.write("config.toml", project.base_config.replace('contact_email = "dpo@acme.example"',
                                                             'contact_email = "dpo@\u0430cme.example"')
                  .replace('mailto = "unsubscribe@acme.example"', 'mailto = "unsubscribe@acm\u0435.example"'))
    result = project.send("--dry-run")
    assert result.exit_code == 2, result.output
    assert "2 problems" in result.output
    assert f"{project.config}:5: [organization] contact_email 'dpo@\u0430cme.example': the domain label" in result.output
    assert f"{project.config}:27: [unsubscribe] mailto 'unsubscribe@acm\u0435.example': the domain label" \
           in result.output
