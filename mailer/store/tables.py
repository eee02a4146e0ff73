"""The tables. SQLModel classes declare them; the aggregate modules beside this one
read and write them with SQLAlchemy Core (the hot paths cannot afford the ORM).

A change here needs a migration in `migrations/versions/`.
"""
from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Table, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)



class Contact(SQLModel, table=True):
    __tablename__ = "contacts"
    id: int | None = Field(default=None, primary_key=True)
    email_key: str = Field(unique=True, index=True)  # normalised, what rows are matched on
    email: str  # what we deliver to
    # The syntax check's verdict, kept at import: validating every address again at
    # each run cost more than the rest of the gate.
    email_valid: bool = True
    email_problem: str = ""
    kind: str
    first_name: str = ""
    last_name: str = ""
    company: str = ""
    job_title: str = ""
    industry: str = ""
    country: str = ""
    source: str = ""
    source_type: str = "direct"
    collected_at: date | None = None  # None: unknown, which the gate treats as expired
    consent: str = ""
    consent_at: date | None = None
    consent_proof: str = ""
    partner_consent: bool = False
    last_interaction_at: date | None = None
    member: bool = False
    attrs: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class ContactList(SQLModel, table=True):
    __tablename__ = "lists"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    created_at: datetime = Field(default_factory=utcnow)


class ListMember(SQLModel, table=True):
    __tablename__ = "list_members"
    list_id: int = Field(foreign_key="lists.id", primary_key=True)
    contact_id: int = Field(foreign_key="contacts.id", primary_key=True, index=True)


class Suppression(SQLModel, table=True):
    """An objection to be honoured. Holds no personal data but a keyed hash."""

    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("scope", "value"),)
    id: int | None = Field(default=None, primary_key=True)
    scope: str  # "address" (value = keyed hash) or "domain" (value = the domain)
    value: str
    reason: str = ""
    origin: str  # one-click | link | mailto | import | bounce | manual | erasure | complaint
    campaign_id: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class CampaignRecord(SQLModel, table=True):
    __tablename__ = "campaigns"
    id: str = Field(primary_key=True)
    kind: str
    locale: str
    list_name: str
    created_at: datetime = Field(default_factory=utcnow)
    # Who is sending it now ("host:pid") and until when, so two sends do not overlap.
    lease_owner: str = ""
    lease_until: datetime | None = None
    #: the campaign's rate budget shared by its senders (PostgreSQL): the first free sending slot
    next_send_at: datetime | None = None


class Run(SQLModel, table=True):
    """One `mailer send` (or dry run): what was decided and delivered."""

    __tablename__ = "runs"
    id: int | None = Field(default=None, primary_key=True)
    campaign_id: str = Field(index=True)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    outcome: str = "running"
    counts: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: the campaign file and templates this run sent (mailer.campaign.fingerprint); "" before 0004
    fingerprint: str = Field(default="", sa_column_kwargs={"server_default": ""})
    #: the sending process ("host:pid"), and when it last said it is alive (every few seconds while it
    #: runs): a sender whose beat stopped, or whose process is gone from this host, is dead (0006)
    sender: str = Field(default="", sa_column_kwargs={"server_default": ""})
    heartbeat_at: datetime | None = None
    #: the run whose plan this one sends (itself when it planned), once that plan is complete
    plan_run_id: int | None = None


class SendLog(SQLModel, table=True):
    """One row per (campaign, address): the decision and the delivery."""

    __tablename__ = "send_log"
    __table_args__ = (
        UniqueConstraint("campaign_id", "address_key"),
        # With id: senders take the next planned rows of a campaign in plan order from the index (0006).
        Index("ix_send_log_campaign_state", "campaign_id", "state", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    campaign_id: str
    address_key: str  # normalised address; replaced by its keyed hash on erasure
    contact_id: int | None = Field(default=None, index=True)
    run_id: int | None = None  # the run that last planned this row
    #: the run (sender) that took this row to send it: reserved while planned, then claimed and sent (0006)
    claimed_by: int | None = None
    state: str  # blocked | planned | sending | sent | failed | deferred | uncertain
    rule: str = ""
    detail: str = ""
    subject: str = ""
    message_id: str = ""
    smtp_code: int | None = None
    smtp_text: str = ""
    attempts: int = 0
    planned_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None


class Interaction(SQLModel, table=True):
    """A contact initiated by the person (reply, click, form): restarts the retention clock."""

    __tablename__ = "interactions"
    id: int | None = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contacts.id", index=True)
    at: date
    what: str
    recorded_at: datetime = Field(default_factory=utcnow)


class Erasure(SQLModel, table=True):
    """That a person's data was erased: when, why, by whom. Only a keyed hash identifies them."""

    __tablename__ = "erasures"
    id: int | None = Field(default=None, primary_key=True)
    address_hash: str = Field(index=True)
    reason: str  # "request" (mailer forget) | "retention" (mailer retention --apply)
    erased_by: str
    erased_at: datetime = Field(default_factory=utcnow)


class Complaint(SQLModel, table=True):
    """A recipient reported a message of a campaign as spam (an ARF feedback report matched to the
    send log). Kept apart from the suppression list: one who had already unsubscribed still counts,
    and the entry says which campaign. Holds no personal data but a keyed hash."""

    __tablename__ = "complaints"
    __table_args__ = (UniqueConstraint("campaign_id", "address_hash"),)
    id: int | None = Field(default=None, primary_key=True)
    campaign_id: str = Field(index=True)
    address_hash: str = Field(index=True)  # keyed hash of the address the message was sent to
    message_id: str = ""  # of the reported message, as the send log holds it
    feedback_type: str  # abuse | fraud | virus | other | … (RFC 5965)
    reported_at: datetime | None = None  # the report's Date, when it gives one
    recorded_at: datetime = Field(default_factory=utcnow)


class Setting(SQLModel, table=True):
    __tablename__ = "settings"
    key: str = Field(primary_key=True)
    value: str




# The tables as SQLAlchemy Core sees them (the aggregate modules use these).
CONTACTS: Table = Contact.__table__  # type: ignore[attr-defined]
LISTS: Table = ContactList.__table__  # type: ignore[attr-defined]
LIST_MEMBERS: Table = ListMember.__table__  # type: ignore[attr-defined]
SUPPRESSIONS: Table = Suppression.__table__  # type: ignore[attr-defined]
CAMPAIGNS: Table = CampaignRecord.__table__  # type: ignore[attr-defined]
RUNS: Table = Run.__table__  # type: ignore[attr-defined]
SEND_LOG: Table = SendLog.__table__  # type: ignore[attr-defined]
INTERACTIONS: Table = Interaction.__table__  # type: ignore[attr-defined]
ERASURES: Table = Erasure.__table__  # type: ignore[attr-defined]
SETTINGS: Table = Setting.__table__  # type: ignore[attr-defined]
COMPLAINTS: Table = Complaint.__table__  # type: ignore[attr-defined]
