"""The states of a send-log row and the moves allowed between them: the one place they are spelt.

One row per (campaign, address). The gate writes `planned` or `blocked`; the delivery
engine claims a row (`sending`, committed before anything leaves) and writes the outcome.
A row a dead process left in `sending` becomes `uncertain` (or `sent`, when the transport
can prove the message left) and is not sent again unless the operator asks.
"""
from __future__ import annotations

from enum import StrEnum


class SendState(StrEnum):
    BLOCKED = "blocked"      # the gate (or an opt-out during the run) stopped it; `rule` says why
    PLANNED = "planned"      # allowed, waiting to be delivered
    SENDING = "sending"      # claimed: handed to the transport, outcome not yet known
    SENT = "sent"            # the server (or the outbox) accepted it
    FAILED = "failed"        # refused for good (5xx)
    DEFERRED = "deferred"    # refused for now (4xx, connection trouble): the next run retries
    UNCERTAIN = "uncertain"  # the process died during delivery: it may have left


S = SendState

#: state -> the states it may move to. Every write to the send log follows this table
#: (the SQL of `mailer.store.sendlog` is built from it).
TRANSITIONS: dict[SendState, frozenset[SendState]] = {
    S.BLOCKED: frozenset({S.BLOCKED, S.PLANNED}),             # a later run decides again
    # planned -> deferred: the run stopped trying before offering it (the relay kept throttling).
    S.PLANNED: frozenset({S.BLOCKED, S.PLANNED, S.SENDING, S.DEFERRED}),
    S.DEFERRED: frozenset({S.BLOCKED, S.PLANNED, S.SENDING}),
    S.SENDING: frozenset({S.SENDING, S.SENT, S.FAILED, S.DEFERRED, S.UNCERTAIN, S.PLANNED}),
    # Only `send --retry-uncertain` decides again over an uncertain row.
    S.UNCERTAIN: frozenset({S.BLOCKED, S.PLANNED}),
    S.SENT: frozenset(),
    S.FAILED: frozenset(),
}

#: A delivery of the campaign to this address happened or may have happened: `already-sent`.
DELIVERED_STATES: tuple[SendState, ...] = (S.SENT, S.SENDING, S.UNCERTAIN, S.FAILED)
#: Waiting to be delivered.
PENDING_STATES: tuple[SendState, ...] = (S.PLANNED, S.DEFERRED)


def may_become(target: SendState) -> tuple[SendState, ...]:
    """The states from which a row may move to `target`."""
    return tuple(state for state, targets in TRANSITIONS.items() if target in targets)


def check_move(source: SendState | str, target: SendState | str) -> None:
    """Raise ValueError for a move the table does not allow (a bug, not bad input)."""
    if SendState(target) not in TRANSITIONS[SendState(source)]:
        raise ValueError(f"send-log row cannot go from {source} to {target}")
