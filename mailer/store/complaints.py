"""Spam complaints: a recipient reported a campaign's message (ARF feedback reports).

Each complaint also puts the address on the suppression list (origin `complaint`), in the same
transaction. Only keyed hashes are kept.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, literal_column, select
from sqlalchemy.engine import Connection, Engine

from .sql import insert_ignore
from .tables import COMPLAINTS, SUPPRESSIONS, utcnow

_table = COMPLAINTS


@dataclass(frozen=True)
class Recorded:
    complaint: bool     # a new complaint (False: this campaign's message to them was reported before)
    suppressed: bool    # newly on the suppression list (False: already there, by any origin)


@dataclass(frozen=True)
class ComplaintEntry:
    campaign_id: str
    feedback_type: str
    reported_at: datetime | None
    recorded_at: datetime


class Complaints:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    def record(self, *, campaign_id: str, address_hash: str, message_id: str, feedback_type: str,
               reported_at: datetime | None, reason: str) -> Recorded:
        """One complaint and the suppression of its address, in one transaction; idempotent
        (a report read again, or a second report about the same message, changes nothing)."""
        now = utcnow()
        with self.engine.begin() as conn:
            complaint = _added(conn, insert_ignore(self.dialect, _table), {
                "campaign_id": campaign_id, "address_hash": address_hash, "message_id": message_id,
                "feedback_type": feedback_type, "reported_at": reported_at, "recorded_at": now})
            # Not again for a complaint recorded before: an entry removed since (`suppress remove`:
            # the person asked to be mailed again) stays removed when the reports are read again.
            suppressed = complaint and _added(conn, insert_ignore(self.dialect, SUPPRESSIONS), {
                "scope": "address", "value": address_hash, "origin": "complaint", "reason": reason,
                "campaign_id": campaign_id, "created_at": now})
        return Recorded(complaint, suppressed)

    def by_campaign(self) -> dict[str, int]:
        """campaign id -> complaints about its messages."""
        with self.engine.connect() as conn:
            return dict(conn.execute(select(_table.c.campaign_id, func.count()).group_by(_table.c.campaign_id)).all())

    def count(self, campaign_id: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(_table).where(
                _table.c.campaign_id == campaign_id)).scalar_one()

    def of(self, digests: Sequence[str]) -> list[ComplaintEntry]:
        """The complaints made from an address (kept under any of the keyed hashes `digests`), oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(_table.c.campaign_id, _table.c.feedback_type, _table.c.reported_at,
                                       _table.c.recorded_at).where(_table.c.address_hash.in_(list(digests)))
                                .order_by(_table.c.recorded_at, _table.c.id)).all()
        return [ComplaintEntry(*row) for row in rows]


def _added(conn: Connection, statement: Any, row: dict[str, Any]) -> bool:
    """Whether an INSERT … ON CONFLICT DO NOTHING of one row added it (RETURNING says so; psycopg's
    rowcount said 0 for a new row)."""
    if conn.dialect.insert_returning:
        return conn.execute(statement.returning(literal_column("1")), row).first() is not None
    return bool(conn.execute(statement, row).rowcount == 1)  # SQLite before 3.35
