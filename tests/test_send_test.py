"""`mailer send --test-to`: one person's message to a reviewer's address, recording nothing."""
from __future__ import annotations

import email
import re
from email import policy

import httpx
from conftest import SECRET, Project
from smtp_server import RecordingHandler, SmtpServer
from test_send_smtp import use_smtp
from web_server import UnsubscribeServer

from mailer import open_workspace

BOTH_DATABASES = True


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=policy.default)


def nothing_recorded(project: Project) -> None:
    assert project.sql("select count(*) from send_log") == [(0,)]
    assert project.sql("select count(*) from suppressions") == [(0,)]
    assert project.sql("select count(*) from contacts where email like 'me@%'") == [(0,)]


def test_the_first_allowed_message_goes_to_the_test_address_and_nothing_is_recorded(project: Project) -> None:
    result = project.run("send", str(project.campaign), "--test-to", "me@acme.example")
    assert result.exit_code == 0, result.output
    assert "Sent a test of claire@client.example's message to me@acme.example" in result.output
    [raw] = project.messages()
    message = parse(raw)
    assert message["To"] == "me@acme.example" and message["Subject"] == "[TEST] Claire, votre audit cloud offert"
    assert "Client SA" in message.get_body(("plain",)).get_content()  # Claire's message, footer included
    assert "se désabonner en un clic" in message.get_body(("html",)).get_content()
    nothing_recorded(project)
    # the campaign itself is untouched: Claire and Paul are both still to be mailed
    assert project.send().exit_code == 0
    assert sorted(parse(m)["To"].addresses[0].addr_spec for m in project.messages()) == [
        "claire@client.example", "me@acme.example", "paul@telco.example"]


def test_a_test_messages_unsubscribe_link_and_mailto_record_nothing(project: Project) -> None:
    assert project.run("send", str(project.campaign), "--test-to", "me@acme.example").exit_code == 0
    message = parse(project.messages()[0])
    header = message["List-Unsubscribe"]
    url = re.search(r"<(https://[^>]+)>", header).group(1)
    workspace = open_workspace(project.config, {"MAILER_SECRET": SECRET})
    with UnsubscribeServer(workspace) as server:
        local = url.replace("https://mail.acme.fr", server.url)
        page = httpx.get(local)
        assert page.status_code == 200 and "message de test" in page.text
        posted = httpx.post(local, data={"List-Unsubscribe": "One-Click"})
        assert posted.status_code == 200 and "rien n'a été enregistré" in posted.text
    workspace.close()
    inbox = project.root / "inbox" / "new"
    inbox.mkdir(parents=True)
    subject = re.search(r"subject=([^>]+)>", header).group(1)
    (inbox / "1.eml").write_bytes(f"From: me@acme.example\r\nSubject: {subject}\r\n\r\n".encode())
    result = project.run("suppress", "mailto", str(project.root / "inbox"))
    assert "0 added" in result.output
    nothing_recorded(project)


def test_as_a_blocked_contact_says_so_and_sends_their_message(project: Project) -> None:
    result = project.run("send", str(project.campaign), "--test-to", "me@acme.example", "--as", "Marc@Soft.example")
    assert result.exit_code == 0, result.output
    assert "marc@soft.example would not be sent this campaign (not-relevant" in result.output
    assert parse(project.messages()[0])["Subject"] == "[TEST] Marc, votre audit cloud offert"
    unknown = project.run("send", str(project.campaign), "--test-to", "me@acme.example", "--as", "who@else.example")
    assert unknown.exit_code == 2 and "who@else.example is not among the recipients" in unknown.output
    bad = project.run("send", str(project.campaign), "--test-to", "not an address")
    assert bad.exit_code == 2 and "--test-to 'not an address' is not an email address" in bad.output
    nothing_recorded(project)


def test_over_smtp_the_test_goes_through_the_relay(project: Project) -> None:
    handler = RecordingHandler()
    with SmtpServer(handler) as server:
        use_smtp(project, server.port)
        result = project.run("send", str(project.campaign), "--test-to", "me@acme.example")
    assert result.exit_code == 0, result.output
    assert handler.recipients() == {"me@acme.example": 1}
    assert handler.received[0].message["Subject"] == "[TEST] Claire, votre audit cloud offert"
    nothing_recorded(project)
