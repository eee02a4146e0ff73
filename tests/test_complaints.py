"""`mailer suppress complaints`: spam complaints (ARF feedback reports, RFC 5965) read from a
maildir, matched to the send log, and what status and explain then say.

The reports are tests/corpus/arf/*.eml, written in the styles mailbox providers send (see the
README there); their {{PLACEHOLDERS}} are filled from the message the test really sent.
"""
from __future__ import annotations

import email
import re
from email import policy
from email.utils import format_datetime
from pathlib import Path

import pytest
from conftest import Project, counts

from mailer.store.tables import utcnow

BOTH_DATABASES = True  # also run on PostgreSQL when MAILER_TEST_POSTGRES_URL is set

CORPUS = Path(__file__).parent / "corpus" / "arf"
CLAIRE = "claire@client.example"
PAUL = "paul@telco.example"
CAMPAIGN_ID = "2026-12-cloud-audit"

SUMMARY = re.compile(r"(\d+) complaints recorded \((\d+) added to the suppression list, (\d+) already on it\), (\d+) "
                     r"already recorded, (\d+) not matched to a message mailer sent, (\d+) reports that are not "
                     r"complaints \(not-spam, auth-failure\), (\d+) files that are not feedback reports\.")


def sent_to(project: Project, address: str) -> bytes:
    for data in project.messages():
        if email.message_from_bytes(data, policy=policy.default)["To"].addresses[0].addr_spec == address:
            return data
    raise AssertionError(f"nothing was sent to {address}")


def report(project: Project, name: str) -> bytes:
    """The corpus report `name`, about the message sent to Claire, with CRLF line ends as delivered."""
    original = sent_to(project, CLAIRE)
    headers = original.split(b"\r\n\r\n", 1)[0].decode("ascii")
    parsed = email.message_from_bytes(original, policy=policy.compat32)

    def header(name: str) -> str:
        return " ".join(str(parsed[name]).split())

    values = {
        "ORIGINAL": original.decode("utf-8"), "HEADERS": headers, "MESSAGE_ID": header("Message-ID"),
        "BARE_MESSAGE_ID": header("Message-ID").strip("<>"), "LIST_UNSUBSCRIBE": header("List-Unsubscribe"),
        "SUBJECT": header("Subject"), "DATE": header("Date"), "RECIPIENT": CLAIRE, "OTHER_RECIPIENT": PAUL,
        "REDACTED_ORIGINAL": original.decode("utf-8").replace(CLAIRE, "xxxxxxxx@client.example"),
        "REPORT_DATE": format_datetime(utcnow()),
    }
    text = (CORPUS / name).read_text(encoding="utf-8")
    text = re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: values[m.group(1)], text)
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def summary(output: str) -> tuple[int, ...]:
    """(recorded, added, already suppressed, already recorded, unmatched, not complaints, not reports)."""
    match = SUMMARY.search(output)
    assert match, output
    return tuple(int(n) for n in match.groups())


def suppressed(project: Project) -> list[tuple[str, str, str]]:
    return project.sql("SELECT origin, campaign_id, reason FROM suppressions ORDER BY id")


def check(project: Project, address: str) -> str:
    return project.run("suppress", "check", address).output


#: What each corpus report does, read alone after the campaign went to Claire and Paul:
#: (summary numbers, Claire suppressed by it, exit code).
COMPLAINT = (1, 1, 0, 0, 0, 0, 0)
EXPECTED: dict[str, tuple[tuple[int, ...], bool, int]] = {
    "yahoo-cfl-full-message.eml": (COMPLAINT, True, 0),
    "comcast-headers-only.eml": (COMPLAINT, True, 0),
    "aol-redacted-recipient.eml": (COMPLAINT, True, 0),
    "microsoft-jmrp-redacted.eml": (COMPLAINT, True, 0),
    "ses-message-id-replaced.eml": (COMPLAINT, True, 0),
    "rfc5965-bare-message-id.eml": (COMPLAINT, True, 0),
    "other-recipient-named.eml": (COMPLAINT, True, 0),
    "forged-unknown-message-id.eml": ((0, 0, 0, 0, 1, 0, 0), False, 0),
    "not-spam.eml": ((0, 0, 0, 0, 0, 1, 0), False, 0),
    "dmarc-auth-failure.eml": ((0, 0, 0, 0, 0, 1, 0), False, 0),
    "bounce-delivery-status.eml": ((0, 0, 0, 0, 0, 0, 1), False, 0),
    "out-of-office-reply.eml": ((0, 0, 0, 0, 0, 0, 1), False, 0),
    "malformed-mime.eml": ((0, 0, 0, 0, 0, 0, 0), False, 4),
}


def test_every_corpus_report_has_an_expected_outcome() -> None:
    assert sorted(p.name for p in CORPUS.glob("*.eml")) == sorted(EXPECTED)


@pytest.mark.databases("sqlite")  # what varies is the report; the maildir test below reads them all on both
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_report_style(project: Project, tmp_path: Path, name: str) -> None:
    assert project.send().exit_code == 0
    box = tmp_path / "fbl" / "new"
    box.mkdir(parents=True)
    (box / name).write_bytes(report(project, name))
    numbers, claire_suppressed, exit_code = EXPECTED[name]
    result = project.run("suppress", "complaints", str(tmp_path / "fbl"))
    assert result.exit_code == exit_code, result.output
    assert summary(result.output) == numbers
    if claire_suppressed:
        assert suppressed(project) == [("complaint", CAMPAIGN_ID, "abuse report")]
        assert project.sql("SELECT campaign_id, feedback_type FROM complaints") == [(CAMPAIGN_ID, "abuse")]
        assert "(complaint: abuse report)" in check(project, CLAIRE)
    else:
        assert suppressed(project) == [] and project.sql("SELECT count(*) FROM complaints") == [(0,)]
    assert f"{PAUL}: not on the suppression list." in check(project, PAUL)  # whatever a report names


def test_a_redacted_report_is_matched_by_the_message_id_alone(project: Project, tmp_path: Path) -> None:
    assert project.send().exit_code == 0
    data = report(project, "aol-redacted-recipient.eml")
    assert CLAIRE.encode() not in data  # her address is nowhere in it
    path = tmp_path / "aol.eml"
    path.write_bytes(data)
    assert summary(project.run("suppress", "complaints", str(path)).output) == COMPLAINT
    assert f"{CLAIRE}: suppressed." in check(project, CLAIRE)


def test_a_report_naming_another_recipient_suppresses_only_the_one_the_message_went_to(
        project: Project, tmp_path: Path) -> None:
    """The report carries Claire's Message-ID but names Paul (a forward of her message, or a
    forgery): Paul never received that message from us, so he is not suppressed; the complaint is
    about the message mailer sent to Claire, so she is."""
    assert project.send().exit_code == 0
    path = tmp_path / "other.eml"
    path.write_bytes(report(project, "other-recipient-named.eml"))
    result = project.run("suppress", "complaints", str(path))
    assert f"{path}: names another recipient than the one the message was sent to" in result.output
    assert PAUL not in result.output and CLAIRE not in result.output  # the output names no one
    assert f"{CLAIRE}: suppressed." in check(project, CLAIRE)
    assert f"{PAUL}: not on the suppression list." in check(project, PAUL)


def test_a_relay_that_replaced_the_message_id_is_matched_by_the_signed_unsubscribe_token(
        project: Project, tmp_path: Path) -> None:
    assert project.send().exit_code == 0
    path = tmp_path / "ses.eml"
    path.write_bytes(report(project, "ses-message-id-replaced.eml"))
    result = project.run("suppress", "complaints", str(path))
    assert "1 of them were matched by their unsubscribe token" in result.output
    assert project.sql("SELECT campaign_id, message_id FROM complaints") == [
        (CAMPAIGN_ID, "<0100018c2b5e5f6a-3e1c7d6e-8a4b-4f61-b5d2-7a9e0c1f2b3d-000000@email.amazonses.com>")]
    # the same report with the token altered (one character of its signature) matches nothing
    forged = path.read_bytes()
    token = re.search(rb"/u/([A-Za-z0-9_.-]+)>", forged).group(1)
    altered = token[:-1] + (b"A" if token[-1:] != b"A" else b"B")
    path.write_bytes(forged.replace(token, altered))
    project.sql("DELETE FROM complaints")
    project.sql("DELETE FROM suppressions")
    assert summary(project.run("suppress", "complaints", str(path)).output) == (0, 0, 0, 0, 1, 0, 0)
    assert suppressed(project) == []


def test_a_whole_maildir_of_reports_then_read_again_changes_nothing(project: Project, tmp_path: Path) -> None:
    assert project.send().exit_code == 0
    box = tmp_path / "fbl"
    for folder in ("new", "cur", "tmp"):
        (box / folder).mkdir(parents=True)
    for n, name in enumerate(sorted(EXPECTED)):
        (box / ("new" if n % 2 else "cur") / f"17645804{n:02d}.M1P2.mx:2,{name}").write_bytes(report(project, name))
    first = project.run("suppress", "complaints", str(box))
    assert first.exit_code == 4  # the malformed report: someone should look at it
    # seven reports about Claire's message: one complaint, the other six about the same one
    assert summary(first.output) == (1, 1, 0, 6, 1, 2, 2), first.output
    assert "forged-unknown-message-id.eml: not about a message mailer sent" in first.output
    assert "not-spam.eml: a not-spam report, not a complaint" in first.output
    assert "out-of-office-reply.eml: not a feedback report (ARF)" in first.output
    assert "1 files could not be read and were left in place" in first.stderr
    assert "malformed-mime.eml: is a feedback report whose MIME parts cannot be read" in first.stderr
    assert len(list(box.rglob("*.eml"))) == len(EXPECTED)  # every file left where it was
    before = (suppressed(project), project.sql("SELECT campaign_id, address_hash, message_id, feedback_type, "
                                               "reported_at, recorded_at FROM complaints"))
    again = project.run("suppress", "complaints", str(box))
    assert again.exit_code == 4 and summary(again.output) == (0, 0, 0, 7, 1, 2, 2), again.output
    assert (suppressed(project), project.sql("SELECT campaign_id, address_hash, message_id, feedback_type, "
                                             "reported_at, recorded_at FROM complaints")) == before


def test_status_counts_the_complaints_of_each_campaign(project: Project, tmp_path: Path) -> None:
    assert project.send().exit_code == 0
    path = tmp_path / "yahoo.eml"
    path.write_bytes(report(project, "yahoo-cfl-full-message.eml"))
    assert project.run("suppress", "complaints", str(path)).exit_code == 0
    one = project.run("status", str(project.campaign)).output
    assert "Complaints about it: 1 (50.00% of the messages sent; Gmail and Yahoo want under 0.3%)" in one, one
    lines = project.run("status").output.splitlines()
    assert lines[0].split()[-1] == "COMPLAINED" and lines[1].split()[-1] == "1", lines
    # the next campaign does not mail her
    project.campaign.write_text(project.campaign.read_text().replace(CAMPAIGN_ID, "2027-01-next"))
    assert counts(project.send().output).get("suppressed") == 1
    assert len(project.messages()) == 3  # Paul's second message only


def test_a_complaint_after_an_unsubscribe_still_counts(project: Project, tmp_path: Path) -> None:
    """Mailbox providers unsubscribe a person through List-Unsubscribe when they report spam; the
    feedback report that follows must still count as a complaint."""
    assert project.send().exit_code == 0
    assert project.run("suppress", "add", CLAIRE, "--reason", "one-click").exit_code == 0
    path = tmp_path / "yahoo.eml"
    path.write_bytes(report(project, "yahoo-cfl-full-message.eml"))
    assert summary(project.run("suppress", "complaints", str(path)).output) == (1, 0, 1, 0, 0, 0, 0)
    assert project.sql("SELECT origin FROM suppressions") == [("manual",)]
    assert "Complaints about it: 1" in project.run("status", CAMPAIGN_ID).output


def test_a_complaint_removed_by_hand_is_not_put_back_by_reading_the_reports_again(
        project: Project, tmp_path: Path) -> None:
    """`suppress remove` is for a person who asked to be mailed again: the cron job reading the
    same maildir must not undo it."""
    assert project.send().exit_code == 0
    path = tmp_path / "yahoo.eml"
    path.write_bytes(report(project, "yahoo-cfl-full-message.eml"))
    assert summary(project.run("suppress", "complaints", str(path)).output) == COMPLAINT
    assert project.run("suppress", "remove", CLAIRE, "--yes").exit_code == 0
    assert summary(project.run("suppress", "complaints", str(path)).output) == (0, 0, 0, 1, 0, 0, 0)
    assert f"{CLAIRE}: not on the suppression list." in check(project, CLAIRE)


def test_explain_tells_the_person_they_complained(project: Project, tmp_path: Path) -> None:
    assert project.send().exit_code == 0
    path = tmp_path / "yahoo.eml"
    path.write_bytes(report(project, "yahoo-cfl-full-message.eml"))
    assert project.run("suppress", "complaints", str(path)).exit_code == 0
    english = project.run("explain", CLAIRE, "--locale", "en").output
    assert f"you reported our message of campaign {CAMPAIGN_ID} as spam" in english, english
    french = project.run("explain", CLAIRE, "--locale", "fr").output
    assert f"vous avez signalé notre message de la campagne {CAMPAIGN_ID} comme indésirable" in french
    assert "reported" not in project.run("explain", PAUL, "--locale", "en").output


def test_a_complaint_about_an_erased_person_is_matched_through_the_hash_the_send_log_keeps(
        project: Project, tmp_path: Path) -> None:
    """Erased, then their provider reports the old message: the send log row is keyed by hash
    only, and the complaint is still recorded against it."""
    assert project.send().exit_code == 0
    path = tmp_path / "comcast.eml"
    path.write_bytes(report(project, "comcast-headers-only.eml"))
    assert project.run("forget", CLAIRE, "--yes").exit_code == 0
    assert summary(project.run("suppress", "complaints", str(path)).output) == (1, 0, 1, 0, 0, 0, 0)
    assert project.sql("SELECT c.address_hash = s.value, s.origin FROM complaints c, suppressions s") in (
        [(1, "erasure")], [(True, "erasure")])
    assert "you reported our message" in project.run("explain", CLAIRE, "--locale", "en").output
