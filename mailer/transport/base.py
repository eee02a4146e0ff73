"""The interface every transport implements."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from ..config import Config


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
    "withheld" (the permit was refused, or the transport stops the run: nothing was delivered).

    stop_run: why no further message can go in this run (one sentence); the engine stops
    after the messages in flight, and the rest waits for the next run.

    throttled: the answer says the relay limits how fast this sender sends ("454 Throttling
    failure", "421 4.7.0 rate exceeded": `mailer.throttle.says_throttled`); the engine slows the
    whole run and sends the message again. A transport that can be throttled may also have
    `limit_connections(n)`, which the engine calls to keep to n connections.
    """

    state: str
    code: int | None = None
    text: str = ""
    hard_bounce: bool = False
    stop_run: str = ""
    throttled: bool = False


class Transport(Protocol):
    """What a caller may ask of a transport. Nothing outside `mailer.transport` looks at
    `[transport] type`: it asks these questions instead.

    Adding a transport is one module with a class that has these members, plus one line
    in `mailer.transport.TRANSPORTS`.
    """

    #: the name in `[transport] type`
    name: ClassVar[str]
    #: messages leave this machine: the unsubscribe link must be https on a public name,
    #: rate limits apply, the relay's reputation is at stake
    leaves_host: ClassVar[bool]
    #: a third party handles the messages: a `[processor]` with a signed agreement (GDPR art. 28)
    #: and, outside the EEA, a transfer mechanism are required
    needs_processor: ClassVar[bool]
    #: how many messages may be in flight at once
    concurrency: int
    #: how many messages one worker may claim in one commit (1 unless `delivered` can
    #: tell after a crash whether a claimed message left)
    claim_batch: int
    #: a function (picklable: render workers run it) turning message bytes into what this
    #: transport sends, so that this work happens off the sending process; or None
    wire_format: Callable[[bytes], bytes] | None
    #: where the messages go, for people: "outbox/" or "smtp.example.net:587"
    target: str

    @classmethod
    def from_config(cls, config: Config, environ: Mapping[str, str] | None = None) -> Transport:
        """The transport `config` describes, not yet connected. Raises InputError for bad settings."""

    async def open(self) -> None:
        """Connect (or prepare); raise TransportError with host/path and a hint."""

    async def ready(self) -> None:
        """Awaited before a message is claimed when claim_batch is 1: wait until the transport
        can take one more message, and keep that room for the next deliver() (SMTP: a free
        connection, or room to open one). Return at once when there is nothing to wait for."""

    async def deliver(self, envelope: Envelope, permit: Callable[[], Awaitable[bool]] | None = None) -> Delivery:
        """Deliver one message. Never raises for a per-message failure.

        With `permit`, await it before anything can be delivered (before DATA); when it
        answers False, deliver nothing and return Delivery("withheld").
        """

    async def close(self) -> None:
        """Release connections."""

    def delivered(self, key: str) -> bool | None:
        """After a crash: did this envelope certainly leave? None when unknowable."""

    async def preflight(self) -> str | None:
        """Check, as a send would, that messages can go (connect, log in); one line saying what
        was found, or None when there is nothing to check. Raises TransportError."""

    def notes(self) -> list[str]:
        """After a run: what the user may want to change (one sentence each)."""

    def remove_copies(self, keys: Iterable[str]) -> int:
        """Erasure: delete the copies this transport kept of the messages with these send-log
        keys; how many were removed (0 for a transport that keeps none)."""
