"""Transports deliver finished messages: `maildir` (embedded default) and `smtp`."""
from __future__ import annotations

from ..config import Config
from .base import Delivery, Envelope, Transport


def open_transport(config: Config) -> Transport:
    if config.transport.type == "maildir":
        from .maildir import MaildirTransport
        return MaildirTransport(config.outbox)
    from .smtp import SmtpTransport  # noqa: F401  (issue: real SMTP delivery)
    return SmtpTransport(config)


__all__ = ["Delivery", "Envelope", "Transport", "open_transport"]
