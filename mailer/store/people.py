"""One person across the tables: what we hold (explain), erasing them (forget,
retention), and the contacts they initiate (interactions)."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Engine

from ..addresses import GMAIL_DOMAINS, canonical_mailbox, domain_and_parents
from ..contacts import ContactData
from ..states import SendState
from .contacts import contact_from_row
from .tables import (
    CAMPAIGNS,
    COMPLAINTS,
    CONTACTS,
    ERASURES,
    INTERACTIONS,
    LIST_MEMBERS,
    LISTS,
    SEND_LOG,
    SUPPRESSIONS,
    utcnow,
)

ERASED_PREFIX = "erased:"


def erased_key(address_hash: str) -> str:
    """What replaces an erased person's address in the send log."""
    return ERASED_PREFIX + address_hash


@dataclass
class LogEntry:
    campaign_id: str
    campaign_kind: str
    state: SendState
    rule: str
    subject: str
    sent_at: datetime | None
    updated_at: datetime


@dataclass
class PersonRecord:
    """Every row about one address (or its keyed hash, once erased)."""

    contact: ContactData | None = None
    lists: list[str] = field(default_factory=list)
    interactions: list[tuple[date, str]] = field(default_factory=list)
    log: list[LogEntry] = field(default_factory=list)
    suppressed_since: datetime | None = None
    suppression_origin: str = ""
    erased_at: datetime | None = None
    #: (campaign id, when) of each message they reported as spam
    complaints: list[tuple[str, datetime]] = field(default_factory=list)


@dataclass
class Erased:
    had_contact: bool
    log_rows: int
    suppression_added: bool
    sent_keys: list[str]  # "<campaign>.<log id>" of every message logged for them (transport keys)


class People:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def lookup(self, key: str, digests: Sequence[str], domain: str) -> PersonRecord:
        """What we hold about the address `key` (kept as any of the keyed hashes `digests`
        once erased or suppressed; its domain and parent domains may be suppressed)."""
        contacts, members, lists = CONTACTS, LIST_MEMBERS, LISTS
        log, campaigns, sup = SEND_LOG, CAMPAIGNS, SUPPRESSIONS
        interactions = INTERACTIONS
        found = PersonRecord()
        with self.engine.connect() as conn:
            row = conn.execute(select(contacts).where(contacts.c.email_key == key)).mappings().first()
            if row is not None:
                found.contact = contact_from_row(row)
                found.lists = list(conn.execute(
                    select(lists.c.name).join(members, members.c.list_id == lists.c.id)
                    .where(members.c.contact_id == row["id"]).order_by(lists.c.name)).scalars())
                found.interactions = [(r.at, r.what) for r in conn.execute(
                    select(interactions).where(interactions.c.contact_id == row["id"]).order_by(interactions.c.at))]
            rows = conn.execute(
                select(log.c.campaign_id, log.c.state, log.c.rule, log.c.subject, log.c.sent_at, log.c.updated_at,
                       campaigns.c.kind).join(campaigns, campaigns.c.id == log.c.campaign_id, isouter=True)
                .where(log.c.address_key.in_([key, *map(erased_key, digests)])).order_by(log.c.planned_at, log.c.id)).all()
            found.log = [LogEntry(r.campaign_id, r.kind or "", SendState(r.state), r.rule, r.subject, r.sent_at,
                                  r.updated_at) for r in rows]
            entry = conn.execute(select(sup.c.created_at, sup.c.origin).where(
                ((sup.c.scope == "address") & sup.c.value.in_(digests))
                | ((sup.c.scope == "domain") & sup.c.value.in_(domain_and_parents(domain))))
                .order_by(sup.c.created_at).limit(1)).first()
            if entry is not None:
                found.suppressed_since, found.suppression_origin = entry.created_at, entry.origin
            found.erased_at = conn.execute(select(func.max(ERASURES.c.erased_at)).where(
                ERASURES.c.address_hash.in_(digests))).scalar()
            found.complaints = [(r.campaign_id, r.reported_at or r.recorded_at) for r in conn.execute(
                select(COMPLAINTS.c.campaign_id, COMPLAINTS.c.reported_at, COMPLAINTS.c.recorded_at)
                .where(COMPLAINTS.c.address_hash.in_(digests)).order_by(COMPLAINTS.c.recorded_at, COMPLAINTS.c.id))]
        return found

    def erase(self, people: Sequence[tuple[str, Sequence[str]]], *, by: str, reason: str) -> list[Erased]:
        """Erase each (address key, its keyed hashes: the canonical mailbox's first) in one
        transaction: delete the contact, their list
        memberships and interactions; key their send-log rows by hash only, with the subject and
        server answers cleared (they can carry a name); clear free text typed with their opt-out;
        with reason "request", put the hash on the suppression list; record the erasure."""
        contacts, members, log = CONTACTS, LIST_MEMBERS, SEND_LOG
        interactions, sup, erasures = INTERACTIONS, SUPPRESSIONS, ERASURES
        now = utcnow()
        results = []
        with self.engine.begin() as conn:
            for key, digests in people:
                digest = digests[0]
                contact_id = conn.execute(select(contacts.c.id).where(contacts.c.email_key == key)).scalar()
                if contact_id is not None:
                    conn.execute(delete(interactions).where(interactions.c.contact_id == contact_id))
                    conn.execute(delete(members).where(members.c.contact_id == contact_id))
                    conn.execute(delete(contacts).where(contacts.c.id == contact_id))
                sent_keys = [f"{campaign}.{row_id}" for row_id, campaign in conn.execute(
                    select(log.c.id, log.c.campaign_id).where(log.c.address_key == key))]
                changed = conn.execute(update(log).where(log.c.address_key == key).values(
                    # The address's own hash (the last): rows of two spellings of one mailbox stay apart.
                    address_key=erased_key(digests[-1]), contact_id=None, subject="", detail="", smtp_text="",
                    updated_at=now)).rowcount
                conn.execute(update(sup).where(sup.c.scope == "address", sup.c.value.in_(digests), sup.c.reason != "")
                             .values(reason=""))
                added = False
                if reason == "request":
                    before = conn.execute(select(func.count()).select_from(sup).where(
                        sup.c.scope == "address", sup.c.value == digest)).scalar_one()
                    if not before:
                        conn.execute(insert(sup).values(scope="address", value=digest, origin="erasure",
                                                        reason="erasure requested", campaign_id="", created_at=now))
                        added = True
                conn.execute(insert(erasures).values(address_hash=digest, reason=reason, erased_by=by, erased_at=now))
                results.append(Erased(contact_id is not None, changed, added, sent_keys))
        return results

    def spellings(self, key: str) -> list[str]:
        """The address keys stored (contacts and send log) that reach the same mailbox as `key`:
        other +tags, and at Gmail other dots and googlemail.com (mailer.addresses.canonical_mailbox)."""
        mailbox = canonical_mailbox(key)
        domain = key.rpartition("@")[2]
        domains = sorted(GMAIL_DOMAINS) if domain in GMAIL_DOMAINS else [domain]
        found: set[str] = {key}
        with self.engine.connect() as conn:
            for column in (CONTACTS.c.email_key, SEND_LOG.c.address_key):
                for d in domains:
                    for (stored,) in conn.execute(select(column).where(column.like(f"%@{_like(d)}", escape="\\"))
                                                  .distinct()):
                        if canonical_mailbox(stored) == mailbox:
                            found.add(stored)
        return sorted(found)

    def all_contacts(self) -> Iterator[ContactData]:
        """Every stored contact, for the retention review."""
        table = CONTACTS
        with self.engine.connect() as conn:
            for row in conn.execute(select(table).order_by(table.c.id)).mappings():
                yield contact_from_row(row)

    def record_interaction(self, key: str, at: date, what: str) -> date | None:
        """Record a contact the person initiated; the new last_interaction_at, None when no such contact."""
        contacts = CONTACTS
        with self.engine.begin() as conn:
            row = conn.execute(select(contacts.c.id, contacts.c.last_interaction_at)
                               .where(contacts.c.email_key == key)).first()
            if row is None:
                return None
            latest: date = max(d for d in (row.last_interaction_at, at) if d is not None)
            conn.execute(update(contacts).where(contacts.c.id == row.id).values(last_interaction_at=latest,
                                                                                updated_at=utcnow()))
            conn.execute(insert(INTERACTIONS).values(contact_id=row.id, at=at, what=what,
                                                              recorded_at=utcnow()))
        return latest

    def has_erasures(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(ERASURES.c.id).limit(1)).first() is not None

    def erasures(self, digests: Sequence[str]) -> dict[str, tuple[str, datetime]]:
        """hash -> (reason, when) of the latest erasure, for those of `digests` that were erased."""
        table = ERASURES
        found: dict[str, tuple[str, datetime]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(digests), 500):
                for r in conn.execute(select(table.c.address_hash, table.c.reason, table.c.erased_at).where(
                        table.c.address_hash.in_(digests[start:start + 500])).order_by(table.c.erased_at)):
                    found[r.address_hash] = (r.reason, r.erased_at)
        return found


def _like(text: str) -> str:
    """`text` as a LIKE pattern matching itself."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


__all__ = ["ERASED_PREFIX", "Erased", "LogEntry", "People", "PersonRecord", "erased_key"]
