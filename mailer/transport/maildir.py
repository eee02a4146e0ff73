"""The embedded default transport: one .eml file per message in a maildir.

A message is written to tmp/ and renamed into new/, so a reader never sees half
a file. The file name carries the send-log key, which lets a crashed run find
out that a message in `sending` did in fact leave.
"""
from __future__ import annotations

import glob
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path

from .. import owner_only
from ..config import Config
from ..errors import TransportError
from .base import Delivery, Envelope


class MaildirTransport:
    name = "maildir"
    leaves_host = False
    needs_processor = False
    concurrency = 1
    # Claims may be committed ahead in batches: after a crash, `delivered` tells from the
    # file name whether a claimed message was written, so nothing is left uncertain.
    claim_batch = 200
    wire_format = None  # a file holds the message as it is

    @classmethod
    def from_config(cls, config: Config, environ: Mapping[str, str] | None = None) -> MaildirTransport:
        return cls(config.outbox)

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.target = f"{self.path}/"
        self._host = socket.gethostname().replace("/", "_").replace(":", "_")

    async def open(self) -> None:
        try:
            for sub in ("tmp", "new", "cur"):  # owner-only: the messages hold personal data
                owner_only.make_folder(self.path / sub)
        except OSError as exc:
            raise TransportError(f"cannot create the outbox {self.path}: {exc.strerror}",
                                 hint="check [transport] path in config.toml") from None
        probe = self.path / "tmp" / f".probe-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise TransportError(f"the outbox {self.path} is not writable: {exc.strerror}") from None

    def _name(self, key: str) -> str:
        return f"{key}.{self._host}.eml"

    @staticmethod
    def files_for(path: Path, key: str) -> list[Path]:
        """The delivered messages of a send-log key (written from any host) in the outbox at `path`."""
        pattern = f"{glob.escape(key)}.*.eml*"  # a mail client reading cur/ adds ":2,S" and the like
        return [found for sub in ("new", "cur") for found in (Path(path) / sub).glob(pattern)]

    async def deliver(self, envelope: Envelope, permit: Callable[[], Awaitable[bool]] | None = None) -> Delivery:
        if permit is not None and not await permit():
            return Delivery("withheld")
        name = self._name(envelope.key)
        tmp = self.path / "tmp" / name
        try:
            owner_only.write_file(tmp, envelope.data)
            os.replace(tmp, self.path / "new" / name)
        except OSError as exc:
            return Delivery("deferred", text=f"cannot write {tmp}: {exc.strerror}")
        return Delivery("sent", text=f"written to {self.path / 'new' / name}")

    async def ready(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def preflight(self) -> str | None:
        await self.open()
        return f"Outbox {self.target}: writable."

    def notes(self) -> list[str]:
        return []

    def remove_copies(self, keys: Iterable[str]) -> int:
        """The outbox holds a copy of every message written to it."""
        removed = 0
        for found in (f for key in keys for f in self.files_for(self.path, key)):
            found.unlink(missing_ok=True)
            removed += 1
        return removed

    def delivered(self, key: str) -> bool | None:
        return bool(self.files_for(self.path, key))
