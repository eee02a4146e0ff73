"""Reading suppression files (addresses, @domains, CSV), mailto opt-out messages, bounce reports
and spam complaints (ARF feedback reports)."""
from __future__ import annotations

import csv
import email
import io
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote

from .errors import CsvError


def read_suppression_file(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CsvError([f"{path}: not UTF-8"], hint="save the file as UTF-8") from None
    lines = text.splitlines()
    first = lines[0].strip().lower() if lines else ""
    if "," in first or ";" in first or first == "email":
        delimiter = ";" if first.count(";") > first.count(",") else ","
        reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        if "email" not in fields:
            raise CsvError([f"{path}:1: no 'email' column (found: {', '.join(fields)})"])
        column = (reader.fieldnames or [])[fields.index("email")]
        values = []
        for row in reader:
            value = (row.get(column) or "").strip()
            if value:
                values.append(value)
        return values
    problems, values = [], []
    for number, line in enumerate(lines, start=1):
        value = line.strip()
        if not value or value.startswith("#"):
            continue
        if "@" not in value or any(c.isspace() for c in value):
            problems.append(f"{path}:{number}: {value!r} is neither an address nor @domain")
            continue
        values.append(value)
    if problems:
        raise CsvError(problems, hint="one address or @domain per line; nothing was imported")
    return values


# ----------------------------------------------------------------------------- mailto opt-outs

_TOKEN_IN_SUBJECT = re.compile(r"unsubscribe-([A-Za-z0-9_\-.]{40,400})")


def message_files(paths: list[Path]) -> Iterator[Path]:
    """Message files given directly, or found in folders (a maildir's new/ and cur/ included).

    Every entry that is not a folder is yielded, a dangling link or a pipe too, and so is a
    folder that cannot be listed: `read_message` then says why it cannot be read, rather
    than the entry being passed over in silence.
    """
    for path in paths:
        yield from sorted(_entries(path)) if path.is_dir() else [path]


def _entries(folder: Path) -> list[Path]:
    """The files (of any kind, hidden ones excepted) under `folder`, and its folders that cannot be listed."""
    found: list[Path] = []

    def unlistable(exc: OSError) -> None:
        found.append(Path(exc.filename or folder))

    for parent, _, files in os.walk(folder, onerror=unlistable):
        found.extend(Path(parent) / name for name in files if not name.startswith("."))
    return found


#: Inbound mail is read one message at a time, and no more than this of each: a bigger file
#: is not an opt-out or a bounce report anyone sent us.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024


class UnreadableMessage(Exception):
    """A file of inbound mail that cannot be read or parsed: it is reported and left in place,
    and the other messages are processed (anyone can mail the addresses they come from)."""


def read_message(path: Path, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    """The bytes of one message file; UnreadableMessage (with a reason naming no one) otherwise."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            os.listdir(path)  # a folder os.walk could not list: say why
            raise UnreadableMessage("is a folder")
        if not stat.S_ISREG(mode):
            raise UnreadableMessage("is not a regular file")
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise UnreadableMessage(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(data) > limit:
        raise UnreadableMessage(f"is larger than {limit // (1024 * 1024)} MB")
    return data


Parsed = TypeVar("Parsed")


def parse_message_file(path: Path, parse: Callable[[bytes], Parsed]) -> Parsed:
    """`parse` (token_from_message, bounces_in) on the file's bytes. Any exception of the email
    package on crafted input (an `a*` parameter, nesting past the recursion limit…) becomes
    UnreadableMessage; only its type is kept, since its text may quote the message."""
    data = read_message(path)
    try:
        return parse(data)
    except UnreadableMessage:
        raise
    except Exception as exc:  # noqa: BLE001 - the parser's bugs on hostile input must not stop the others
        raise UnreadableMessage(f"cannot be parsed as a message ({type(exc).__name__})") from None


#: A mailto opt-out's Subject is "unsubscribe-TOKEN" (under 500 characters). The email package's
#: header decoding grows faster than the header (a 280 KB Subject of encoded words took 2.8 GB):
#: a longer Subject is not read.
MAX_SUBJECT_BYTES = 8 * 1024


def token_from_message(data: bytes) -> str | None:
    """The unsubscribe token in the Subject of a mail sent to the List-Unsubscribe mailto address."""
    raw = BytesHeaderParser(policy=policy.compat32).parsebytes(data).get("Subject", "")
    if len(str(raw)) > MAX_SUBJECT_BYTES:
        raise UnreadableMessage(f"has a Subject over {MAX_SUBJECT_BYTES // 1024} KB (an opt-out's is one line)")
    message = email.message_from_bytes(data, policy=policy.default)
    subject = str(message.get("Subject", ""))
    match = _TOKEN_IN_SUBJECT.search(unquote(subject))
    return match.group(1) if match else None


# ----------------------------------------------------------------------------- bounce reports

ENHANCED_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})")


def hard_bounce_status(status: str) -> bool:
    """An enhanced status code (RFC 3463) that says the *address* is bad for good: 5.1.x
    (no such mailbox, no such domain…) or 5.2.1 (mailbox disabled); not a refused message."""
    match = ENHANCED_STATUS.match(status)
    if match is None:
        return False
    return match.group(1) == "5" and (match.group(2) == "1" or (match.group(2) == "2" and match.group(3) == "1"))


@dataclass(frozen=True)
class Bounce:
    """One recipient of a delivery status notification (RFC 3464)."""

    recipient: str       # Final-Recipient (or Original-Recipient), the address only
    action: str          # failed, delayed, delivered, relayed, expanded
    status: str          # e.g. 5.1.1
    diagnostic: str      # the remote server's answer, when given
    message_id: str      # Message-ID of the message that bounced, from the returned headers


def bounces_in(data: bytes) -> list[Bounce] | None:
    """The recipients a bounce report (multipart/report; report-type=delivery-status) speaks
    of, or None when the message is not one (an auto-reply, a person writing back)."""
    message = email.message_from_bytes(data, policy=policy.compat32)
    if message.get_content_type() != "multipart/report":
        return None
    blocks: list[email.message.Message] = []
    original_id = ""
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/delivery-status":
            payload = part.get_payload()
            blocks = [b for b in payload if isinstance(b, email.message.Message)] if isinstance(payload, list) else []
        elif kind in ORIGINAL_PARTS and not original_id:
            original_id = str(_enclosed(part).get("Message-ID", "")).strip()
    if not blocks:
        return None
    found = []
    for block in blocks[1:]:  # the first block is about the message, the others about recipients
        recipient = str(block.get("Final-Recipient") or block.get("Original-Recipient") or "")
        if not recipient:
            continue
        found.append(Bounce(recipient=recipient.partition(";")[2].strip() or recipient.strip(),
                            action=str(block.get("Action", "")).strip().lower(),
                            status=str(block.get("Status", "")).strip(),
                            diagnostic=" ".join(str(block.get("Diagnostic-Code", "")).partition(";")[2].split()),
                            message_id=original_id))
    return found


#: The parts of a report (RFC 3462, RFC 5965) that return the original message, or its headers.
ORIGINAL_PARTS = ("text/rfc822-headers", "message/rfc822", "message/rfc822-headers")


def _enclosed(part: email.message.Message) -> email.message.Message:
    """The message (or header block) a message/* or text/rfc822-headers part holds: parsed by the
    email package already, or, when it came encoded (base64, quoted-printable), parsed here."""
    inner = part.get_payload()
    if isinstance(inner, list) and inner and isinstance(inner[0], email.message.Message):
        return inner[0]
    raw = part.get_payload(decode=True)
    return email.message_from_bytes(raw if isinstance(raw, bytes) else b"", policy=policy.compat32)


# ----------------------------------------------------------------------------- spam complaints (ARF)

#: Feedback types (RFC 5965, IANA registry) that are not a recipient objecting to the message:
#: every other type (abuse, fraud, virus, other, and unknown ones, read as other) is a complaint.
NOT_COMPLAINTS = frozenset({"not-spam", "auth-failure"})

#: A report names one recipient, and our List-Unsubscribe is a few hundred characters: no more of
#: each field is read (a 5 MB To of 300,000 addresses took 20 s to parse, before validating each).
MAX_FIELD = 2000
MAX_VALUES = 10

_FEEDBACK_TYPE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}\Z")
_MESSAGE_ID = re.compile(r"<[^<>\s]{1,995}>")
_TOKEN_IN_URL = re.compile(r"/u/([A-Za-z0-9_\-.]{40,400})")


@dataclass(frozen=True)
class FeedbackReport:
    """What a feedback report (RFC 5965) says of the message a recipient reported."""

    feedback_type: str    # abuse, fraud, virus, other, not-spam, auth-failure… (lower case)
    message_id: str       # the reported message's Message-ID, as "<…>"; "" when the report returns none
    #: the addresses the report names as the recipient (Original-Rcpt-To, Removal-Recipient, the
    #: original's To); a redacted one ("redacted", "xxxxx@yahoo.com"…) is kept as written
    named: tuple[str, ...]
    #: the unsubscribe tokens in the original's List-Unsubscribe (its URL and mailto)
    tokens: tuple[str, ...]
    reported_at: datetime | None  # the report's Date, when it gives a sensible one

    @property
    def complaint(self) -> bool:
        return self.feedback_type not in NOT_COMPLAINTS


def feedback_report_in(data: bytes) -> FeedbackReport | None:
    """The feedback report (multipart/report; report-type=feedback-report) a message is, or None
    when it is not one (a bounce, an auto-reply, a person writing). UnreadableMessage when it says
    it is one but its parts cannot be read: a complaint may be in it, so someone should look."""
    message = email.message_from_bytes(data, policy=policy.compat32)
    if message.get_content_type() != "multipart/report" or \
            str(message.get_param("report-type", "")).strip().lower() != "feedback-report":
        return None
    parts = message.get_payload()
    if not message.is_multipart() or not isinstance(parts, list):
        raise UnreadableMessage("is a feedback report whose MIME parts cannot be read")
    fields: email.message.Message | None = None
    original: email.message.Message | None = None
    for part in parts:
        if not isinstance(part, email.message.Message):
            continue
        kind = part.get_content_type()
        if kind == "message/feedback-report" and fields is None:
            fields = _enclosed(part)
        elif kind in ORIGINAL_PARTS and original is None:
            original = _enclosed(part)
    if fields is None:
        raise UnreadableMessage("is a feedback report without its message/feedback-report part")
    feedback_type = " ".join(str(fields.get("Feedback-Type", "")).split()).lower()
    if not _FEEDBACK_TYPE.match(feedback_type):
        raise UnreadableMessage("is a feedback report without a readable Feedback-Type")
    original = original if original is not None else email.message.Message()
    named = [str(v)[:MAX_FIELD] for name in ("Original-Rcpt-To", "Removal-Recipient")
             for v in fields.get_all(name, [])[:MAX_VALUES]]
    named += [str(v)[:MAX_FIELD] for v in original.get_all("To", [])[:MAX_VALUES]]
    unsubscribe = "".join("".join(str(v)[:MAX_FIELD].split()) for v in original.get_all("List-Unsubscribe", [])[:2])
    tokens = [*_TOKEN_IN_URL.findall(unsubscribe), *_TOKEN_IN_SUBJECT.findall(unsubscribe)]
    return FeedbackReport(
        feedback_type=feedback_type, message_id=message_id_of(str(original.get("Message-ID", ""))),
        named=tuple(dict.fromkeys(a for _, a in getaddresses(named) if a)), tokens=tuple(dict.fromkeys(tokens)),
        reported_at=_date(str(message.get("Date", ""))))


def message_id_of(value: str) -> str:
    """A Message-ID header's id as the send log holds it ("<…>"): folded, or written without its
    angle brackets (RFC 5965's own example), it is the same id."""
    value = " ".join(value.split())
    found = _MESSAGE_ID.search(value)
    if found:
        return found.group(0)
    return f"<{value}>" if value and "@" in value and " " not in value and len(value) < 996 else ""


def _date(value: str) -> datetime | None:
    """A Date header as an aware datetime; None when missing, unreadable, or in the future."""
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when if when <= datetime.now(UTC) else None
