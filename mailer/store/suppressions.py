"""The suppression list: objections to honour, whatever the campaign.

It holds no personal data: an address is kept as its keyed hash, a domain as itself.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection, Engine

from ..addresses import normalise_domain
from .sql import BUSY_TIMEOUT_MS, insert_ignore
from .tables import SUPPRESSIONS, Suppression, utcnow

_table = SUPPRESSIONS


class Suppressions:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    def add(self, *, scope: str, value: str, origin: str, reason: str = "",
            campaign_id: str = "", at: datetime | None = None) -> bool:
        """Add one entry; False when it was already there (idempotent)."""
        return self.add_many([(scope, value)], origin=origin, reason=reason, campaign_id=campaign_id, at=at) == 1

    def add_many(self, entries: Iterable[tuple[str, str]], *, origin: str, reason: str = "",
                 campaign_id: str = "", at: datetime | None = None) -> int:
        """Add (scope, value) entries; returns how many were new."""
        at = at or utcnow()
        return self.add_rows([{"scope": s, "value": v, "origin": origin, "reason": reason,
                               "campaign_id": campaign_id, "created_at": at} for s, v in dict.fromkeys(entries)])

    def add_rows(self, rows: Sequence[dict[str, Any]], *, patience: float | None = None) -> int:
        """Add entries (dicts of scope, value, origin, reason, campaign_id, created_at); returns how
        many were new.

        With `patience` (seconds), the write waits at most that long for another writer's lock
        (SQLite's busy timeout, PostgreSQL's lock_timeout) and raises OperationalError past it,
        and the commit is durable when this returns (SQLite syncs its WAL, which it otherwise
        leaves to the next checkpoint): what an opt-out answered 200 needs.
        """
        if not rows:
            return 0
        if patience is None:
            with self.engine.begin() as conn:
                return self._insert(conn, rows)
        wait_ms = max(1, int(patience * 1000))
        conn = self.engine.connect()
        try:
            if self.dialect == "sqlite":
                # Outside a transaction (the driver begins one at the INSERT): synchronous
                # cannot change inside one.
                conn.exec_driver_sql(f"PRAGMA busy_timeout={wait_ms}")
                conn.exec_driver_sql("PRAGMA synchronous=FULL")
            elif self.dialect == "postgresql":
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {wait_ms}")
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {wait_ms + 1000}")
                conn.exec_driver_sql("SET LOCAL synchronous_commit = on")
            added = self._insert(conn, rows)
            conn.commit()
            return added
        except BaseException:
            conn.rollback()
            raise
        finally:
            if self.dialect == "sqlite":
                try:  # the pooled connection goes back as every other one is
                    conn.exec_driver_sql(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                    conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
                    conn.commit()
                except Exception:  # noqa: BLE001 - a connection that cannot be reset is not reused
                    conn.invalidate()
            conn.close()

    def _insert(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
        # The rows really added, as RETURNING gives them back: rowcount is not summed over
        # SQLAlchemy's batched "insertmanyvalues" on PostgreSQL (it said 0 for one new row).
        statement = insert_ignore(self.dialect, _table)
        if conn.dialect.insert_executemany_returning:
            return len(conn.execute(statement.returning(_table.c.id), list(rows)).all())
        return sum(max(conn.execute(statement, row).rowcount, 0) for row in rows)  # SQLite before 3.35

    def remove(self, scope: str, *values: str) -> bool:
        """Remove the entries of `scope` holding any of `values`; False when there was none."""
        with self.engine.begin() as conn:
            done = conn.execute(delete(_table).where(_table.c.scope == scope, _table.c.value.in_(values)))
        return done.rowcount > 0

    def matching(self, hashes: Iterable[str], domains: Iterable[str]) -> list[Suppression]:
        """The entries holding one of these address hashes or domains, oldest first."""
        hashes, domains = list(hashes), list(domains)
        with self.engine.connect() as conn:
            rows = conn.execute(select(_table).where(
                ((_table.c.scope == "address") & _table.c.value.in_(hashes))
                | ((_table.c.scope == "domain") & _table.c.value.in_(domains)))
                .order_by(_table.c.created_at, _table.c.id)).mappings()
            return [Suppression(**row) for row in rows]

    def entries(self) -> list[Suppression]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(_table).order_by(_table.c.created_at, _table.c.id)).mappings()
            return [Suppression(**row) for row in rows]

    def sets(self) -> tuple[set[str], set[str]]:
        """(address hashes, domains) on the suppression list, for the gate."""
        hashes: set[str] = set()
        domains: set[str] = set()
        with self.engine.connect() as conn:
            for scope, value in conn.execute(select(_table.c.scope, _table.c.value)):
                if scope == "address":
                    hashes.add(value)
                else:
                    domains.add(normalise_domain(value))
        return hashes, domains

    def has_hash(self, *hash_values: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(_table.c.id).where(
                _table.c.scope == "address", _table.c.value.in_(hash_values)).limit(1)).first() is not None

    def origins_by_campaign(self) -> dict[str, dict[str, int]]:
        """campaign id -> origin ("one-click", "link", "mailto", "bounce", …) -> entries it caused."""
        found: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for campaign_id, origin, count in conn.execute(
                    select(_table.c.campaign_id, _table.c.origin, func.count())
                    .where(_table.c.campaign_id.is_not(None), _table.c.campaign_id != "")
                    .group_by(_table.c.campaign_id, _table.c.origin)):
                found.setdefault(campaign_id, {})[origin] = count
        return found

    def bounces_recorded(self, campaign_id: str) -> int:
        """Hard bounces put on the suppression list by this campaign (in the session or reported later)."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(_table).where(
                _table.c.campaign_id == campaign_id, _table.c.origin == "bounce")).scalar_one()


@functools.lru_cache(maxsize=512)
def suppressed_among_sql(paramstyle: str, hashes: int, domains: int) -> str:
    """Which of these address hashes and domains are on the suppression list (driver SQL,
    built once per pair of list lengths: the send path runs it at every group commit)."""
    mark = "?" if paramstyle == "qmark" else "%s"
    return (f"SELECT scope, value FROM {Suppression.__tablename__} WHERE "
            f"(scope = 'address' AND value IN ({', '.join([mark] * hashes)})) OR "
            f"(scope = 'domain' AND value IN ({', '.join([mark] * domains)}))")
