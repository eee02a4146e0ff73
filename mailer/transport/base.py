"""The interface every transport implements."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message to deliver: SMTP envelope plus the finished bytes."""

    key: str              # stable id of the send-log row, e.g. "campaign.123"
    mail_from: str
    rcpt_to: str
    data: bytes
    #: data is already in the transport's wire form (Transport.wire_format applied)
    wire: bool = False


@dataclass(frozen=True, slots=True)
class Delivery:
    """What happened to one envelope.

    state: "sent", "failed" (permanent), "deferred" (temporary, retry later),
    "uncertain" (the connection died after DATA started: it may have left) or
    "withheld" (the permit was refused: nothing was delivered).
    """

    state: str
    code: int | None = None
    text: str = ""
    hard_bounce: bool = False


class Transport(Protocol):
    #: how many messages may be in flight at once
    concurrency: int
    #: how many messages one worker may claim in one commit (1 unless `delivered` can
    #: tell after a crash whether a claimed message left)
    claim_batch: int
    #: a function (picklable: render workers run it) turning message bytes into what this
    #: transport sends, so that this work happens off the sending process; or None
    wire_format: Callable[[bytes], bytes] | None

    async def open(self) -> None:
        """Connect (or prepare); raise TransportError with host/path and a hint."""

    # Optional: `async def ready(self) -> None`, awaited before a message is claimed when
    # claim_batch is 1: wait until the transport can take one more message, and keep that
    # room for the next deliver() (SMTP: a free connection, or room to open one).

    async def deliver(self, envelope: Envelope, permit: Callable[[], Awaitable[bool]] | None = None) -> Delivery:
        """Deliver one message. Never raises for a per-message failure.

        With `permit`, await it before anything can be delivered (before DATA); when it
        answers False, deliver nothing and return Delivery("withheld").
        """

    async def close(self) -> None:
        """Release connections."""

    def delivered(self, key: str) -> bool | None:
        """After a crash: did this envelope certainly leave? None when unknowable."""
