"""Inbound mail is written by anyone: one message the email package cannot read must not stop
the opt-outs and bounce reports behind it (`mailer suppress mailto` / `suppress bounces`)."""
from __future__ import annotations

import email
import os
import re
import shutil
from email import policy
from pathlib import Path

from conftest import Project
from test_bounces import CLAIRE, report, sent_to

from mailer.suppression import MAX_MESSAGE_BYTES


def nested_multiparts(depth: int) -> bytes:
    """Multiparts inside multiparts, deeper than Python's recursion limit."""
    head = b"".join(b"Content-Type: multipart/mixed; boundary=B%d\r\n\r\n--B%d\r\n" % (i, i) for i in range(depth))
    return b"Subject: hello\r\n" + head + b"Content-Type: text/plain\r\n\r\nhi\r\n"


#: name -> (bytes, True when the file cannot be read as a message at all). Names sort before
#: "zz-", the valid message's, so each is met first.
MALFORMED: dict[str, tuple[bytes, bool]] = {
    "a-star-parameter": (b"Content-Type: text/plain; a*\r\nSubject: stop\r\n\r\nstop\r\n", True),
    "a-star-in-a-part": (b"Subject: stop\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
                         b"Content-Type: text/plain; a*\r\n\r\nstop\r\n--B--\r\n", True),
    "broken-rfc2231": (b"Content-Type: text/plain; name*0*=us-ascii'en'a; name*2=\"b\"; name*1*=%E2%\r\n"
                       b"Subject: stop\r\n\r\nstop\r\n", False),
    "bad-base64": (b"Subject: =?utf-8?b?!!!?=\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!=\r\n", False),
    "undecodable-charset": (b"Subject: =?x-unknown?q?unsubscribe-abc?=\r\nContent-Type: text/plain; charset=x-bogus"
                            b"\r\n\r\n\xff\xfe\r\n", False),
    "truncated-multipart": (b"Subject: stop\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
                            b"Content-Type: text/plain\r\n\r\nsto", False),
    "binary-junk": (bytes(range(256)) * 40, False),
    "nested-too-deep": (nested_multiparts(3000), True),
    # The email package's header decoding grows faster than the header: 2.8 MB of these took 6 GB.
    "subject-of-encoded-words": (("Subject: " + "=?utf-8?q?a?= " * 20000 + "\r\n\r\n").encode(), True),
}


def place(inbox: Path, name: str, data: bytes | None) -> None:
    """A malformed entry: bytes, or (None) the two entries that are not files one can read."""
    if data is not None:
        (inbox / f"{name}.eml").write_bytes(data)
    elif name == "dangling-link":
        (inbox / f"{name}.eml").symlink_to(inbox / "gone.eml")
    else:
        os.mkfifo(inbox / f"{name}.eml")  # a reader that opened it would wait for ever


def opt_out(project: Project) -> bytes:
    """The message a mail client writes for the List-Unsubscribe mailto link of Claire's message."""
    header = email.message_from_bytes(sent_to(project, CLAIRE), policy=policy.default)["List-Unsubscribe"]
    subject = re.search(r"subject=([^>]+)>", header).group(1)
    return f"From: {CLAIRE}\r\nTo: unsubscribe@acme.example\r\nSubject: {subject}\r\n\r\n".encode()


def test_a_malformed_message_does_not_stop_the_opt_outs_behind_it(project: Project, tmp_path: Path) -> None:
    assert project.send().exit_code == 0
    valid = opt_out(project)
    cases: dict[str, tuple[bytes | None, bool]] = {**MALFORMED, "dangling-link": (None, True), "a-pipe": (None, True),
                                                   "huge": (b"Subject: x\r\n\r\n" + b"a" * MAX_MESSAGE_BYTES, True)}
    for name, (data, unreadable) in cases.items():
        inbox = tmp_path / name / "new"
        inbox.mkdir(parents=True)
        place(inbox, name, data)
        (inbox / "zz-valid.eml").write_bytes(valid)
        project.sql("delete from suppressions")
        result = project.run("suppress", "mailto", str(inbox.parent))
        assert project.sql("select origin from suppressions") == [("mailto",)], (name, result.output)
        assert result.stdout.startswith("1 added, 0 already on the list"), (name, result.output)
        if unreadable:
            assert result.exit_code == 4, (name, result.output)
            assert result.stderr.startswith("1 files could not be read and were left in place:\n"
                                            f"  {inbox / name}.eml: "), (name, result.stderr)
        else:  # readable, without a token: listed as any stray reply is
            assert result.exit_code == 0, (name, result.output)
            assert f"{inbox / name}.eml: no unsubscribe-TOKEN in the subject" in result.stdout, (name, result.output)
        assert "Error:" not in result.output and "Traceback" not in result.output
        assert (inbox / f"{name}.eml").is_symlink() or (inbox / f"{name}.eml").exists()  # left in place
        shutil.rmtree(tmp_path / name)


def test_the_reasons_name_the_file_and_the_fault_never_the_sender(project: Project, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    place(inbox, "a-star", b"From: claire@client.example\r\nContent-Type: text/plain; a*\r\n\r\nstop\r\n")
    place(inbox, "dangling-link", None)
    (inbox / "huge.eml").write_bytes(b"From: claire@client.example\r\n\r\n" + b"a" * (MAX_MESSAGE_BYTES + 1))
    result = project.run("suppress", "mailto", str(inbox))
    assert result.exit_code == 4
    assert result.stderr.splitlines() == [
        "3 files could not be read and were left in place:",
        f"  {inbox}/a-star.eml: cannot be parsed as a message (IndexError)",
        f"  {inbox}/dangling-link.eml: cannot be read (No such file or directory)",
        f"  {inbox}/huge.eml: is larger than 10 MB"]
    assert "claire" not in result.output


def test_a_malformed_file_does_not_stop_the_bounce_reports_behind_it(project: Project, tmp_path: Path) -> None:
    assert project.send().exit_code == 0
    box = tmp_path / "bounces"
    box.mkdir()
    for name, (data, _) in MALFORMED.items():
        place(box, name, data)
    place(box, "dangling-link", None)
    place(box, "a-pipe", None)
    (box / "zz-bounce.eml").write_bytes(report(sent_to(project, CLAIRE), CLAIRE, "5.1.1"))
    result = project.run("suppress", "bounces", str(box))
    assert result.exit_code == 4, result.output
    assert result.stdout.startswith("1 hard bounces added, 0 already on the list"), result.output
    assert project.sql("select origin from suppressions") == [("bounce",)]
    assert result.stderr.splitlines() == [
        "3 files could not be read and were left in place:",
        f"  {box}/a-pipe.eml: is not a regular file",
        f"  {box}/dangling-link.eml: cannot be read (No such file or directory)",
        f"  {box}/nested-too-deep.eml: cannot be parsed as a message (RecursionError)"]
    assert len(list(box.iterdir())) == len(MALFORMED) + 3  # every file left in place
