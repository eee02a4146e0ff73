"""On SQLite one process at a time sends a campaign: a lease in the database, renewed while sending.
(On PostgreSQL several may: see `mailer.senders`.)"""
from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from .errors import TransportError
from .store import Store
from .store.reconnect import lost_connection

LEASE_SECONDS = 120.0


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def dead_here(owner: str) -> bool:
    """True when `owner` is a process of this host that no longer runs (it crashed)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def being_sent(store: Store, campaign_id: str) -> bool:
    """True while a live process holds the campaign's lease: held, not expired, and not a process
    of this host that no longer runs. Reads only (`status` uses it)."""
    holder, until = store.campaigns.lease(campaign_id)
    if not holder or until is None or until < datetime.now(UTC):
        return False
    return not dead_here(holder)


def take_campaign(store: Store, campaign_id: str, owner: str | None = None) -> str:
    """Take the campaign's lease or raise TransportError naming who holds it."""
    owner = owner or this_process()
    taken, holder, until = store.campaigns.take_lease(campaign_id, owner, LEASE_SECONDS, dead_here)
    if not taken:
        host, _, pid = holder.rpartition(":")
        who = f"host {host}, pid {pid}" if host and pid.isdigit() else holder or "unknown"
        run = store.campaigns.last_run(campaign_id)
        if run is not None and run.outcome == "running":
            who += f", sending since {run.started_at:%Y-%m-%d %H:%M:%S} UTC"
        when = f"; its lease runs until {until:%H:%M:%S} UTC" if until else ""
        raise TransportError(f"campaign {campaign_id} is being sent by another process ({who}{when}); on SQLite "
                             "one process at a time sends a campaign",
                             hint="wait for it to finish (if it died on another machine, rerun once its lease has "
                                  "expired); to send with several processes, share a PostgreSQL database "
                                  "([database] url)")
    return owner


@asynccontextmanager
async def keep_campaign(store: Store, campaign_id: str, owner: str) -> AsyncIterator[None]:
    """Renew the lease while the body runs; release it at the end."""
    async def renew() -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 4)
            store.campaigns.take_lease(campaign_id, owner, LEASE_SECONDS, dead_here)

    task = asyncio.create_task(renew())
    failure: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        failure = exc
        raise
    finally:
        task.cancel()
        # Not into a database file removed or replaced (it would make or touch another one), nor
        # after the server stayed away (waiting for it again would only delay that error).
        if not store.lost and not (failure is not None and lost_connection(failure)):
            store.campaigns.release_lease(campaign_id, owner)
