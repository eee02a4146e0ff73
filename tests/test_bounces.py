"""`mailer suppress bounces`: hard bounces reported after the relay accepted the message."""
from __future__ import annotations

import email
from email import policy
from pathlib import Path

import pytest
from conftest import Project, counts

BOTH_DATABASES = True  # also run on PostgreSQL when MAILER_TEST_POSTGRES_URL is set

CLAIRE = "claire@client.example"


def sent_to(project: Project, address: str) -> bytes:
    for data in project.messages():
        if email.message_from_bytes(data, policy=policy.default)["To"].addresses[0].addr_spec == address:
            return data
    raise AssertionError(f"nothing was sent to {address}")


def report(original: bytes, recipient: str, status: str, *, action: str = "failed", whole: bool = False) -> bytes:
    """A delivery status notification (RFC 3464) as Postfix writes one, returning the original's
    headers (or, with whole, the whole original message)."""
    headers = original.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    returned = (b"Content-Type: message/rfc822\r\n\r\n" + original) if whole else \
        (b"Content-Type: text/rfc822-headers\r\n\r\n" + headers)
    return (
        b"From: MAILER-DAEMON@relay.example (Mail Delivery System)\r\n"
        b"To: bounces@acme.example\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"BOUNDARY\"\r\n\r\n"
        b"--BOUNDARY\r\nContent-Type: text/plain\r\n\r\nThis is the mail system at host relay.example.\r\n\r\n"
        b"--BOUNDARY\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; relay.example\r\nArrival-Date: Sun, 29 Nov 2026 05:00:00 +0000\r\n\r\n"
        + f"Final-Recipient: rfc822; {recipient}\r\nOriginal-Recipient: rfc822;{recipient}\r\n"
          f"Action: {action}\r\nStatus: {status}\r\n"
          f"Diagnostic-Code: smtp; 550 {status} <{recipient}>: Recipient address rejected\r\n\r\n".encode()
        + b"--BOUNDARY\r\n" + returned + b"\r\n--BOUNDARY--\r\n")


@pytest.mark.parametrize("whole", [False, True], ids=["headers-returned", "message-returned"])
def test_a_hard_bounce_suppresses_the_address_for_every_later_campaign(project: Project, tmp_path: Path,
                                                                       whole: bool) -> None:
    assert project.send().exit_code == 0
    (tmp_path / "bounces").mkdir()
    bounce = tmp_path / "bounces" / "bounce.eml"
    bounce.write_bytes(report(sent_to(project, CLAIRE), CLAIRE, "5.1.1", whole=whole))
    first = project.run("suppress", "bounces", str(bounce))
    assert first.exit_code == 0, first.output
    assert first.output.startswith("1 hard bounces added, 0 already on the list"), first.output
    assert project.sql("select origin, campaign_id, reason from suppressions") == [
        ("bounce", "2026-12-cloud-audit", "5.1.1 550 5.1.1 <claire@client.example>: Recipient address rejected")]
    status = project.run("status", str(project.campaign))
    assert "hard bounces" in status.output and "1  (now on the suppression list)" in status.output, status.output
    again = project.run("suppress", "bounces", str(tmp_path / "bounces"))
    assert again.output.startswith("0 hard bounces added, 1 already on the list")
    project.campaign.write_text(project.campaign.read_text().replace("2026-12-cloud-audit", "2027-01-next"))
    assert counts(project.send().output).get("suppressed") == 1


def test_delays_full_mailboxes_strays_and_replies_suppress_no_one(project: Project, tmp_path: Path) -> None:
    assert project.send().exit_code == 0
    original = sent_to(project, CLAIRE)
    box = tmp_path / "bounces"
    box.mkdir()
    (box / "delayed.eml").write_bytes(report(original, CLAIRE, "4.4.1", action="delayed"))
    (box / "full.eml").write_bytes(report(original, CLAIRE, "5.2.2"))
    stray = original.replace(b"Message-ID: <", b"Message-ID: <not-ours-")
    (box / "stray.eml").write_bytes(report(stray, CLAIRE, "5.1.1"))
    (box / "other.eml").write_bytes(report(original, "paul@telco.example", "5.1.1"))  # not who it was sent to
    (box / "reply.eml").write_bytes(b"From: claire@client.example\r\nSubject: Re: audit\r\n\r\nI am away.\r\n")
    result = project.run("suppress", "bounces", str(box))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("0 hard bounces added, 0 already on the list, 2 not permanent "
                                    "(delays, full mailboxes, refused messages), 2 not matched to a message mailer "
                                    "sent, 1 files that are not bounce reports."), result.output
    assert "stray.eml: claire@client.example (5.1.1) is not about a message mailer sent" in result.output
    assert "reply.eml: not a delivery status notification" in result.output
    assert project.sql("select count(*) from suppressions") == [(0,)]
