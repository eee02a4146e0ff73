"""What we hold about a person, forgetting them, and keeping nothing past its time.

    explain_person   -> Explanation: every fact we hold, ready to render as an answer
    forget_person    -> erase the contact, keep a keyed hash on the suppression list
    retention_report -> who is past retention (or soon will be); apply erases them
    touch_contact    -> a contact initiated by the person restarts the retention clock
"""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from .addresses import NormalisedAddress, normalise
from .contacts import ContactData
from .errors import InputError, NotFound
from .gate import add_years, retention_reference
from .states import SendState
from .store import utcnow
from .workspace import Workspace

INTERACTIONS = ("reply", "click", "form")


# --------------------------------------------------------------------------- explain

@dataclass
class SentMessage:
    at: datetime | None
    campaign_id: str
    subject: str


@dataclass
class GateDecision:
    campaign_id: str
    campaign_kind: str
    state: str
    rule: str
    at: datetime


@dataclass
class Explanation:
    """Everything we hold about one address, as facts; `render_explanation` words them."""

    email: str
    organization: dict[str, str]
    contact: ContactData | None
    lists: list[str] = field(default_factory=list)
    interactions: list[tuple[date, str]] = field(default_factory=list)
    sent: list[SentMessage] = field(default_factory=list)
    decisions: list[GateDecision] = field(default_factory=list)
    campaign_kinds: list[str] = field(default_factory=list)
    suppressed_since: datetime | None = None
    suppression_origin: str = ""
    erased_at: datetime | None = None
    generic: bool = False
    retention_from: tuple[date | None, str] = (None, "")
    deletion_date: date | None = None
    #: (campaign id, when) of each message they reported as spam (`mailer suppress complaints`)
    complaints: list[tuple[str, datetime]] = field(default_factory=list)

    @property
    def holds_nothing(self) -> bool:
        return self.contact is None and not self.sent and not self.decisions


def _person(email: str) -> NormalisedAddress:
    """The address a person asked about; one that is not an address at all is an input error
    (exit 2) rather than an answer saying we hold nothing about it."""
    address = normalise(email)
    local, at, domain = address.key.rpartition("@")
    if not (local and at and domain) or any(c.isspace() for c in address.key):
        raise InputError(f"{email!r} is not an email address",
                         hint="give the address as the person wrote it, e.g. jeanne@client.example")
    return address


def explain_person(ws: Workspace, email: str) -> Explanation:
    address = _person(email)
    key = address.key
    org = ws.config.organization
    explanation = Explanation(
        email=address.send_to,
        organization={"name": org.name, "postal_address": org.postal_address,
                      "privacy_url": org.privacy_url, "contact_email": org.contact_email},
        contact=None)
    held = ws.store.people.lookup(key, ws.lookup_hashes(key), address.domain)
    explanation.contact, explanation.lists, explanation.interactions = held.contact, held.lists, held.interactions
    explanation.generic = held.contact is not None and ws.config.compliance.role_addresses().exempt(
        key, held.contact.kind)
    for entry in held.log:
        if entry.state == SendState.SENT:
            explanation.sent.append(SentMessage(entry.sent_at, entry.campaign_id, entry.subject))
        explanation.decisions.append(GateDecision(entry.campaign_id, entry.campaign_kind, entry.state, entry.rule,
                                                  entry.updated_at))
    explanation.campaign_kinds = sorted({d.campaign_kind for d in explanation.decisions if d.campaign_kind})
    explanation.suppressed_since, explanation.suppression_origin = held.suppressed_since, held.suppression_origin
    explanation.erased_at = held.erased_at
    explanation.complaints = held.complaints
    if explanation.contact is not None and not explanation.generic and explanation.contact.collected_at is not None:
        reference, which = retention_reference(explanation.contact)
        explanation.retention_from = (reference, which)
        if reference is not None:
            explanation.deletion_date = add_years(reference, ws.config.compliance.retention_years)
    return explanation


# --------------------------------------------------------------------------- forget

@dataclass
class ForgetResult:
    had_contact: bool
    log_rows: int
    suppression_added: bool
    outbox_files: int = 0  # copies of sent messages removed from the maildir outbox
    preview_files: int = 0  # files `preview` wrote that held the person, removed
    #: files or folders holding (or maybe holding) the person that could not be removed, with why
    unreachable: list[str] = field(default_factory=list)


def forget_person(ws: Workspace, email: str, *, by: str, reason: str = "request") -> ForgetResult:
    """Erase the contact, their consent, attributes and interactions; keep only a keyed hash.

    The send log keeps its rows (what was sent, when) under the hash, with the
    subject and server answers cleared (they can carry a name). With reason
    "request" the hash goes on the suppression list (origin `erasure`), so the
    person is never mailed or imported again.
    """
    address = _person(email)
    # The mailbox, however it was spelt when stored (+tags; at Gmail dots and googlemail.com).
    others = [NormalisedAddress(key=k, send_to=k, valid=True) for k in ws.store.people.spellings(address.key)
              if k != address.key]
    results, previews = _erase(ws, [address, *others], by=by, reason=reason)
    result = results[0]
    for other in results[1:]:
        result.had_contact |= other.had_contact
        result.log_rows += other.log_rows
        result.suppression_added |= other.suppression_added
        result.outbox_files += other.outbox_files
    result.preview_files, result.unreachable = previews.removed, previews.unreachable
    return result


def _erase(ws: Workspace, addresses: list[NormalisedAddress], *, by: str, reason: str
           ) -> tuple[list[ForgetResult], PreviewsRemoved]:
    erased = ws.store.people.erase([(a.key, ws.lookup_hashes(a.key)) for a in addresses], by=by, reason=reason)
    ws.store.scrub()
    # A transport that keeps copies of what it delivered (the maildir outbox) drops the person's.
    transport = ws.open_transport()
    results = [ForgetResult(e.had_contact, e.log_rows, e.suppression_added, transport.remove_copies(e.sent_keys))
               for e in erased]
    return results, remove_previews(ws, addresses)


@dataclass
class PreviewsRemoved:
    removed: int = 0
    unreachable: list[str] = field(default_factory=list)


def remove_previews(ws: Workspace, addresses: list[NormalisedAddress]) -> PreviewsRemoved:
    """Remove the files `preview` wrote (in the folders it recorded) whose name or content holds
    one of the addresses, as its key or as spelt for sending. A folder that is gone is fine; one
    recorded on another host and absent here, and a file that cannot be read or removed, are
    listed: they may still hold the person."""
    from .campaign import preview_name
    names = {preview_name(a.key) for a in addresses}
    spellings = sorted({s.lower().encode("utf-8") for a in addresses for s in (a.key, a.send_to)}, key=len, reverse=True)
    # The whole address, not a part of another one (jean@x.example in marie-jean@x.example.org).
    pattern = re.compile(rb"(?<![a-z0-9._%+-])(?:" + b"|".join(map(re.escape, spellings)) + rb")(?![a-z0-9-]|\.[a-z0-9])")
    result = PreviewsRemoved()
    here = socket.gethostname()
    for folder, host in ws.store.settings.preview_folders():
        path = Path(folder)
        if not path.is_dir():
            if host != here:
                result.unreachable.append(f"{folder} (previews written on {host}: run forget there too)")
            continue
        for file in sorted(p for p in path.rglob("*") if not p.is_dir()):
            try:
                if file.name.partition("-")[2].rpartition(".")[0] not in names \
                        and not pattern.search(file.read_bytes().lower()):
                    continue
                file.unlink()
                result.removed += 1
            except OSError as exc:
                result.unreachable.append(f"{file} ({exc.strerror or type(exc).__name__})")
    return result


# --------------------------------------------------------------------------- retention

@dataclass
class RetentionItem:
    email: str
    field: str                 # the date the clock runs from, or "no collection date"
    reference: date | None     # None: no collection date is known, which counts as expired
    expires_on: date | None

    def describe(self, expired: bool) -> str:
        if self.reference is None or self.expires_on is None:
            return "no collection date (counts as expired)"
        verb = "expired" if expired else "expires"
        return f"{self.field} {self.reference.isoformat()} -> {verb} {self.expires_on.isoformat()}"


def retention_report(ws: Workspace, today: date, horizon_days: int = 60) -> tuple[list[RetentionItem], list[RetentionItem]]:
    """(expired, expiring within horizon_days) among stored contacts; role addresses excepted."""
    years = ws.config.compliance.retention_years
    roles = ws.config.compliance.role_addresses()
    expired, soon = [], []
    for contact in ws.store.people.all_contacts():
        if roles.exempt(contact.address.key, contact.kind):
            continue
        if contact.collected_at is None:
            expired.append(RetentionItem(contact.email, "no collection date", None, None))
            continue
        reference, which = retention_reference(contact)
        assert reference is not None
        expiry = add_years(reference, years)
        item = RetentionItem(contact.email, which, reference, expiry)
        if today > expiry:
            expired.append(item)
        elif expiry <= today + timedelta(days=horizon_days):
            soon.append(item)
    return expired, soon


def apply_retention(ws: Workspace, items: list[RetentionItem], *, by: str) -> tuple[int, int, PreviewsRemoved]:
    """Erase the expired contacts: (contacts erased, copies of their messages removed from the
    outbox, their preview files removed and those that could not be)."""
    results, previews = _erase(ws, [normalise(i.email) for i in items], by=by, reason="retention")
    return len(items), sum(r.outbox_files for r in results), previews


# --------------------------------------------------------------------------- interactions

def touch_contact(ws: Workspace, email: str, at: date, what: str, today: date) -> date:
    """Record a contact initiated by the person; returns the new last_interaction_at."""
    if what not in INTERACTIONS:
        raise InputError(f"what the person did must be one of {', '.join(INTERACTIONS)} (opens and our own sends do not count)")
    if at > today:
        raise InputError(f"the interaction date {at.isoformat()} is in the future")
    latest = ws.store.people.record_interaction(normalise(email).key, at, what)
    if latest is None:
        raise NotFound(f"no contact {email}", hint="import the contact first")
    return latest


def as_json(explanation: Explanation) -> dict[str, Any]:
    c = explanation.contact
    contact: dict[str, Any] | None = None
    if c is not None:
        contact = {name: _jsonable(getattr(c, name)) for name in (
            "email", "first_name", "last_name", "company", "job_title", "industry", "country", "kind",
            "source", "source_type", "collected_at", "consent", "consent_at", "consent_proof",
            "partner_consent", "last_interaction_at", "member")}
        contact["attributes"] = dict(c.attrs)
    return {
        "email": explanation.email,
        "organization": explanation.organization,
        "holds_data": explanation.contact is not None,
        "contact": contact,
        "lists": explanation.lists,
        "interactions": [{"at": a.isoformat(), "what": w} for a, w in explanation.interactions],
        "messages_sent": [{"at": _jsonable(m.at), "campaign": m.campaign_id, "subject": m.subject}
                          for m in explanation.sent],
        "decisions": [{"campaign": d.campaign_id, "kind": d.campaign_kind, "state": d.state, "rule": d.rule,
                       "at": _jsonable(d.at)} for d in explanation.decisions],
        "legal_bases": {kind: legal_basis_id(kind, c) for kind in explanation.campaign_kinds},
        "suppressed_since": _jsonable(explanation.suppressed_since),
        "erased_at": _jsonable(explanation.erased_at),
        "complaints": [{"campaign": campaign, "at": _jsonable(at)} for campaign, at in explanation.complaints],
        "generic_address": explanation.generic,
        "deletion_date": _jsonable(explanation.deletion_date),
    }


def legal_basis_id(kind: str, contact: ContactData | None) -> str:
    if kind == "members":
        return "membership"
    if contact is None:
        return "unknown"
    if contact.kind == "b2c":
        return "soft-opt-in" if contact.consent == "customer" else "consent"
    return "legitimate-interest-b2b"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return value


# --------------------------------------------------------------------------- wording

def _date_in(locale: str) -> Any:
    """How dates are written to the person: "12 juin 2026", "12 June 2026"."""
    from .locales import long_date

    def written(value: date | datetime | None) -> str:
        if value is None:
            return "—"
        day = value.date() if isinstance(value, datetime) else value
        return long_date(locale, day.day, day.month, day.year)
    return written


def render_explanation(e: Explanation, locale: str, fmt: str, retention_years: int) -> str:
    """The answer to send to the person, in their language, as text or markdown."""
    from .locales import strings
    w = strings(locale).explain
    _date = _date_in(locale)
    md = fmt == "markdown"
    out: list[str] = []

    def heading(title: str) -> None:
        out.append("")
        out.append(f"## {title}" if md else f"{title}\n{'-' * len(title)}")

    def item(line: str) -> None:
        out.append(f"- {line}")

    out += [w.greeting, "", w.intro]
    heading(w.who)
    out.append(w.who_text.format(**e.organization))

    c = e.contact
    if c is None:
        heading(w.data)
        out.append(w.nothing.format(email=e.email))
        if e.erased_at is not None:
            out.append(w.erased.format(date=_date(e.erased_at)))
        if e.suppressed_since is not None:
            out.append(w.nothing_suppressed)
    else:
        heading(w.data)
        for name, label in w.fields.items():
            value = getattr(c, name)
            if name == "kind":
                value = w.kinds.get(value, value)
            elif name == "consent":
                value = w.consents.get(value, value)
            elif isinstance(value, date):
                value = _date(value)
            elif isinstance(value, bool):
                value = w.yes if value else w.no
            if value not in ("", None):
                item(f"{label}{w.label_separator}{value}")
        for key, value in sorted(c.attrs.items()):
            if value:
                item(f"{key}{w.label_separator}{value}")
        if e.lists:
            item(f"{w.lists}{w.label_separator}{', '.join(e.lists)}")
        if e.generic:
            out.append(w.generic)
        heading(w.origin)
        if c.source:
            how = w.partner if c.source_type == "partner" else w.direct
            out.append(w.source.format(source=c.source, how=how, date=_date(c.collected_at)))
        else:
            out.append(w.no_source)
        if e.interactions:
            heading(w.interactions)
            for at, what in e.interactions:
                item(f"{_date(at)} — {w.what.get(what, what)}")

    if e.campaign_kinds:
        heading(w.basis)
        for kind in e.campaign_kinds:
            label = w.campaign_kinds.get(kind, kind)
            basis = legal_basis_id(kind, c)
            if basis == "membership":
                item(w.basis_members.format(kind_label=label))
            elif basis == "soft-opt-in":
                item(w.basis_soft.format(kind_label=label))
            elif basis == "consent":
                details = ""
                if c is not None and c.consent_at:
                    details = w.consent_details.format(date=_date(c.consent_at), proof=c.consent_proof or "—")
                item(w.basis_consent.format(kind_label=label, details=details))
            else:
                item(w.basis_prospecting_b2b.format(kind_label=label))

    heading(w.sent)
    if e.sent:
        for m in e.sent:
            item(w.sent_line.format(date=_date(m.at), campaign=m.campaign_id, subject=m.subject or "—"))
    else:
        out.append(w.none_sent)
    for campaign, at in e.complaints:
        out.append(w.complained.format(date=_date(at), campaign=campaign))
    if e.decisions:
        heading(w.decisions)
        for d in e.decisions:
            state = w.states.get(d.state, d.state).format(rule=w.rules.get(d.rule, d.rule))
            item(f"{_date(d.at)} — " + w.decision_line.format(campaign=d.campaign_id, state=state))

    if c is not None and e.deletion_date is not None:
        heading(w.retention)
        out.append(w.retention_years.format(date=_date(e.deletion_date), years=retention_years,
                                            event=w.events.get(e.retention_from[1], e.retention_from[1])))

    heading(w.rights)
    if e.suppressed_since is not None and c is not None:
        out.append(w.suppressed.format(date=_date(e.suppressed_since)))
    out.append(w.rights_text.format(contact_email=e.organization["contact_email"]))
    out += ["", w.closing, e.organization["name"]]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the public calls

def _operator() -> str:
    """Who runs this, for the erasure record."""
    import getpass
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def explain(ws: Workspace, email: str) -> Explanation:
    """Everything we hold about `email`, as facts (`render_explanation` words them for the person)."""
    return explain_person(ws, email)


def forget(ws: Workspace, email: str, *, by: str | None = None) -> ForgetResult:
    """Erase the person's data at their request; keep only a keyed hash on the suppression list."""
    return forget_person(ws, email, by=by or _operator())


@dataclass
class RetentionReport:
    today: date
    retention_years: int
    expired: list[RetentionItem]
    expiring: list[RetentionItem]     # within `horizon_days`
    erased: int = 0                   # with apply: contacts erased
    outbox_files: int = 0             # with apply: copies of their messages removed
    preview_files: int = 0            # with apply: preview files holding them removed
    unreachable: list[str] = field(default_factory=list)  # with apply: what could not be removed


def retention(ws: Workspace, *, apply: bool = False, horizon_days: int = 60, today: date | None = None,
              by: str | None = None) -> RetentionReport:
    """Contacts past their retention period (role addresses excepted), and those expiring within
    `horizon_days`; with apply, the expired ones are erased (suppression entries are kept)."""
    today = today or utcnow().date()
    expired, soon = retention_report(ws, today, horizon_days)
    report = RetentionReport(today, ws.config.compliance.retention_years, expired, soon)
    if apply and expired:
        report.erased, report.outbox_files, previews = apply_retention(ws, expired, by=by or _operator())
        report.preview_files, report.unreachable = previews.removed, previews.unreachable
    return report
