"""Campaigns, their runs (each one a sender, with its heartbeat), the lease that lets one process
at a time send a campaign on SQLite, and on PostgreSQL the planning lock and the shared rate."""
from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, text, update
from sqlalchemy.engine import Engine

from .reconnect import NEVER, Reconnect
from .sql import advisory_lock_key, insert_ignore
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

    def start_run(self, campaign_id: str, fingerprint: str = "", sender: str = "") -> int:
        """A new run, "running"; with `sender` ("host:pid") a sender whose heartbeat starts now."""
        now = utcnow()
        with self.engine.begin() as conn:
            key = conn.execute(RUNS.insert().values(
                campaign_id=campaign_id, started_at=now, outcome="running", counts={},
                fingerprint=fingerprint, sender=sender, heartbeat_at=now if sender else None)).inserted_primary_key
            assert key is not None
            return int(key[0])

    def beat(self, run_id: int) -> None:
        """The sender of `run_id` is alive now."""
        with self.engine.begin() as conn:
            conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(heartbeat_at=utcnow()))

    def send_plan(self, run_id: int, plan_run_id: int) -> None:
        """Run `run_id` sends the (complete) plan of `plan_run_id`: its own when it planned."""
        self.reconnect.run(lambda: self._set_plan(run_id, plan_run_id))

    def _set_plan(self, run_id: int, plan_run_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(plan_run_id=plan_run_id))

    def running(self, campaign_id: str) -> list[Run]:
        """The runs of the campaign recorded as running (alive, or dead without saying so), oldest first."""
        table = RUNS
        query = select(table).where(table.c.campaign_id == campaign_id, table.c.outcome == "running")
        return self.reconnect.run(lambda: self._runs(query.order_by(table.c.id)))

    def runs(self, ids: Collection[int]) -> list[Run]:
        """These runs, oldest first."""
        table = RUNS
        return self._runs(select(table).where(table.c.id.in_(sorted(ids))).order_by(table.c.id)) if ids else []

    def _runs(self, query: object) -> list[Run]:
        with self.engine.connect() as conn:
            return [Run(**row) for row in conn.execute(query).mappings()]  # type: ignore[call-overload]

    @contextmanager
    def planning(self, campaign_id: str) -> Iterator[None]:
        """Hold the campaign's planning lock (PostgreSQL: a session advisory lock, waited for): the
        senders starting together plan one at a time, so one plans and the others find its plan.
        The server releases it if this process dies. SQLite needs none: its lease admits one sender."""
        if self.dialect != "postgresql":
            yield
            return
        key = advisory_lock_key(f"mailer/plan/{campaign_id}")
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            conn.commit()
            try:
                yield
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    conn.commit()
                except Exception:  # noqa: BLE001 - a connection lost meanwhile released it already
                    conn.invalidate()

    def take_send_slots(self, campaign_id: str, count: int, interval: float) -> float:
        """Reserve the campaign's next `count` sending slots, `interval` seconds apart, for all its
        senders together (PostgreSQL): the seconds to wait before the first of them (0 when the
        budget is idle: unused slots of the past are not saved up). The database's clock measures
        both, so senders on several machines share one timeline whatever their clocks say."""
        table = CAMPAIGNS
        span = timedelta(seconds=count * interval)
        start = func.greatest(func.coalesce(table.c.next_send_at, func.now()), func.now())
        statement = (update(table).where(table.c.id == campaign_id).values(next_send_at=start + span)
                     .returning(func.extract("epoch", table.c.next_send_at - func.now())))

        def take() -> float:
            with self.engine.begin() as conn:
                ahead = conn.execute(statement).scalar()
            return max(0.0, float(ahead or 0) - span.total_seconds())

        return self.reconnect.run(take)

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
