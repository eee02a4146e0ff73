"""Bad input gets one clear error naming the file and line, exit code 2 (3 for compliance refusals)."""
from __future__ import annotations

from conftest import CONFIG, Project


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
    assert "offer.html.j2:2:" in result.output and "firstname" in result.output
    assert "contact.attrs.NAME" in result.output
    send = project.send()
    assert send.exit_code == 2
    assert project.messages() == []


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
