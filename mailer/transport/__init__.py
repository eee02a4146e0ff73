"""Transports deliver finished messages: `maildir` (embedded default) and `smtp`.

To add one: a module here with a class that implements `Transport` (see `base.py`), and
one line in `TRANSPORTS`. Callers never compare `[transport] type`: they ask the class
(`leaves_host`, `needs_processor`) or the instance (`preflight`, `ready`, `notes`, ...).
"""
from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module

from ..config import Config
from .base import Delivery, Envelope, Transport

#: `[transport] type` -> "module:Class" (imported when used)
TRANSPORTS: dict[str, str] = {
    "maildir": "mailer.transport.maildir:MaildirTransport",
    "smtp": "mailer.transport.smtp:SmtpTransport",
}

def transport_class(config: Config) -> type[Transport]:
    """The class of the configured transport (its class-level facts need no connection)."""
    module, _, name = TRANSPORTS[config.transport.type].partition(":")
    cls: type[Transport] = getattr(import_module(module), name)
    return cls


def open_transport(config: Config, environ: Mapping[str, str] | None = None) -> Transport:
    """The configured transport, not yet connected (call `await transport.open()`)."""
    return transport_class(config).from_config(config, environ)


__all__ = ["TRANSPORTS", "Delivery", "Envelope", "Transport", "open_transport", "transport_class"]
