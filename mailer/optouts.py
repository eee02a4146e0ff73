"""The suppression list fed by hand, from files, and from inbound mail (mailto opt-outs, bounces,
spam complaints)."""
from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from .addresses import NormalisedAddress, domain_and_parents, normalise, valid_domain
from .errors import InputError
from .spool import SpooledOptOut
from .store import Suppression, utcnow
from .store.people import ERASED_PREFIX, erased_key
from .suppression import (
    FeedbackReport,
    UnreadableMessage,
    bounces_in,
    feedback_report_in,
    hard_bounce_status,
    message_files,
    parse_message_file,
    read_suppression_file,
    token_from_message,
)
from .tokens import InvalidToken, UnsubscribeToken, verify
from .workspace import Workspace


def suppression_target(ws: Workspace, value: str) -> tuple[str, str]:
    """("domain", domain) for "@domain", ("address", keyed hash) for an address."""
    value = value.strip()
    if value.startswith("@"):
        domain = valid_domain(value)
        if not domain or "." not in domain:
            raise InputError(f"{value!r} is not a domain", hint="write a domain as @example.com (its subdomains "
                                                                  "are covered)")
        return "domain", domain
    return "address", ws.hash_address(suppression_address(value).key)


_QUOTED_DOT_ATOM = re.compile(r'"([A-Za-z0-9!#$%&\'*+/=?^_`{|}~.-]+)"\Z')


def suppression_address(value: str) -> NormalisedAddress:
    """The address a suppression names, written as people paste it ("Name <a@b>", "<a@b>",
    "mailto:a@b", a quoted local part, a domain's trailing dot); one that is not an address
    is refused rather than kept as a spelling nothing would ever match."""
    given = value.strip()
    if given.lower().startswith("mailto:"):
        given = given[len("mailto:"):].split("?", 1)[0]
    if "<" in given or ">" in given:
        given = parseaddr(given)[1]
    local, at, domain = given.rpartition("@")
    quoted = _QUOTED_DOT_ATOM.match(local)
    if quoted and not quoted.group(1).startswith(".") and ".." not in quoted.group(1):
        local = quoted.group(1)
    address = normalise(f"{local}{at}{domain.rstrip('.')}")
    if not at or not address.valid:
        raise InputError(f"{value!r} is not an address{': ' + address.reason if address.reason else ''}",
                         hint="write an address as name@example.com, or a domain as @example.com")
    return address


@dataclass
class Added:
    read: int      # distinct entries given
    added: int     # new on the list

    @property
    def known(self) -> int:
        return self.read - self.added


def suppress(ws: Workspace, values: Iterable[str], *, reason: str = "", origin: str = "manual") -> Added:
    """Put addresses and @domains on the suppression list."""
    targets = [suppression_target(ws, v) for v in values]
    added = ws.store.suppressions.add_many(targets, origin=origin, reason=reason)
    return Added(len(set(targets)), added)


def import_suppressions(ws: Workspace, path: Path, *, reason: str = "") -> tuple[int, Added]:
    """A file of addresses and @domains (one per line, or a CSV with an email column):
    (entries read, what was added)."""
    values = read_suppression_file(path)
    return len(values), suppress(ws, values, reason=reason, origin="import")


def unsuppress(ws: Workspace, value: str) -> bool:
    """Remove an address (every spelling of its mailbox) or @domain from the list; False when
    it was not there."""
    scope, target = suppression_target(ws, value)
    if scope == "address":
        return ws.store.suppressions.remove(scope, *ws.lookup_hashes(suppression_address(value).key))
    return ws.store.suppressions.remove(scope, target)


def suppressions_covering(ws: Workspace, value: str) -> list[Suppression]:
    """The entries that stop mail to an address (its mailbox, its domain or a parent domain),
    or that an @domain value names."""
    scope, target = suppression_target(ws, value)
    if scope == "domain":
        return ws.store.suppressions.matching((), [target])
    address = suppression_address(value)
    return ws.store.suppressions.matching(ws.lookup_hashes(address.key), domain_and_parents(address.domain))


def suppressions(ws: Workspace) -> list[Suppression]:
    return ws.store.suppressions.entries()


#: How long a one-click opt-out waits for a busy or unreachable database before it is spooled:
#: well under what mailbox providers give a POST, and past a short batch of an import.
OPTOUT_PATIENCE = 3.0


@dataclass(frozen=True)
class OptOutRecorded:
    spooled: bool     # False: on the suppression list; True: in the spool (mailer.spool)
    waited: float     # seconds spent on the database
    attempts: int
    cause: str = ""   # why the database did not take it (an exception's type), when spooled


def record_optout(ws: Workspace, raw_token: str, token: UnsubscribeToken, *, origin: str, reason: str = "",
                  patience: float = OPTOUT_PATIENCE) -> OptOutRecorded:
    """Put the address of a verified unsubscribe token on the suppression list, durably, trying
    again while the database is busy or unreachable for up to `patience` seconds; past that,
    append the opt-out to the workspace's spool (fsync'd), from which the next writer records it.
    Either way the opt-out is kept when this returns; OSError if even the spool cannot be written."""
    at = utcnow()
    row = {"scope": "address", "value": token.address_hash, "origin": origin, "reason": reason,
           "campaign_id": token.campaign_id, "created_at": at}
    start = time.monotonic()
    deadline = start + patience
    attempts, cause, pause = 0, "", 0.05
    while True:
        attempts += 1
        try:
            ws.store.suppressions.add_rows([row], patience=max(deadline - time.monotonic(), 0.05))
            return OptOutRecorded(False, time.monotonic() - start, attempts)
        except SQLAlchemyError as exc:
            cause = type(getattr(exc, "orig", None) or exc).__name__
        left = deadline - time.monotonic()
        if left <= 0.01:
            break
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.5)
    ws.spool.append(SpooledOptOut(raw_token, origin, reason, at))
    return OptOutRecorded(True, time.monotonic() - start, attempts, cause)


@dataclass
class SpoolApplied:
    recorded: int = 0   # entries now on the suppression list (new or already there)
    #: entries whose token does not verify with this workspace's secret: left in the spool
    unverified: int = 0


def apply_spooled_optouts(ws: Workspace, *, patience: float | None = None) -> SpoolApplied:
    """Move the opt-outs waiting in the spool to the suppression list (idempotent: one already
    there is not added twice), each with the time the person asked. Raises the database's
    error, leaving the spool as it was, when the database cannot take them (within `patience`
    seconds, when given)."""
    result = SpoolApplied()

    def apply(entries: list[SpooledOptOut]) -> list[SpooledOptOut]:
        rows, applied = [], []
        for entry in entries:
            try:
                token = verify(ws.keys, entry.token)
            except InvalidToken:
                result.unverified += 1  # another secret: kept, for the operator to see
                continue
            rows.append({"scope": "address", "value": token.address_hash, "origin": entry.origin,
                         "reason": entry.reason, "campaign_id": token.campaign_id,
                         "created_at": entry.at})
            applied.append(entry)
        ws.store.suppressions.add_rows(rows, patience=patience)
        return applied

    result.recorded = ws.spool.drain(apply)
    return result


def spooled_hashes(ws: Workspace) -> set[str]:
    """The address hashes of the opt-outs waiting in the spool (for a plan that writes nothing)."""
    found = set()
    for entry in ws.spool.entries():
        try:
            found.add(verify(ws.keys, entry.token).address_hash)
        except InvalidToken:
            continue
    return found


@dataclass
class InboundResult:
    added: int = 0
    known: int = 0
    #: not permanent failures (bounces only): delays, full mailboxes, refused messages
    passing: int = 0
    #: one line per file or report that was not acted on, with the reason
    rejected: list[str] = field(default_factory=list)
    unmatched: int = 0     # bounces about a message mailer did not send to that address
    not_reports: int = 0   # files that are not bounce reports
    #: one line per file that could not be read or parsed (path and reason): left in place
    skipped: list[str] = field(default_factory=list)


def record_mailto_optouts(ws: Workspace, paths: Iterable[Path]) -> InboundResult:
    """Opt-outs mailed to the List-Unsubscribe mailto address: each message whose Subject carries
    a valid `unsubscribe-TOKEN` suppresses that address (origin `mailto`); the rest are listed.
    Anyone can mail that address: a message that cannot be read is skipped, not fatal."""
    result = InboundResult()
    for path in message_files(list(paths)):
        try:
            raw = parse_message_file(path, token_from_message)
        except UnreadableMessage as exc:
            result.skipped.append(f"{path}: {exc}")
            continue
        try:
            if raw is None:
                raise InvalidToken("no unsubscribe-TOKEN in the subject")
            token = verify(ws.keys, raw)
            if token.test:
                raise InvalidToken("the token of a test message (mailer send --test-to): nothing to record")
        except InvalidToken as exc:
            result.rejected.append(f"{path}: {exc}")
            continue
        if ws.store.suppressions.add(scope="address", value=token.address_hash, origin="mailto",
                                     campaign_id=token.campaign_id):
            result.added += 1
        else:
            result.known += 1
    return result


def record_bounce_reports(ws: Workspace, paths: Iterable[Path]) -> InboundResult:
    """Hard bounces reported after the relay accepted a message (RFC 3464 reports): a recipient
    that failed with 5.1.x or 5.2.1 is suppressed (origin `bounce`) if the bounced message is one
    mailer sent to that address (its Message-ID is in the send log). A file that cannot be read
    is skipped, not fatal."""
    result = InboundResult()
    reports = []
    not_reports: list[str] = []
    for path in message_files(list(paths)):
        try:
            found = parse_message_file(path, bounces_in)
        except UnreadableMessage as exc:
            result.skipped.append(f"{path}: {exc}")
            continue
        if found is None:
            not_reports.append(f"{path}: not a delivery status notification")
        else:
            reports.append((path, found))
    sent = ws.store.sendlog.sent_messages(b.message_id for _, found in reports for b in found)
    unmatched: list[str] = []
    for path, found in reports:
        for bounce in found:
            if bounce.action != "failed" or not hard_bounce_status(bounce.status):
                result.passing += 1
                continue
            key = normalise(bounce.recipient).key
            digest = ws.hash_address(key)
            campaign, logged_key = sent.get(bounce.message_id, ("", ""))
            if logged_key != key and logged_key not in map(erased_key, ws.lookup_hashes(key)):
                unmatched.append(f"{path}: {bounce.recipient} ({bounce.status}) is not about a message mailer "
                                 "sent to that address")
                continue
            reason = f"{bounce.status} {bounce.diagnostic}".strip()[:200]
            if ws.store.suppressions.add(scope="address", value=digest, origin="bounce", reason=reason,
                                         campaign_id=campaign):
                result.added += 1
            else:
                result.known += 1
    result.unmatched, result.not_reports = len(unmatched), len(not_reports)
    result.rejected = unmatched + not_reports
    return result


@dataclass
class ComplaintsResult(InboundResult):
    """`added`: addresses newly on the suppression list; `known`: complaints recorded before (the
    same report read again, or a second report about one message); `unmatched`: reports about
    no message mailer sent; `not_reports`: files that are not feedback reports."""

    recorded: int = 0           # new complaints
    by_token: int = 0           # of those, matched by the unsubscribe token (the Message-ID was not ours)
    other_recipient: int = 0    # reports naming another recipient than the one the message went to
    not_complaints: int = 0     # not-spam and auth-failure reports


def record_complaints(ws: Workspace, paths: Iterable[Path]) -> ComplaintsResult:
    """Spam complaints (ARF feedback reports, RFC 5965): a report about a message mailer sent
    suppresses the address that message was sent to (origin `complaint`) and is counted for its
    campaign. The message is known by its Message-ID in the send log, or, when a relay replaced
    the Message-ID, by the signed unsubscribe token of its List-Unsubscribe header (whoever holds
    it can already unsubscribe that address in one click). A report naming another recipient
    suppresses at most the address the message went to, never the one named; a report about a
    message mailer did not send suppresses no one. A file that cannot be read is skipped, not fatal.
    Reading the same reports again changes nothing."""
    result = ComplaintsResult()
    reports: list[tuple[Path, FeedbackReport]] = []
    for path in message_files(list(paths)):
        try:
            found = parse_message_file(path, feedback_report_in)
        except UnreadableMessage as exc:
            result.skipped.append(f"{path}: {exc}")
            continue
        if found is None:
            result.not_reports += 1
            result.rejected.append(f"{path}: not a feedback report (ARF)")
        elif not found.complaint:
            result.not_complaints += 1
            result.rejected.append(f"{path}: a {found.feedback_type} report, not a complaint")
        else:
            reports.append((path, found))
    sent = ws.store.sendlog.sent_messages(report.message_id for _, report in reports)
    for path, report in reports:
        if report.message_id in sent:
            campaign_id, logged_key = sent[report.message_id]
            digest = logged_key[len(ERASED_PREFIX):] if logged_key.startswith(ERASED_PREFIX) \
                else ws.hash_address(logged_key)
            token_used = False
        else:
            token = _token_of(ws, report)
            if token is None:
                result.unmatched += 1
                result.rejected.append(f"{path}: not about a message mailer sent (its Message-ID is not in the "
                                       "send log, and it carries no unsubscribe token of ours)")
                continue
            campaign_id, digest, token_used = token.campaign_id, token.address_hash, True
        if any(not _same_mailbox(ws, named, digest) for named in _addresses(report.named)):
            result.other_recipient += 1
            result.rejected.append(f"{path}: names another recipient than the one the message was sent to (a "
                                   "forward, or a forgery): only the address it was sent to is suppressed")
        recorded = ws.store.complaints.record(
            campaign_id=campaign_id, address_hash=digest, message_id=report.message_id,
            feedback_type=report.feedback_type, reported_at=report.reported_at,
            reason=f"{report.feedback_type} report")  # `suppress check` shows "(complaint: abuse report)"
        if not recorded.complaint:
            result.known += 1
            continue
        result.recorded += 1
        result.by_token += token_used
        result.added += recorded.suppressed
    return result


def _token_of(ws: Workspace, report: FeedbackReport) -> UnsubscribeToken | None:
    """The first of the report's unsubscribe tokens that verifies (a test message's records nothing)."""
    for raw in report.tokens:
        try:
            token = verify(ws.keys, raw)
        except InvalidToken:
            continue
        if not token.test:
            return token
    return None


def _addresses(named: Iterable[str]) -> Iterator[NormalisedAddress]:
    """The named recipients that are addresses: a redacted one ("redacted", "xxxxx@yahoo.com" when
    the local part is all x) names no one."""
    for value in named:
        address = normalise(value)
        local = address.key.rpartition("@")[0]
        if address.valid and local.strip("x*") and "redacted" not in local:
            yield address


def _same_mailbox(ws: Workspace, named: NormalisedAddress, digest: str) -> bool:
    """Whether `named` is the mailbox kept under `digest`: its canonical mailbox's hash, or (an erased
    send-log row) the hash of the address as it was spelt."""
    return digest in ws.lookup_hashes(named.key)
