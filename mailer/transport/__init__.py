"""Transports deliver finished messages: `maildir` (embedded default) and `smtp`."""
from __future__ import annotations

from ..config import Config
from .base import Delivery, Envelope, Transport


def open_transport(config: Config, environ: dict[str, str] | None = None) -> Transport:
    """The configured transport, not yet connected (call `await transport.open()`)."""
    if config.transport.type == "maildir":
        from .maildir import MaildirTransport
        return MaildirTransport(config.outbox)
    from .smtp import SmtpTransport
    return SmtpTransport(config, environ)


__all__ = ["Delivery", "Envelope", "Transport", "open_transport"]
