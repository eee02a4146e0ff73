"""Contacts and their lists."""
from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, or_, select
from sqlalchemy.engine import Connection, Engine

from ..addresses import NormalisedAddress
from ..contacts import ContactData
from ..errors import ListNotFound
from .reconnect import NEVER, Reconnect
from .sql import execute_many, insert_ignore, update_by_id
from .tables import CONTACTS, LIST_MEMBERS, LISTS, utcnow


@dataclass
class ImportResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0  # rows the file gives as stored already (nothing written)
    added_to_list: int = 0


class Contacts:
    """Contacts, matched on their normalised address, and the lists they belong to."""

    def __init__(self, engine: Engine, reconnect: Reconnect = NEVER) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.reconnect = reconnect

    @functools.cached_property
    def _member_insert(self) -> Any:
        members = LIST_MEMBERS
        return insert_ignore(self.dialect, members).values(list_id=bindparam("list_id"),
                                                           contact_id=bindparam("contact_id"))

    def list_size(self, name: str) -> int:
        """How many contacts the list has (0 when there is no such list yet)."""
        members, lists = LIST_MEMBERS, LISTS
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(members.join(lists, lists.c.id == members.c.list_id))
                                .where(lists.c.name == name)).scalar_one()

    def list_id(self, name: str) -> int:
        with self.engine.connect() as conn:
            found = conn.execute(select(LISTS.c.id).where(LISTS.c.name == name)).scalar()
        if found is None:
            raise ListNotFound(name)
        return found

    def upsert(self, records: Iterable[ContactData], list_name: str,
               present_columns: frozenset[str], *, now: datetime | None = None,
               chunk: int = 500, batch: int = 2000) -> ImportResult:
        """Insert or update contacts on their normalised address, and add them to a list.

        Only the columns present in the file overwrite stored values; custom
        attributes are merged; `collected_at` keeps its stored value unless the file
        gives one (a re-import must not restart the retention clock). Records are
        consumed in chunks of `chunk`, so a large file is never all in memory, and
        written in transactions of about `batch` records, so that other writers wait
        for one batch at most (SQLite has one writer at a time). The caller validates
        first: what is written stays written.
        """
        now = now or utcnow()
        result = ImportResult()
        with self.engine.begin() as conn:
            conn.execute(insert_ignore(self.dialect, LISTS), [{"name": list_name, "created_at": now}])
            list_id = conn.execute(select(LISTS.c.id).where(LISTS.c.name == list_name)).scalar_one()
        chunks = _batches(records, chunk)
        per_transaction = max(1, batch // chunk)
        while True:
            taken = list(itertools.islice(chunks, per_transaction))
            if not taken:
                return result
            with self.engine.begin() as conn:
                for rows in taken:
                    self._upsert_chunk(conn, rows, list_id, present_columns, now, result)

    def _upsert_chunk(self, conn: Connection, batch: list[ContactData], list_id: int,
                      present_columns: frozenset[str], now: datetime, result: ImportResult) -> None:
        table = CONTACTS
        keys = [r.address.key for r in batch]
        existing = {row["email_key"]: row for row in
                    conn.execute(select(table).where(table.c.email_key.in_(keys))).mappings()}
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for record in batch:
            found = existing.get(record.address.key)
            changes = _changes(record, present_columns, now, found)
            if found is None:
                inserts.append(changes)
            elif any(found[name] != value for name, value in changes.items() if name not in _BOOKKEEPING):
                updates.append(changes)
            else:
                result.unchanged += 1
        if inserts:
            execute_many(conn, _CONTACT_INSERT, inserts)
        if updates:
            update_by_id(conn, table, updates)
        result.inserted += len(inserts)
        result.updated += len(updates)
        ids = conn.execute(select(table.c.id).where(table.c.email_key.in_(keys))).scalars().all()
        members = LIST_MEMBERS
        already = conn.execute(select(func.count()).select_from(members).where(
            members.c.list_id == list_id, members.c.contact_id.in_(ids))).scalar_one()
        execute_many(conn, self._member_insert, [{"list_id": list_id, "contact_id": i} for i in ids])
        result.added_to_list += len(ids) - already

    def as_upserted(self, records: Iterable[ContactData], present_columns: frozenset[str], *,
                    now: datetime | None = None, chunk: int = 500) -> Iterator[ContactData]:
        """What `upsert` would store for these records, without writing: each merged with the
        stored contact of its address by the same rules (id None for a new contact)."""
        now = now or utcnow()
        with self.engine.connect() as conn:
            for batch in _batches(records, chunk):
                existing = {row["email_key"]: row for row in conn.execute(
                    select(CONTACTS).where(CONTACTS.c.email_key.in_([r.address.key for r in batch]))).mappings()}
                for record in batch:
                    found = existing.get(record.address.key)
                    changes = _changes(record, present_columns, now, found)
                    yield contact_from_row({**found, **changes} if found is not None else {"id": None, **changes})

    def members(self, list_name: str) -> Iterator[ContactData]:
        """Members of a list, in the order they were first imported."""
        list_id = self.list_id(list_name)
        table = CONTACTS
        members = LIST_MEMBERS
        query = (select(table).join(members, members.c.contact_id == table.c.id)
                 .where(members.c.list_id == list_id).order_by(table.c.id))
        with self.engine.connect() as conn:
            for row in conn.execute(query).mappings():
                yield contact_from_row(row)

    def by_id(self, ids: Iterable[int]) -> dict[int, ContactData]:
        table = CONTACTS
        wanted = list(ids)

        def read() -> dict[int, ContactData]:
            found: dict[int, ContactData] = {}
            with self.engine.connect() as conn:
                for start in range(0, len(wanted), 500):
                    for row in conn.execute(select(table).where(table.c.id.in_(wanted[start:start + 500]))).mappings():
                        found[row["id"]] = contact_from_row(row)
            return found

        return self.reconnect.run(read)  # on the send path: goes on through a server restart

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(CONTACTS)).scalar_one()

    def search(self, *, list_name: str | None = None, text: str = "", limit: int = 100
               ) -> tuple[list[tuple[ContactData, list[str]]], int]:
        """Contacts (of one list, when given) whose address, name, company or job title contains
        `text` (any case), in import order, each with its lists; at most `limit`, and how many match."""
        table, members, lists = CONTACTS, LIST_MEMBERS, LISTS
        where: list[Any] = []
        if list_name is not None:
            list_id = self.list_id(list_name)
            where.append(table.c.id.in_(select(members.c.contact_id).where(members.c.list_id == list_id)))
        if text:
            pattern = "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append(or_(*(func.lower(column).like(pattern, escape="\\") for column in
                               (table.c.email_key, table.c.first_name, table.c.last_name, table.c.company,
                                table.c.job_title))))
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
            rows = list(conn.execute(select(table).where(*where).order_by(table.c.id).limit(limit)).mappings())
            ids = [row["id"] for row in rows]
            names: dict[int, list[str]] = {i: [] for i in ids}
            if ids:
                query = (select(members.c.contact_id, lists.c.name).join(lists, lists.c.id == members.c.list_id)
                         .where(members.c.contact_id.in_(ids)).order_by(lists.c.name))
                for contact_id, name in conn.execute(query):
                    names[contact_id].append(name)
        return [(contact_from_row(row), names[row["id"]]) for row in rows], total

    def remove_from_list(self, key: str, list_name: str) -> bool:
        """Take the contact with this normalised address out of a list (the contact stays)."""
        list_id = self.list_id(list_name)
        with self.engine.begin() as conn:
            contact_id = conn.execute(select(CONTACTS.c.id).where(CONTACTS.c.email_key == key)).scalar()
            if contact_id is None:
                return False
            removed = conn.execute(LIST_MEMBERS.delete().where(LIST_MEMBERS.c.list_id == list_id,
                                                               LIST_MEMBERS.c.contact_id == contact_id))
        return bool(removed.rowcount)


_contacts = CONTACTS
_CONTACT_INSERT = _contacts.insert().values({c.name: bindparam(c.name) for c in _contacts.c if c.name != "id"})


def _batches(records: Iterable[ContactData], size: int) -> Iterator[list[ContactData]]:
    """Records in batches of distinct addresses. A key repeated within a batch: the later row
    wins. Repeated across batches: upserted again, same result. The caller counts repetitions."""
    batch: dict[str, ContactData] = {}
    for record in records:
        batch[record.address.key] = record
        if len(batch) >= size:
            yield list(batch.values())
            batch = {}
    if batch:
        yield list(batch.values())


#: columns an update sets whatever the file says: a row whose other values are all as stored is unchanged
_BOOKKEEPING = frozenset({"id", "updated_at", "created_at"})


def _changes(record: ContactData, present: frozenset[str], now: datetime, found: Any) -> dict[str, Any]:
    """The row to insert (found is None) or the changes to make to the stored row `found`
    (which has at least id, attrs and last_interaction_at)."""
    row = _row_for(record, present, now)
    if found is None:
        return {**_defaults(), **row, "created_at": now}
    # An empty date cell never erases what we know, and a contact from the
    # person cannot be undone by an older file.
    for name in ("collected_at", "consent_at", "last_interaction_at"):
        if row.get(name) is None:
            row.pop(name, None)
    if found["last_interaction_at"] and row.get("last_interaction_at"):
        row["last_interaction_at"] = max(row["last_interaction_at"], found["last_interaction_at"])
    row["attrs"] = {**(found["attrs"] or {}), **row["attrs"]}
    row["id"] = found["id"]
    return row


def _defaults() -> dict[str, Any]:
    return {"first_name": "", "last_name": "", "company": "", "job_title": "", "industry": "",
            "country": "", "source": "", "source_type": "direct", "collected_at": None, "consent": "", "consent_at": None,
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
