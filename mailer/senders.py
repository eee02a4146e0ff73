"""Several processes sending one campaign over one PostgreSQL database, on one machine or many.

Each `mailer send` is a run of the campaign and a sender: registered as "host:pid", it renews a
heartbeat every few seconds while it lives. The first sender plans (under the campaign's planning
lock, so that two starting together do not both decide); the others wait for the lock, find a
live sender's complete plan and join it. Each sender then reserves small batches of the plan's
rows (`SendLog.reserve`: FOR UPDATE SKIP LOCKED), claims each row as its message goes, and gives
back what it did not send when it ends.

A sender is dead when its heartbeat is older than SENDER_EXPIRY_SECONDS, or at once when it was
a process of this machine that no longer runs. Only a dead sender's rows are recovered: those it
was delivering become uncertain (sent when the transport proves it), those it had reserved go back
to the others. A live sender's rows in flight are never touched.

On SQLite the lease (`mailer.lease`) still admits one sender per campaign: it is registered the
same way (so `status` shows its share and a crash is recovered alike), but the lease, not a
heartbeat, says it is alive.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from .lease import dead_here, this_process
from .store import Run, Store, utcnow
from .transport import Transport

#: how often a live sender says so
HEARTBEAT_SECONDS = 5.0
#: a sender silent this long is dead (longer than a PostgreSQL restart a sender rides out)
SENDER_EXPIRY_SECONDS = 60.0


#: the runs this process is sending now (a run of this process not among them ended, even if its end
#: could not be recorded: the database went away)
_SENDING_HERE: set[int] = set()


def is_alive(run: Run, now: datetime | None = None) -> bool:
    """True for a run still sending: recorded as running, its heartbeat recent, and not a process
    of this machine that no longer runs (nor an earlier run of this very process)."""
    if run.outcome != "running" or not run.sender or run.heartbeat_at is None:
        return False
    if run.sender == this_process():
        return run.id in _SENDING_HERE
    beat = run.heartbeat_at if run.heartbeat_at.tzinfo else run.heartbeat_at.replace(tzinfo=UTC)
    if (now or utcnow()) - beat > timedelta(seconds=SENDER_EXPIRY_SECONDS):
        return False
    return not dead_here(run.sender)


@dataclass
class Recovered:
    """What a sender did with the rows of senders that died."""

    senders: list[str] = field(default_factory=list)  # "host:pid" of each
    confirmed: int = 0    # found delivered (the transport proves it)
    uncertain: int = 0    # may have left: not sent again unless asked
    given_back: int = 0   # reserved, not sent: sent by the others


@dataclass
class Sender:
    """This process as one of a campaign's senders."""

    store: Store
    campaign_id: str
    run_id: int
    name: str
    #: the run whose plan it sends (its own when it planned); None until the plan is complete
    plan_run_id: int | None = None
    #: the sender whose plan it joined
    joined: Run | None = None
    recovered: Recovered = field(default_factory=Recovered)

    def join(self, planner: Run) -> None:
        """Send `planner`'s plan rather than planning again."""
        assert planner.plan_run_id is not None
        self.plan_run_id, self.joined = planner.plan_run_id, planner
        self.store.campaigns.send_plan(self.run_id, planner.plan_run_id)

    def planned(self) -> None:
        """This sender's own plan is complete: others may join it."""
        self.plan_run_id = self.run_id
        self.store.campaigns.send_plan(self.run_id, self.run_id)

    def reserved_chunks(self, size: int, limit: int | None,
                        transport: Transport | None = None) -> Iterator[list[tuple[int, int]]]:
        """(log id, contact id) of rows reserved for this sender, `size` at a time, at most `limit`
        in all, until no row of the plan is left to take. When none is left, the rows of senders
        that died meanwhile are recovered first (their reservations are then taken too)."""
        assert self.plan_run_id is not None
        after, left = 0, limit
        while left is None or left > 0:
            rows = self.store.sendlog.reserve(self.campaign_id, self.plan_run_id, self.run_id,
                                              size if left is None else min(size, left), after)
            if not rows:
                if after:  # rows given back behind us (by senders that ended): from the start again
                    after = 0
                    continue
                if self.recover_dead(transport).given_back:
                    continue
                return
            yield rows
            after = rows[-1][0]
            if left is not None:
                left -= len(rows)

    def recover_dead(self, transport: Transport | None = None) -> Recovered:
        """Recover the rows of the campaign's senders that died (see the module's docstring)."""
        now = utcnow()
        dead = {run.id: run.sender or f"run {run.id}" for run in self.store.campaigns.running(self.campaign_id)
                if run.id != self.run_id and run.id is not None and not is_alive(run, now)}
        found = Recovered()
        if not dead:
            return found
        keys = f"{self.campaign_id}."
        found.confirmed, found.uncertain, found.given_back = self.store.sendlog.recover_senders(
            self.campaign_id, dead, lambda log_id: transport is not None and transport.delivered(f"{keys}{log_id}"))
        if found.confirmed or found.uncertain or found.given_back:
            found.senders = sorted(set(dead.values()))
            self.recovered.senders = sorted(set(self.recovered.senders) | set(found.senders))
            self.recovered.confirmed += found.confirmed
            self.recovered.uncertain += found.uncertain
            self.recovered.given_back += found.given_back
        return found

    def release(self) -> None:
        """Give back the rows reserved and not sent (stopped, limited, or found erased)."""
        self.store.sendlog.release(self.campaign_id, self.run_id)

    def finished(self) -> None:
        """This sender sends no more (whether or not its end could be recorded)."""
        _SENDING_HERE.discard(self.run_id)


def register(store: Store, campaign_id: str, fingerprint: str, name: str | None = None) -> Sender:
    """A new run of the campaign, as a sender named `name` ("host:pid", this process's by default)
    whose heartbeat starts now. `Sender.finished` says when it stops sending."""
    name = name or this_process()
    sender = Sender(store, campaign_id, store.campaigns.start_run(campaign_id, fingerprint, sender=name), name)
    if name == this_process():
        _SENDING_HERE.add(sender.run_id)
    return sender


def live_plan(store: Store, campaign_id: str, me: int) -> Run | None:
    """The run that made the plan live senders of the campaign are sending, or None: then nobody
    sends it now, and the caller plans. Call it holding the planning lock: a sender holding it
    that has no complete plan is still planning (or died planning)."""
    now = utcnow()
    plans = {run.plan_run_id for run in store.campaigns.running(campaign_id)
             if run.id != me and run.plan_run_id is not None and is_alive(run, now)}
    if not plans:
        return None
    [planner] = store.campaigns.runs([max(plans)])
    return planner


class Heartbeat:
    """Renews a sender's heartbeat from a thread of its own, from registration to the end: planning
    a large list and a busy event loop go on meanwhile. A beat the database does not take is
    simply tried again at the next one."""

    def __init__(self, store: Store, run_id: int, every: float = HEARTBEAT_SECONDS) -> None:
        self.store, self.run_id, self.every = store, run_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="mailer-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            if self.store.lost:  # the SQLite file was removed or replaced: write nothing anywhere
                return
            try:
                self.store.campaigns.beat(self.run_id)
            except SQLAlchemyError:
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
