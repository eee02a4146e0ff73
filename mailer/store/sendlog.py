"""The send log: one row per (campaign, address), the gate's decision and the delivery.

States and their allowed moves are in `mailer.states`; the statements here follow them.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, bindparam, func, literal_column, or_, select, update
from sqlalchemy.engine import Engine

from ..addresses import domain_and_parents
from ..errors import DatabaseGone
from ..states import DELIVERED_STATES, PENDING_STATES, TRANSITIONS, SendState, check_move
from .place import DatabaseFile
from .reconnect import NEVER, Reconnect
from .sql import advisory_lock_key, dialect_insert, execute_many, insert_ignore, update_by_id
from .suppressions import suppressed_among_sql
from .tables import SEND_LOG, SUPPRESSIONS, SendLog, utcnow

S = SendState
_log = SEND_LOG

#: What a claimed row may become (checked for every outcome the engine writes).
_OUTCOMES = TRANSITIONS[S.SENDING]

#: The states a new decision of the gate may replace: nothing delivered, nothing in flight.
DECIDABLE_STATES: tuple[SendState, ...] = tuple(s for s in SendState if s not in DELIVERED_STATES)


class SendLogRows:
    """Reads and writes of the send log outside the delivery engine's hot path."""

    def __init__(self, engine: Engine, reconnect: Reconnect = NEVER) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.reconnect = reconnect
        #: the SQLite file as opened (set by Store.open): the delivery engine checks it is still there
        self.place: DatabaseFile | None = None

    def mark_crashed_uncertain(self, campaign_id: str) -> int:
        """Rows left in `sending` by a process that died: we cannot know if they left."""
        table = _log
        with self.engine.begin() as conn:
            done = conn.execute(update(table).where(table.c.campaign_id == campaign_id,
                                                    table.c.state == S.SENDING.value)
                                .values(state=S.UNCERTAIN.value, updated_at=utcnow(),
                                        detail="the sending process stopped during delivery"))
        return done.rowcount

    def sent_messages(self, message_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """Message-ID -> (campaign id, address key) of the send-log rows that carried these messages."""
        ids = sorted({m for m in message_ids if m})
        table = _log
        found: dict[str, tuple[str, str]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                query = select(table.c.message_id, table.c.campaign_id, table.c.address_key).where(
                    table.c.message_id.in_(ids[start:start + 500]))
                found.update((mid, (campaign, key)) for mid, campaign, key in conn.execute(query))
        return found

    def keys(self, campaign_id: str, states: Iterable[str]) -> set[str]:
        """Address keys of this campaign's rows in the given states."""
        table = _log
        with self.engine.connect() as conn:
            return set(conn.execute(select(table.c.address_key).where(
                table.c.campaign_id == campaign_id, table.c.state.in_([str(s) for s in states]))).scalars())

    def write_decisions(self, campaign_id: str, rows: Sequence[dict[str, Any]],
                        replaceable: Sequence[str] = DECIDABLE_STATES) -> None:
        """Upsert gate decisions (state blocked or planned), replacing only rows in `replaceable` states."""
        if not rows:
            return
        now = utcnow()
        statement = _decisions_statement(self.dialect, tuple(str(s) for s in replaceable))
        payload = [{"campaign_id": campaign_id, "planned_at": now, "updated_at": now, "run_id": None,
                    "attempts": 0, "subject": "", "message_id": "", "smtp_text": "", "smtp_code": None,
                    "sent_at": None, "rule": "", "detail": "", "claimed_by": None, **r} for r in rows]
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
        table = _log
        after, left = 0, limit
        while left is None or left > 0:
            query = select(table.c.id, table.c.contact_id).where(
                table.c.campaign_id == campaign_id, table.c.state.in_([s.value for s in PENDING_STATES]),
                table.c.contact_id.is_not(None), table.c.id > after)
            if run_id is not None:
                query = query.where(table.c.run_id == run_id)
            take = size if left is None else min(size, left)

            def read(query: Any = query, take: int = take) -> list[tuple[int, int]]:
                with self.engine.connect() as conn:
                    return [(r.id, r.contact_id) for r in conn.execute(query.order_by(table.c.id).limit(take))]

            rows = self.reconnect.run(read)
            if not rows:
                return
            yield rows
            after = rows[-1][0]
            if left is not None:
                left -= len(rows)

    def reserve(self, campaign_id: str, plan_run_id: int, sender: int, size: int,
                after: int = 0) -> list[tuple[int, int]]:
        """Take up to `size` planned rows of the plan of `plan_run_id` for the sender `sender` (a
        run id), in plan order from id `after`: (log id, contact id) of each. The rows stay
        `planned` (a crash leaves them to others, not uncertain); each is claimed when its message
        goes (`LogWriter`). Several senders at once each get rows of their own: on PostgreSQL rows
        another sender is taking are skipped (FOR UPDATE SKIP LOCKED), not waited for."""
        table = _log
        chosen = (select(table.c.id).where(
            table.c.campaign_id == campaign_id, table.c.state == S.PLANNED.value, table.c.id > after,
            table.c.run_id == plan_run_id, table.c.claimed_by.is_(None), table.c.contact_id.is_not(None))
            .order_by(table.c.id).limit(size))
        if self.dialect == "postgresql":
            chosen = chosen.with_for_update(skip_locked=True)
        statement = (update(table).where(table.c.id.in_(chosen.scalar_subquery()))
                     .values(claimed_by=sender).returning(table.c.id, table.c.contact_id))

        def take() -> list[tuple[int, int]]:
            with self.engine.begin() as conn:
                return sorted((row.id, row.contact_id) for row in conn.execute(statement))

        return self.reconnect.run(take)

    def unreserved(self, campaign_id: str, plan_run_id: int) -> int:
        """Planned rows of the plan of `plan_run_id` that no sender took yet."""
        table = _log
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).where(
                table.c.campaign_id == campaign_id, table.c.state == S.PLANNED.value,
                table.c.run_id == plan_run_id, table.c.claimed_by.is_(None))).scalar() or 0)

    def release(self, campaign_id: str, sender: int) -> int:
        """Give back the rows `sender` reserved and did not send (still planned): others may take them."""
        table = _log

        def release() -> int:
            with self.engine.begin() as conn:
                return conn.execute(update(table).where(
                    table.c.campaign_id == campaign_id, table.c.state == S.PLANNED.value,
                    table.c.claimed_by == sender).values(claimed_by=None)).rowcount

        return self.reconnect.run(release)

    def recover_senders(self, campaign_id: str, dead: dict[int, str],
                        delivered: Callable[[int], bool | None]) -> tuple[int, int, int]:
        """The rows of senders that died (run id -> "host:pid"): those they were delivering become
        `sent` when `delivered(log id)` proves it, else `uncertain`; those they had reserved are
        given back. Each change is conditional on the row still being the dead sender's, in that
        state. Returns (confirmed sent, uncertain, given back)."""
        if not dead:
            return 0, 0, 0
        return self.reconnect.run(lambda: self._recover_senders(campaign_id, dead, delivered))

    def _recover_senders(self, campaign_id: str, dead: dict[int, str],
                         delivered: Callable[[int], bool | None]) -> tuple[int, int, int]:
        table = _log
        senders = sorted(dead)
        now = utcnow()
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two senders recovering the same dead one at once would lock its rows in different
                # orders (a deadlock): one at a time per campaign; the second finds the work done.
                conn.execute(select(func.pg_advisory_xact_lock(advisory_lock_key(f"mailer/recover/{campaign_id}"))))
            in_flight = conn.execute(select(table.c.id, table.c.claimed_by, table.c.updated_at).where(
                table.c.campaign_id == campaign_id, table.c.state == S.SENDING.value,
                table.c.claimed_by.in_(senders)).order_by(table.c.id)).all()
            confirmed = [{"_id": row.id, "_by": row.claimed_by, "_now": now, "_sent_at": row.updated_at}
                         for row in in_flight if delivered(row.id)]
            proven = {c["_id"] for c in confirmed}
            lost = [{"_id": row.id, "_by": row.claimed_by, "_now": now,
                     "_detail": f"the sender {dead[row.claimed_by]} stopped during delivery"[:500]}
                    for row in in_flight if row.id not in proven]
            sent = execute_many(conn, _CONFIRM_SENDING, confirmed)
            uncertain = execute_many(conn, _UNCERTAIN_SENDING, lost)
            given_back = conn.execute(update(table).where(
                table.c.campaign_id == campaign_id, table.c.state == S.PLANNED.value,
                table.c.claimed_by.in_(senders)).values(claimed_by=None)).rowcount
        return sent, uncertain, given_back

    def by_sender(self, campaign_id: str) -> dict[int | None, dict[str, int]]:
        """Rows per sender (run id; None: taken by none) and state."""
        table = _log
        found: dict[int | None, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for sender, state, count in conn.execute(
                    select(table.c.claimed_by, table.c.state, func.count()).where(
                        table.c.campaign_id == campaign_id, table.c.state != S.BLOCKED.value)
                    .group_by(table.c.claimed_by, table.c.state)):
                found.setdefault(sender, {})[state] = count
        return found

    def update(self, changes: Sequence[dict[str, Any]]) -> None:
        """Apply per-row changes (each dict has `id`) in one transaction."""
        if not changes:
            return
        now = utcnow()

        def write() -> None:
            with self.engine.begin() as conn:
                update_by_id(conn, _log, [{"updated_at": now, **change} for change in changes])

        self.reconnect.run(write)

    def defer_planned(self, campaign_id: str, run_id: int | None, up_to_id: int | None, code: int | None,
                      text: str, detail: str, claimed_by: int | None = None) -> int:
        """A run that stopped trying (the relay kept throttling): its rows still `planned`, up to
        log id `up_to_id` (or those reserved by sender `claimed_by`), become `deferred` with the
        relay's answer (the next run retries them). How many."""
        check_move(S.PLANNED, S.DEFERRED)
        table = _log
        statement = update(table).where(table.c.campaign_id == campaign_id, table.c.state == S.PLANNED.value)
        if up_to_id is not None:
            statement = statement.where(table.c.id <= up_to_id)
        if claimed_by is not None:
            statement = statement.where(table.c.claimed_by == claimed_by)
        if run_id is not None:
            statement = statement.where(table.c.run_id == run_id)
        statement = statement.values(state=S.DEFERRED.value, smtp_code=code, smtp_text=text[:500],
                                     detail=detail[:500], updated_at=utcnow())

        def write() -> int:
            with self.engine.begin() as conn:
                return conn.execute(statement).rowcount

        return self.reconnect.run(write)

    def status_counts(self, campaign_id: str) -> tuple[dict[str, int], dict[str, int]]:
        """({state: n}, {rule: n for blocked rows})."""
        table = _log
        with self.engine.connect() as conn:
            states: dict[str, int] = dict(conn.execute(select(table.c.state, func.count()).where(
                table.c.campaign_id == campaign_id).group_by(table.c.state)).all())
            rules: dict[str, int] = dict(conn.execute(select(table.c.rule, func.count()).where(
                table.c.campaign_id == campaign_id, table.c.state == S.BLOCKED.value).group_by(table.c.rule)).all())
        return states, rules

    def rows(self, campaign_id: str, states: Sequence[str] | None = None) -> list[SendLog]:
        table = _log
        query = select(table).where(table.c.campaign_id == campaign_id)
        if states:
            query = query.where(table.c.state.in_([str(s) for s in states]))
        with self.engine.connect() as conn:
            return [SendLog(**row) for row in conn.execute(query.order_by(table.c.id)).mappings()]

    def writer(self, sender: int | None = None) -> LogWriter:
        """A connection held for one run's claims and outcomes (see `LogWriter`); with `sender`,
        it claims only the rows that sender reserved."""
        return LogWriter(self.engine, self.place, self.reconnect, sender)


class Claimable(Protocol):
    """What a claim needs to know of a message about to be delivered."""

    log_id: int
    address_hash: str
    domain: str
    message_id: str
    subject: str
    attempts: int


def _state_is(*states: SendState) -> Any:
    return or_(*(_log.c.state == literal_column(f"'{s.value}'") for s in states))


# pending -> sending (the claim) and pending -> blocked (opted out while the campaign runs),
# each conditional on the row still being pending; the claim also on its being the sender's
# (reserved by it; no sender: reserved by none).
_CLAIM_PENDING = update(_log).where(_log.c.id == bindparam("_id"), _state_is(*PENDING_STATES),
                                    _log.c.claimed_by.is_not_distinct_from(bindparam("_me"))).values(
    state=literal_column(f"'{S.SENDING.value}'"), attempts=bindparam("_attempts"),
    message_id=bindparam("_message_id"), subject=bindparam("_subject"), updated_at=bindparam("_now"))
_BLOCK_PENDING = update(_log).where(_log.c.id == bindparam("_id"), _state_is(*PENDING_STATES)).values(
    state=literal_column(f"'{S.BLOCKED.value}'"), rule=literal_column("'suppressed'"), updated_at=bindparam("_now"),
    detail=literal_column("'opted out while the campaign was running'"))


# A dead sender's row in flight: sent (the transport proves it) or uncertain, if still its and in flight.
_CONFIRM_SENDING = update(_log).where(_log.c.id == bindparam("_id"), _state_is(S.SENDING),
                                      _log.c.claimed_by == bindparam("_by")).values(
    state=literal_column(f"'{S.SENT.value}'"), sent_at=bindparam("_sent_at"), updated_at=bindparam("_now"),
    detail=literal_column("'confirmed after its sender stopped: the message is in the outbox'"))
_UNCERTAIN_SENDING = update(_log).where(_log.c.id == bindparam("_id"), _state_is(S.SENDING),
                                        _log.c.claimed_by == bindparam("_by")).values(
    state=literal_column(f"'{S.UNCERTAIN.value}'"), detail=bindparam("_detail"), updated_at=bindparam("_now"))


@dataclass
class CommitAnswer:
    refused: dict[int, str]  # log id -> "suppressed" (opted out meanwhile) | "taken" (another process has it)
    claimed: set[int]        # log ids now in `sending`, ours


#: seconds between two checks that the SQLite file is still the one opened
CHECK_INTERVAL = 0.1


class LogWriter:
    """The delivery engine's writes, batched: claims, outcomes and hard bounces of many
    messages in one transaction (group commit), on one connection held for the run
    (checking one out of the pool at every commit showed in profiles).

    After a commit (at most every CHECK_INTERVAL, and once at the end: `verify`), the SQLite
    file at the database's path must still be the one opened (`place`): else nothing this
    commit claimed goes out, the run's database is copied from the connection still open on
    the lost file, and DatabaseGone stops the run. A commit that loses its PostgreSQL
    connection is made again on a new one (`reconnect`)."""

    def __init__(self, engine: Engine, place: DatabaseFile | None = None, reconnect: Reconnect = NEVER,
                 sender: int | None = None) -> None:
        self.engine = engine
        self.place = place
        self.reconnect = reconnect
        self.sender = sender
        self._conn: Connection | None = None
        #: log ids claimed (so handed to the transport) since the file was last found in place
        self._unverified: set[int] = set()
        self._next_check = 0.0

    def commit(self, claims: Sequence[Claimable], outcomes: Sequence[dict[str, Any]],
               bounces: Sequence[tuple[str, str, str]], *, spooled: Collection[str] = ()) -> CommitAnswer:
        """One transaction: write `outcomes` (rows leaving `sending`: dicts with `id` and `state`),
        put `bounces` (hash, reason, campaign) on the suppression list, then claim `claims`
        (pending -> sending) unless their address or domain is suppressed by now, or their address
        hash is in `spooled` (opt-outs still waiting in the spool)."""
        for change in outcomes:
            if change["state"] not in _OUTCOMES:
                check_move(S.SENDING, change["state"])  # raises, naming the move
        answer = self.reconnect.run(lambda: self._commit(claims, outcomes, bounces, spooled), lost=self._drop)
        if self.place is not None:
            self._unverified.update(answer.claimed)
            # At most every CHECK_INTERVAL: a commit claims a handful of messages, and two stat()
            # calls per commit showed in a send's profile. What goes out before the check finds
            # the file gone is still recorded, in the copy the check keeps.
            if time.monotonic() >= self._next_check:
                self._check_in_place(answer)
        return answer

    def verify(self) -> None:
        """The last check, once the run's final outcomes are committed: raises DatabaseGone."""
        if self.place is not None and not self.place.lost:
            self._check_in_place(CommitAnswer({}, set()))

    def _check_in_place(self, answer: CommitAnswer) -> None:
        if self.place is None:
            return
        self.place.watch_wal()  # exists now: this connection keeps it
        change = self.place.change()
        if not change:
            self._unverified.clear()
            self._next_check = time.monotonic() + CHECK_INTERVAL
            return
        self.place.lost = change
        conn = self._connection()
        if answer.claimed:  # nothing of this commit goes out: back to planned, in the copy kept below
            now = utcnow()
            with conn.begin():
                update_by_id(conn, _log, [{"id": i, "state": S.PLANNED.value, "updated_at": now,
                                           "detail": "not sent: the database file was " + change}
                                          for i in answer.claimed])
        rescued = self.place.rescue(conn.connection.dbapi_connection)
        raise _gone(self.place.path, change, len(self._unverified - answer.claimed), rescued)

    def _drop(self) -> None:
        """The held connection is dead (the server restarted): the next try takes a new one."""
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except Exception:  # noqa: BLE001, S110 - it is being thrown away
                pass
            self._conn = None

    def _commit(self, claims: Sequence[Claimable], outcomes: Sequence[dict[str, Any]],
                bounces: Sequence[tuple[str, str, str]], spooled: Collection[str] = ()) -> CommitAnswer:
        log, sup = _log, SUPPRESSIONS
        now = utcnow()
        blocked: set[int] = set()
        answer = CommitAnswer({}, set())
        conn = self._connection()
        with conn.begin():
            update_by_id(conn, log, [{"updated_at": now, **change} for change in outcomes])
            if bounces:
                conn.execute(insert_ignore(conn.dialect.name, sup), [
                    {"scope": "address", "value": h, "origin": "bounce", "reason": reason,
                     "campaign_id": campaign, "created_at": now} for h, reason, campaign in bounces])
            if not claims:
                return answer
            hashes = list({m.address_hash for m in claims})
            domains = list({d for m in claims for d in domain_and_parents(m.domain)})
            found = conn.exec_driver_sql(suppressed_among_sql(conn.dialect.paramstyle, len(hashes), len(domains)),
                                         tuple(hashes + domains)).all()
            stopped_hashes = {v for s, v in found if s == "address"} | set(spooled)
            stopped_domains = {v for s, v in found if s == "domain"}
            stopped, going = [], []
            for message in claims:
                if message.address_hash in stopped_hashes or (
                        stopped_domains and not stopped_domains.isdisjoint(domain_and_parents(message.domain))):
                    blocked.add(message.log_id)
                    stopped.append({"_id": message.log_id, "_now": now})
                else:
                    going.append({"_id": message.log_id, "_now": now, "_attempts": message.attempts + 1,
                                  "_message_id": message.message_id, "_subject": message.subject,
                                  "_me": self.sender})
            if stopped:
                execute_many(conn, _BLOCK_PENDING, stopped)
            if going:
                # Conditional on the row still being pending: when another process sends the
                # same campaign, only one of them gets each row (its Message-ID is on it). Made
                # again after a commit whose answer was lost, it finds its own Message-ID there.
                claimed = execute_many(conn, _CLAIM_PENDING, going)
                if claimed == len(going):
                    mine = {(g["_id"], g["_message_id"]) for g in going}
                else:
                    ids = [g["_id"] for g in going]
                    mine = {(row_id, message_id) for row_id, message_id in conn.execute(
                        select(log.c.id, log.c.message_id).where(log.c.id.in_(ids)))}
                for message in claims:
                    if message.log_id in blocked:
                        continue
                    if (message.log_id, message.message_id) in mine:
                        answer.claimed.add(message.log_id)
                    else:
                        answer.refused[message.log_id] = "taken"
        answer.refused.update({i: "suppressed" for i in blocked})
        return answer

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self.engine.connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _gone(path: Path, change: str, unrecorded: int, rescued: Path | None) -> DatabaseGone:
    """The error that stops a run whose database file was removed or replaced."""
    if rescued is not None:
        return DatabaseGone(
            f"the database file {path} was {change} while sending, so nothing more was sent; this run's send "
            f"log as it stood (every message handed out so far recorded) was saved to {rescued}: check it, put it "
            f"back in place (mv {rescued} {path}) and rerun the same command to resume",
            unrecorded=0, rescued=str(rescued))
    return DatabaseGone(
        f"the database file {path} was {change} while sending, so nothing more was sent; {unrecorded} messages "
        "handed to the transport since it was last seen in place are not recorded there: restore the "
        f"database from a backup (whoever this run mailed since then may be mailed again), then rerun the same "
        f"command", unrecorded=unrecorded)


_DECISION_STATEMENTS: dict[tuple[str, tuple[str, ...]], Any] = {}


def _decisions_statement(dialect: str, replaceable: tuple[str, ...]) -> Any:
    """INSERT … ON CONFLICT (campaign, address) DO UPDATE, only over rows in `replaceable` states."""
    statement = _DECISION_STATEMENTS.get((dialect, replaceable))
    if statement is not None:
        return statement
    table = _log
    statement = dialect_insert(dialect, table).values({c.name: bindparam(c.name) for c in table.c if c.name != "id"})
    statement = statement.on_conflict_do_update(
        index_elements=["campaign_id", "address_key"],
        set_={"state": statement.excluded.state, "rule": statement.excluded.rule,
              "run_id": statement.excluded.run_id,
              "detail": statement.excluded.detail, "contact_id": statement.excluded.contact_id,
              "updated_at": statement.excluded.updated_at,
              # decided again: no sender has it (one that reserved it earlier is gone, as planning waits
              # for the live ones to finish)
              "claimed_by": statement.excluded.claimed_by},
        # OR of equalities, not IN: an expanding IN cannot be used with executemany.
        where=or_(*(table.c.state == state for state in replaceable)),
    )
    _DECISION_STATEMENTS[(dialect, replaceable)] = statement
    return statement
