"""The database: contacts, lists, suppression list, campaigns, runs and the send log.

SQLite (WAL) is the embedded default; PostgreSQL (psycopg 3) when a team shares one
database. The schema is created on first use. Bulk paths use SQLAlchemy Core
statements, the ORM classes below only declare the tables.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import secrets as _secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint, bindparam, delete, event, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError
from sqlmodel import Field, SQLModel, create_engine

from ..addresses import NormalisedAddress
from ..contacts import ContactData
from ..errors import NotFound, StoreError


def utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- tables

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
    collected_at: date
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


class Run(SQLModel, table=True):
    """One `mailer send` (or dry run): what was decided and delivered."""

    __tablename__ = "runs"
    id: int | None = Field(default=None, primary_key=True)
    campaign_id: str = Field(index=True)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    outcome: str = "running"
    counts: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class SendLog(SQLModel, table=True):
    """One row per (campaign, address): the decision and the delivery."""

    __tablename__ = "send_log"
    __table_args__ = (
        UniqueConstraint("campaign_id", "address_key"),
        Index("ix_send_log_campaign_state", "campaign_id", "state"),
    )
    id: int | None = Field(default=None, primary_key=True)
    campaign_id: str
    address_key: str  # normalised address; replaced by its keyed hash on erasure
    contact_id: int | None = Field(default=None, index=True)
    run_id: int | None = None  # the run that last planned this row
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


class Setting(SQLModel, table=True):
    __tablename__ = "settings"
    key: str = Field(primary_key=True)
    value: str


SCHEMA_VERSION = 1

# States that count as "a delivery of this campaign to this address" for `already-sent`.
DELIVERED_STATES = ("sent", "sending", "uncertain", "failed")
PENDING_STATES = ("planned", "deferred")


@dataclass
class ImportResult:
    inserted: int = 0
    updated: int = 0
    added_to_list: int = 0


# --------------------------------------------------------------------------- the store

def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


class Store:
    """Everything mailer keeps, behind one object. Open with `Store.open(url)`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> Store:
        engine = cls._engine(url)
        try:
            SQLModel.metadata.create_all(engine)
        except (OperationalError, ProgrammingError) as exc:
            raise StoreError(f"cannot open database {url!r}: {exc.orig}",
                             hint="check [database] url in config.toml and that its folder exists") from None
        store = cls(engine)
        store._check_schema_version(url)
        return store

    @classmethod
    def attach(cls, url: str) -> Store:
        """The database another process of this run already opened (a render worker): no schema work."""
        return cls(cls._engine(url))

    @staticmethod
    def _engine(url: str) -> Engine:
        try:
            engine = create_engine(url)
        except (SQLAlchemyError, ModuleNotFoundError, ValueError) as exc:
            raise StoreError(f"cannot use database {url!r}: {exc}",
                             hint="check [database] url in config.toml") from None
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def _check_schema_version(self, url: str) -> None:
        """Tables are created on first use; a database from another schema version is refused
        (migrations, with alembic, will come with the first change to a released schema)."""
        with self.engine.begin() as conn:
            conn.execute(self._insert_ignore(Setting.__table__),
                         [{"key": "schema_version", "value": str(SCHEMA_VERSION)}])
        found = self.get_setting("schema_version")
        if found != str(SCHEMA_VERSION):
            self.close()
            raise StoreError(f"database {url!r} has schema version {found}, this mailer needs {SCHEMA_VERSION}",
                             hint="use the mailer version that created it, or a new database")

    def scrub(self) -> None:
        """After an erasure: no copy of deleted rows may stay in the files.

        SQLite runs with secure_delete (freed content is zeroed); the WAL still holds
        older page images, so checkpoint it and truncate it to zero bytes.
        PostgreSQL: a VACUUM reclaims the dead tuples.
        """
        if self.dialect == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        elif self.dialect == "postgresql":
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM")

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    # ---------------------------------------------------------------- settings

    def get_setting(self, key: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(Setting.value).where(Setting.key == key)).scalar()

    def secret(self, from_environment: str | None, variable: str = "MAILER_SECRET") -> tuple[bytes, bool]:
        """The HMAC secret: the environment's, else one generated once and kept here.

        Returns (secret, created_now) so the caller can say that it made one. The
        suppression list holds hashes keyed by this secret: with another secret,
        every recorded opt-out would silently stop matching. So the database keeps
        a fingerprint of the secret it was first used with and refuses another.
        """
        created = False
        if from_environment:
            secret = from_environment.encode("utf-8")
        else:
            existing = self.get_setting("secret")
            if existing is None:
                generated = _secrets.token_urlsafe(32)
                with self.engine.begin() as conn:
                    conn.execute(self._insert_ignore(Setting.__table__), [{"key": "secret", "value": generated}])
                existing = self.get_setting("secret") or generated
                created = existing == generated
            secret = existing.encode("ascii")
        fingerprint = hmac.new(secret, b"mailer/secret-fingerprint/v1", hashlib.sha256).hexdigest()[:32]
        with self.engine.begin() as conn:
            conn.execute(self._insert_ignore(Setting.__table__), [{"key": "secret_fingerprint", "value": fingerprint}])
        if self.get_setting("secret_fingerprint") != fingerprint:
            raise StoreError(
                f"the unsubscribe secret (${variable}, or the one kept in the database) is not the one this "
                "database was first used with: recorded opt-outs would no longer match",
                hint=f"set ${variable} back to its previous value (or unset it if the database kept its own); "
                     "to start over with a new secret, use a new database")
        return secret, created

    @functools.cached_property
    def _member_insert(self) -> Any:
        members = ListMember.__table__
        return self._insert_ignore(members).values(list_id=bindparam("list_id"), contact_id=bindparam("contact_id"))

    def _insert_ignore(self, table: Any) -> Any:
        return _dialect_insert(self.dialect, table).on_conflict_do_nothing()

    # ---------------------------------------------------------------- contacts

    def list_size(self, name: str) -> int:
        """How many contacts the list has (0 when there is no such list yet)."""
        members, lists = ListMember.__table__, ContactList.__table__
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(members.join(lists, lists.c.id == members.c.list_id))
                                .where(lists.c.name == name)).scalar_one()

    def list_id(self, name: str) -> int:
        with self.engine.connect() as conn:
            found = conn.execute(select(ContactList.id).where(ContactList.name == name)).scalar()
        if found is None:
            raise NotFound(f"there is no contact list named {name!r}",
                           hint=f"import contacts into it first: mailer contacts import FILE --list {name}")
        return found

    def upsert_contacts(self, records: Iterable[ContactData], list_name: str,
                        present_columns: frozenset[str], *, now: datetime | None = None,
                        chunk: int = 500, before_commit: Callable[[], None] | None = None) -> ImportResult:
        """Insert or update contacts on their normalised address, and add them to a list.

        Only the columns present in the file overwrite stored values; custom
        attributes are merged; `collected_at` keeps its stored value unless the file
        gives one (a re-import must not restart the retention clock). Records are
        consumed in chunks, so a large file is never all in memory, but in one
        transaction: `before_commit` may raise to roll everything back.
        """
        now = now or utcnow()
        result = ImportResult()
        table = Contact.__table__

        def batches() -> Iterator[list[ContactData]]:
            # A key repeated within a batch: the later row wins. Repeated across batches:
            # upserted again, same result. The caller counts repetitions.
            batch: dict[str, ContactData] = {}
            for record in records:
                batch[record.address.key] = record
                if len(batch) >= chunk:
                    yield list(batch.values())
                    batch = {}
            if batch:
                yield list(batch.values())

        with self.engine.begin() as conn:
            conn.execute(self._insert_ignore(ContactList.__table__), [{"name": list_name, "created_at": now}])
            list_id = conn.execute(select(ContactList.id).where(ContactList.name == list_name)).scalar_one()
            for batch in batches():
                keys = [r.address.key for r in batch]
                existing = {
                    row.email_key: row
                    for row in conn.execute(
                        select(table.c.id, table.c.email_key, table.c.attrs, table.c.last_interaction_at)
                        .where(table.c.email_key.in_(keys)))
                }
                inserts, updates = [], []
                for record in batch:
                    row = _row_for(record, present_columns, now)
                    found = existing.get(record.address.key)
                    if found is None:
                        row.setdefault("collected_at", now.date())
                        if row["collected_at"] is None:
                            row["collected_at"] = now.date()
                        inserts.append({**_defaults(), **row, "created_at": now})
                    else:
                        # An empty date cell never erases what we know, and a contact from the
                        # person cannot be undone by an older file.
                        for name in ("collected_at", "consent_at", "last_interaction_at"):
                            if row.get(name) is None:
                                row.pop(name, None)
                        if found.last_interaction_at and row.get("last_interaction_at"):
                            row["last_interaction_at"] = max(row["last_interaction_at"], found.last_interaction_at)
                        row["attrs"] = {**(found.attrs or {}), **row["attrs"]}
                        row["id"] = found.id
                        updates.append(row)
                if inserts:
                    execute_many(conn, _CONTACT_INSERT, inserts)
                if updates:
                    update_by_id(conn, table, updates)
                result.inserted += len(inserts)
                result.updated += len(updates)
                ids = conn.execute(select(table.c.id).where(table.c.email_key.in_(keys))).scalars().all()
                members = ListMember.__table__
                already = conn.execute(select(func.count()).select_from(members).where(
                    members.c.list_id == list_id, members.c.contact_id.in_(ids))).scalar_one()
                execute_many(conn, self._member_insert, [{"list_id": list_id, "contact_id": i} for i in ids])
                result.added_to_list += len(ids) - already
            if before_commit is not None:
                before_commit()
        return result

    def list_contacts(self, list_name: str) -> Iterator[ContactData]:
        """Members of a list, in the order they were first imported."""
        list_id = self.list_id(list_name)
        table = Contact.__table__
        members = ListMember.__table__
        query = (select(table).join(members, members.c.contact_id == table.c.id)
                 .where(members.c.list_id == list_id).order_by(table.c.id))
        with self.engine.connect() as conn:
            for row in conn.execute(query).mappings():
                yield contact_from_row(row)

    def contacts_by_id(self, ids: Iterable[int]) -> dict[int, ContactData]:
        table = Contact.__table__
        wanted = list(ids)
        found: dict[int, ContactData] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                for row in conn.execute(select(table).where(table.c.id.in_(wanted[start:start + 500]))).mappings():
                    found[row["id"]] = contact_from_row(row)
        return found

    def count_contacts(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(Contact.__table__)).scalar_one()

    # ---------------------------------------------------------------- suppression list

    def suppress(self, *, scope: str, value: str, origin: str, reason: str = "",
                 campaign_id: str = "", at: datetime | None = None) -> bool:
        """Add one entry; False when it was already there (idempotent)."""
        return self.suppress_many([(scope, value)], origin=origin, reason=reason,
                                  campaign_id=campaign_id, at=at) == 1

    def suppress_many(self, entries: Iterable[tuple[str, str]], *, origin: str, reason: str = "",
                      campaign_id: str = "", at: datetime | None = None) -> int:
        at = at or utcnow()
        rows = [{"scope": s, "value": v, "origin": origin, "reason": reason,
                 "campaign_id": campaign_id, "created_at": at} for s, v in dict.fromkeys(entries)]
        if not rows:
            return 0
        table = Suppression.__table__
        with self.engine.begin() as conn:
            # The rows really added, as RETURNING gives them back: rowcount is not summed over
            # SQLAlchemy's batched "insertmanyvalues" on PostgreSQL (it said 0 for one new row).
            statement = self._insert_ignore(table)
            if conn.dialect.insert_executemany_returning:
                return len(conn.execute(statement.returning(table.c.id), rows).all())
            return sum(max(conn.execute(statement, row).rowcount, 0) for row in rows)  # SQLite before 3.35

    def unsuppress(self, scope: str, value: str) -> bool:
        table = Suppression.__table__
        with self.engine.begin() as conn:
            done = conn.execute(delete(table).where(table.c.scope == scope, table.c.value == value))
        return done.rowcount > 0

    def suppressions(self) -> list[Suppression]:
        table = Suppression.__table__
        with self.engine.connect() as conn:
            rows = conn.execute(select(table).order_by(table.c.created_at, table.c.id)).mappings()
            return [Suppression(**row) for row in rows]

    def suppressed_sets(self) -> tuple[set[str], set[str]]:
        """(address hashes, domains) on the suppression list, for the gate."""
        table = Suppression.__table__
        hashes: set[str] = set()
        domains: set[str] = set()
        with self.engine.connect() as conn:
            for scope, value in conn.execute(select(table.c.scope, table.c.value)):
                (hashes if scope == "address" else domains).add(value)
        return hashes, domains

    def is_suppressed_hash(self, hash_value: str) -> bool:
        table = Suppression.__table__
        with self.engine.connect() as conn:
            return conn.execute(select(table.c.id).where(
                table.c.scope == "address", table.c.value == hash_value).limit(1)).first() is not None

    def has_erasures(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(Erasure.__table__.c.id).limit(1)).first() is not None

    def erasures(self, digests: Sequence[str]) -> dict[str, tuple[str, datetime]]:
        """hash -> (reason, when) of the latest erasure, for those of `digests` that were erased."""
        table = Erasure.__table__
        found: dict[str, tuple[str, datetime]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(digests), 500):
                for r in conn.execute(select(table.c.address_hash, table.c.reason, table.c.erased_at).where(
                        table.c.address_hash.in_(digests[start:start + 500])).order_by(table.c.erased_at)):
                    found[r.address_hash] = (r.reason, r.erased_at)
        return found

    # ---------------------------------------------------------------- campaigns and runs

    def record_campaign(self, campaign_id: str, kind: str, locale: str, list_name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(self._insert_ignore(CampaignRecord.__table__), [{
                "id": campaign_id, "kind": kind, "locale": locale, "list_name": list_name,
                "created_at": utcnow()}])

    def take_lease(self, campaign_id: str, owner: str, seconds: float,
                   owner_is_dead: Callable[[str], bool]) -> tuple[bool, str, datetime | None]:
        """Become the one process sending this campaign, for `seconds` (renewable).

        Succeeds when nobody holds the lease, it expired, it is ours, or its owner
        is a dead process on this host. Returns (taken, current owner, until).
        """
        table = CampaignRecord.__table__
        now = utcnow()
        with self.engine.begin() as conn:
            row = conn.execute(select(table.c.lease_owner, table.c.lease_until)
                               .where(table.c.id == campaign_id)).first()
            if row is None:
                return False, "", None
            holder, until = row.lease_owner, row.lease_until
            if until is not None and until.tzinfo is None:
                until = until.replace(tzinfo=UTC)
            free = not holder or holder == owner or until is None or until < now or owner_is_dead(holder)
            if not free:
                return False, holder, until
            taken = conn.execute(update(table).where(
                table.c.id == campaign_id,
                table.c.lease_owner == holder).values(
                lease_owner=owner, lease_until=now + timedelta(seconds=seconds))).rowcount
        return taken == 1, holder, until

    def release_lease(self, campaign_id: str, owner: str) -> None:
        table = CampaignRecord.__table__
        with self.engine.begin() as conn:
            conn.execute(update(table).where(table.c.id == campaign_id, table.c.lease_owner == owner)
                         .values(lease_owner="", lease_until=None))

    def start_run(self, campaign_id: str) -> int:
        with self.engine.begin() as conn:
            return conn.execute(Run.__table__.insert().values(
                campaign_id=campaign_id, started_at=utcnow(), outcome="running", counts={})
            ).inserted_primary_key[0]

    def finish_run(self, run_id: int, outcome: str, counts: dict[str, int]) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(Run.__table__).where(Run.__table__.c.id == run_id).values(
                finished_at=utcnow(), outcome=outcome, counts=counts))

    def last_run(self, campaign_id: str) -> Run | None:
        table = Run.__table__
        with self.engine.connect() as conn:
            row = conn.execute(select(table).where(table.c.campaign_id == campaign_id)
                               .order_by(table.c.id.desc()).limit(1)).mappings().first()
        return Run(**row) if row else None

    # ---------------------------------------------------------------- send log

    def mark_crashed_sends_uncertain(self, campaign_id: str) -> int:
        """Rows left in `sending` by a process that died: we cannot know if they left."""
        table = SendLog.__table__
        with self.engine.begin() as conn:
            done = conn.execute(update(table).where(table.c.campaign_id == campaign_id,
                                                    table.c.state == "sending")
                                .values(state="uncertain", updated_at=utcnow(),
                                        detail="the sending process stopped during delivery"))
        return done.rowcount

    def sent_messages(self, message_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """Message-ID -> (campaign id, address key) of the send-log rows that carried these messages."""
        ids = sorted({m for m in message_ids if m})
        table = SendLog.__table__
        found: dict[str, tuple[str, str]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                query = select(table.c.message_id, table.c.campaign_id, table.c.address_key).where(
                    table.c.message_id.in_(ids[start:start + 500]))
                found.update((mid, (campaign, key)) for mid, campaign, key in conn.execute(query))
        return found

    def log_keys(self, campaign_id: str, states: Iterable[str]) -> set[str]:
        """Address keys of this campaign's rows in the given states."""
        table = SendLog.__table__
        with self.engine.connect() as conn:
            return set(conn.execute(select(table.c.address_key).where(
                table.c.campaign_id == campaign_id, table.c.state.in_(list(states)))).scalars())

    def write_decisions(self, campaign_id: str, rows: Sequence[dict[str, Any]],
                        replaceable: Sequence[str] = ("blocked", "planned", "deferred")) -> None:
        """Upsert gate decisions (state blocked or planned), replacing only rows in `replaceable` states."""
        if not rows:
            return
        now = utcnow()
        statement = _decisions_statement(self.dialect, tuple(replaceable))
        payload = [{"campaign_id": campaign_id, "planned_at": now, "updated_at": now, "run_id": None,
                    "attempts": 0, "subject": "", "message_id": "", "smtp_text": "", "smtp_code": None,
                    "sent_at": None, "rule": "", "detail": "", **r} for r in rows]
        with self.engine.begin() as conn:
            for start in range(0, len(payload), 1000):
                execute_many(conn, statement, payload[start:start + 1000])

    def pending_chunks(self, campaign_id: str, run_id: int | None, size: int,
                       limit: int | None = None) -> Iterator[list[tuple[int, int]]]:
        """(log id, contact id) of the rows waiting to be delivered, in plan order, `size` at a time.

        Only the rows planned by `run_id` (when given): a row planned by an earlier
        run for a contact since removed from the list is not sent. Pages by id, so
        rows changing state while the caller delivers them do not disturb it.
        """
        table = SendLog.__table__
        after, left = 0, limit
        while left is None or left > 0:
            query = select(table.c.id, table.c.contact_id).where(
                table.c.campaign_id == campaign_id, table.c.state.in_(PENDING_STATES),
                table.c.contact_id.is_not(None), table.c.id > after)
            if run_id is not None:
                query = query.where(table.c.run_id == run_id)
            take = size if left is None else min(size, left)
            with self.engine.connect() as conn:
                rows = [(r.id, r.contact_id) for r in conn.execute(query.order_by(table.c.id).limit(take))]
            if not rows:
                return
            yield rows
            after = rows[-1][0]
            if left is not None:
                left -= len(rows)

    def update_log(self, changes: Sequence[dict[str, Any]]) -> None:
        """Apply per-row changes (each dict has `id`) in one transaction."""
        if not changes:
            return
        now = utcnow()
        with self.engine.begin() as conn:
            update_by_id(conn, SendLog.__table__, [{"updated_at": now, **change} for change in changes])

    def status_counts(self, campaign_id: str) -> tuple[dict[str, int], dict[str, int]]:
        """({state: n}, {rule: n for blocked rows})."""
        table = SendLog.__table__
        with self.engine.connect() as conn:
            states = dict(conn.execute(select(table.c.state, func.count()).where(
                table.c.campaign_id == campaign_id).group_by(table.c.state)).all())
            rules = dict(conn.execute(select(table.c.rule, func.count()).where(
                table.c.campaign_id == campaign_id, table.c.state == "blocked").group_by(table.c.rule)).all())
        return states, rules

    def bounces_recorded(self, campaign_id: str) -> int:
        """Hard bounces put on the suppression list by this campaign (in the session or reported later)."""
        table = Suppression.__table__
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table).where(
                table.c.campaign_id == campaign_id, table.c.origin == "bounce")).scalar_one()

    def log_rows(self, campaign_id: str, states: Sequence[str] | None = None) -> list[SendLog]:
        table = SendLog.__table__
        query = select(table).where(table.c.campaign_id == campaign_id)
        if states:
            query = query.where(table.c.state.in_(states))
        with self.engine.connect() as conn:
            return [SendLog(**row) for row in conn.execute(query.order_by(table.c.id)).mappings()]

    def campaign_known(self, campaign_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(CampaignRecord.__table__.c.id).where(
                CampaignRecord.__table__.c.id == campaign_id)).first() is not None


class _DriverStatement:
    """A Core statement compiled once for a dialect, run with the driver's executemany.

    SQLAlchemy's per-row parameter handling (`construct_params`) cost more than
    SQLite's own work on the hot paths (claims and outcomes of the send log, gate
    decisions, contact upserts). Compiled once, each row only goes through the
    bind processors of its own columns (a datetime to SQLite text, for example)
    and the DBAPI cursor gets plain tuples (qmark) or dicts (pyformat).
    """

    def __init__(self, statement: Any, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        self.statement = statement  # keeps the cache key's object alive
        self.sql = compiled.string
        self.positional = compiled.positional
        names = list(compiled.positiontup or []) if compiled.positional else list(compiled.binds)
        # One function per statement turns a row dict into the driver's parameters: each
        # value through its column's bind processor; a literal of the statement (a WHERE
        # constant) when the row has no value for it.
        namespace: dict[str, Any] = {}
        values = []
        for index, name in enumerate(names):
            bind = compiled.binds[name]
            if bind.required or bind.callable:
                value = f"row[{name!r}]"
            else:
                namespace[f"d{index}"] = bind.value
                value = f"row.get({name!r}, d{index})"
            process = _last_value_kept(bind.type.dialect_impl(dialect).bind_processor(dialect))
            if process is not None:
                namespace[f"p{index}"] = process
                value = f"p{index}({value})"
            values.append(value if compiled.positional else f"{name!r}: {value}")
        body = f"({', '.join(values)},)" if compiled.positional else f"{{{', '.join(values)}}}"
        exec(f"def convert(row):\n    return {body}\n", namespace)  # noqa: S102 - our own column names only
        self.convert = namespace["convert"]

    def parameters(self, rows: Sequence[dict[str, Any]]) -> list[Any]:
        return list(map(self.convert, rows))


def _last_value_kept(process: Callable[[Any], Any] | None) -> Callable[[Any], Any] | None:
    """A bind processor that remembers its last value: the rows of one executemany mostly share
    their timestamps (one `now` per batch), and a datetime's processor is pure Python."""
    if process is None:
        return None
    last: list[Any] = [object(), None]

    def processed(value: Any) -> Any:
        if value is last[0]:
            return last[1]
        result = process(value)
        if type(value) in (datetime, date):  # immutable: safe to recognise by identity
            last[0], last[1] = value, result
        return result

    return processed


_DRIVER_STATEMENTS: dict[tuple[int, str], _DriverStatement] = {}


def execute_many(conn: Any, statement: Any, rows: Sequence[dict[str, Any]]) -> int:
    """`conn.execute(statement, rows)` for long-lived statements, without SQLAlchemy's per-row cost.

    Returns the rowcount summed over the rows (sqlite3 and psycopg both sum it).
    """
    if not rows:
        return 0
    key = (id(statement), conn.dialect.name)
    driver = _DRIVER_STATEMENTS.get(key)
    if driver is None or driver.statement is not statement:
        driver = _DRIVER_STATEMENTS[key] = _DriverStatement(statement, conn.dialect)
    return conn.exec_driver_sql(driver.sql, driver.parameters(rows)).rowcount


_contacts = Contact.__table__
_CONTACT_INSERT = _contacts.insert().values({c.name: bindparam(c.name) for c in _contacts.c if c.name != "id"})

def _dialect_insert(dialect: str, table: Any) -> Any:
    """An INSERT with the dialect's ON CONFLICT clauses (PostgreSQL or SQLite)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    return insert(table)


_DECISION_STATEMENTS: dict[tuple[str, tuple[str, ...]], Any] = {}


def _decisions_statement(dialect: str, replaceable: tuple[str, ...]) -> Any:
    """INSERT … ON CONFLICT (campaign, address) DO UPDATE, only over rows in `replaceable` states."""
    statement = _DECISION_STATEMENTS.get((dialect, replaceable))
    if statement is not None:
        return statement
    table = SendLog.__table__
    statement = _dialect_insert(dialect, table).values({c.name: bindparam(c.name) for c in table.c if c.name != "id"})
    statement = statement.on_conflict_do_update(
        index_elements=["campaign_id", "address_key"],
        set_={"state": statement.excluded.state, "rule": statement.excluded.rule,
              "run_id": statement.excluded.run_id,
              "detail": statement.excluded.detail, "contact_id": statement.excluded.contact_id,
              "updated_at": statement.excluded.updated_at},
        # OR of equalities, not IN: an expanding IN cannot be used with executemany.
        where=or_(*(table.c.state == state for state in replaceable)),
    )
    _DECISION_STATEMENTS[(dialect, replaceable)] = statement
    return statement


_UPDATE_STATEMENTS: dict[tuple[str, tuple[str, ...]], Any] = {}


def update_by_id(conn: Any, table: Any, rows: Sequence[dict[str, Any]]) -> None:
    """UPDATE … WHERE id = ? as one executemany per set of columns.

    Statements are built once per (table, columns): on the send path this runs
    for every group commit, and building a statement costs more than running it.
    """
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        columns = tuple(sorted(k for k in row if k != "id"))
        groups.setdefault(columns, []).append({"_id": row["id"], **{f"_{k}": row[k] for k in columns}})
    for columns, params in groups.items():
        statement = _UPDATE_STATEMENTS.get((table.name, columns))
        if statement is None:
            statement = update(table).where(table.c.id == bindparam("_id")).values(
                {k: bindparam(f"_{k}") for k in columns})
            _UPDATE_STATEMENTS[(table.name, columns)] = statement
        execute_many(conn, statement, params)


def _defaults() -> dict[str, Any]:
    return {"first_name": "", "last_name": "", "company": "", "job_title": "", "industry": "",
            "country": "", "source": "", "source_type": "direct", "consent": "", "consent_at": None,
            "consent_proof": "", "partner_consent": False, "last_interaction_at": None, "member": False}


_OPTIONAL = ("first_name", "last_name", "company", "job_title", "industry", "country", "source",
             "source_type", "collected_at", "consent", "consent_at", "consent_proof",
             "partner_consent", "last_interaction_at", "member")


def _row_for(record: ContactData, present: frozenset[str], now: datetime) -> dict[str, Any]:
    row: dict[str, Any] = {
        "email_key": record.address.key,
        "email": record.address.send_to,
        "email_valid": record.address.valid,
        "email_problem": record.address.reason,
        "kind": record.kind,
        "attrs": dict(record.attrs),
        "updated_at": now,
    }
    for name in _OPTIONAL:
        if name in present:
            row[name] = getattr(record, name)
    return row


def contact_from_row(row: Any) -> ContactData:
    address = NormalisedAddress(key=row["email_key"], send_to=row["email"],
                                valid=bool(row["email_valid"]), reason=row["email_problem"])
    return ContactData(
        address=address, kind=row["kind"], first_name=row["first_name"], last_name=row["last_name"],
        company=row["company"], job_title=row["job_title"], industry=row["industry"],
        country=row["country"], source=row["source"], source_type=row["source_type"],
        collected_at=row["collected_at"], consent=row["consent"], consent_at=row["consent_at"],
        consent_proof=row["consent_proof"], partner_consent=bool(row["partner_consent"]),
        last_interaction_at=row["last_interaction_at"], member=bool(row["member"]),
        attrs=dict(row["attrs"] or {}), id=row["id"],
    )
