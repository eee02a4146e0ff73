"""Going on through a PostgreSQL restart: a unit of work that met a lost connection is run
again on a new one, with backoff, for a while (`[database] reconnect_seconds`).

Only units safe to run twice go through here: reads, and writes whose second run changes
nothing the first one did (an outcome written by row id, a conditional claim that
recognises its own Message-ID, an insert that ignores a conflict). A claim whose commit
was unknown is therefore either found ours or made now, and only then handed to the
transport: a message is never sent twice because a commit's answer was lost.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

from .failures import LOST_WORDS, SHUTTING_DOWN_WORDS, UNREACHABLE_WORDS

T = TypeVar("T")

# admin shutdown, crash shutdown, cannot connect now (starting up or shutting down)
_SERVER_GOING = {"57P01", "57P02", "57P03"}


def lost_connection(exc: BaseException) -> bool:
    """A PostgreSQL error after which a new connection may work: the server went away or restarts."""
    if not isinstance(exc, DBAPIError):
        return False
    original = exc.orig
    if not type(original).__module__.startswith("psycopg"):
        return False
    if exc.connection_invalidated:
        return True
    state = getattr(original, "sqlstate", None) or ""
    if state in _SERVER_GOING or state.startswith("08"):
        return True
    if state:
        return False
    # No SQLSTATE (libpq failing to connect): retry a server away or restarting, not a wrong
    # password or a missing database.
    words = str(original).lower()
    return any(w in words for w in (*SHUTTING_DOWN_WORDS, *LOST_WORDS, *UNREACHABLE_WORDS))


@dataclass(frozen=True)
class Reconnect:
    """How long to keep retrying a unit of work while the server is away (0: never)."""

    patience: float = 30.0
    first_delay: float = 0.1
    longest_delay: float = 2.0

    def run(self, unit: Callable[[], T], *, lost: Callable[[], None] | None = None) -> T:
        """`unit()`, again after each lost connection until `patience` seconds have passed since
        the first (then its error is raised). `lost` is called before each retry, to drop a
        connection the caller holds."""
        deadline: float | None = None
        delay = self.first_delay
        while True:
            try:
                return unit()
            except DBAPIError as exc:
                if self.patience <= 0 or not lost_connection(exc):
                    raise
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self.patience
                if now >= deadline:
                    raise
                if lost is not None:
                    lost()
                time.sleep(min(delay, deadline - now))
                delay = min(delay * 2, self.longest_delay)


NEVER = Reconnect(0)
