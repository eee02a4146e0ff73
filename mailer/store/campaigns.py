"""Campaigns, their runs, and the lease that lets one process at a time send a campaign."""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine

from .reconnect import NEVER, Reconnect
from .sql import insert_ignore
from .tables import CAMPAIGNS, RUNS, SEND_LOG, Run, utcnow


class Campaigns:
    """The writes a send makes around its deliveries go on through a PostgreSQL restart
    (`reconnect`): each is safe to run again (the lease is ours or not, a run's row by id)."""

    def __init__(self, engine: Engine, reconnect: Reconnect = NEVER) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.reconnect = reconnect

    def record(self, campaign_id: str, kind: str, locale: str, list_name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert_ignore(self.dialect, CAMPAIGNS), [{
                "id": campaign_id, "kind": kind, "locale": locale, "list_name": list_name,
                "created_at": utcnow()}])

    def take_lease(self, campaign_id: str, owner: str, seconds: float,
                   owner_is_dead: Callable[[str], bool]) -> tuple[bool, str, datetime | None]:
        """Become the one process sending this campaign, for `seconds` (renewable).

        Succeeds when nobody holds the lease, it expired, it is ours, or its owner
        is a dead process on this host. Returns (taken, holder, until): when not taken,
        the process that holds it now.

        The row is locked before it is read (a no-op UPDATE: PostgreSQL's row lock, SQLite's
        write lock), so two processes starting together do not both read it free: the second
        one, refused, named its holder as "" ("being sent by another process ()").
        """
        return self.reconnect.run(lambda: self._take_lease(campaign_id, owner, seconds, owner_is_dead))

    def _take_lease(self, campaign_id: str, owner: str, seconds: float,
                    owner_is_dead: Callable[[str], bool]) -> tuple[bool, str, datetime | None]:
        table = CAMPAIGNS
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(update(table).where(table.c.id == campaign_id)
                         .values(lease_owner=table.c.lease_owner))
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
            until = now + timedelta(seconds=seconds)
            conn.execute(update(table).where(table.c.id == campaign_id).values(lease_owner=owner, lease_until=until))
        return True, owner, until

    def lease(self, campaign_id: str) -> tuple[str, datetime | None]:
        """Who holds the campaign's lease and until when ("" and None: nobody). Reads only."""
        table = CAMPAIGNS
        with self.engine.connect() as conn:
            row = conn.execute(select(table.c.lease_owner, table.c.lease_until)
                               .where(table.c.id == campaign_id)).first()
        if row is None or not row.lease_owner:
            return "", None
        until = row.lease_until
        if until is not None and until.tzinfo is None:
            until = until.replace(tzinfo=UTC)
        return row.lease_owner, until

    def release_lease(self, campaign_id: str, owner: str) -> None:
        table = CAMPAIGNS

        def release() -> None:
            with self.engine.begin() as conn:
                conn.execute(update(table).where(table.c.id == campaign_id, table.c.lease_owner == owner)
                             .values(lease_owner="", lease_until=None))

        self.reconnect.run(release)

    def sent_versions(self, campaign_id: str) -> dict[str, tuple[int, datetime]]:
        """fingerprint -> (messages sent, first run's start) of the runs that sent this campaign's
        messages; runs recorded before fingerprints were kept count under ""."""
        log = SEND_LOG
        query = (select(RUNS.c.fingerprint, func.count(), func.min(RUNS.c.started_at))
                 .select_from(log.join(RUNS, RUNS.c.id == log.c.run_id))
                 .where(log.c.campaign_id == campaign_id, log.c.state == "sent")
                 .group_by(RUNS.c.fingerprint))
        with self.engine.connect() as conn:
            return {fingerprint: (count, started) for fingerprint, count, started in conn.execute(query)}

    def start_run(self, campaign_id: str, fingerprint: str = "") -> int:
        with self.engine.begin() as conn:
            key = conn.execute(RUNS.insert().values(
                campaign_id=campaign_id, started_at=utcnow(), outcome="running", counts={},
                fingerprint=fingerprint)).inserted_primary_key
            assert key is not None
            return int(key[0])

    def finish_run(self, run_id: int, outcome: str, counts: dict[str, int]) -> None:
        def finish() -> None:
            with self.engine.begin() as conn:
                conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(
                    finished_at=utcnow(), outcome=outcome, counts=counts))

        self.reconnect.run(finish)

    def last_run(self, campaign_id: str) -> Run | None:
        table = RUNS
        with self.engine.connect() as conn:
            row = conn.execute(select(table).where(table.c.campaign_id == campaign_id)
                               .order_by(table.c.id.desc()).limit(1)).mappings().first()
        return Run(**row) if row else None

    def ids(self) -> list[str]:
        """Every campaign ever planned for sending, oldest first."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(CAMPAIGNS.c.id).order_by(CAMPAIGNS.c.created_at, CAMPAIGNS.c.id)).scalars())

    def known(self, campaign_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(CAMPAIGNS.c.id).where(
                CAMPAIGNS.c.id == campaign_id)).first() is not None
