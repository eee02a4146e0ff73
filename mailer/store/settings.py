"""Settings kept in the database: the unsubscribe secret (when the environment has none), and
the folders `preview` wrote to (so that `forget` finds the copies of a person's messages)."""
from __future__ import annotations

import hashlib
import hmac
import secrets as _secrets

from sqlalchemy import select
from sqlalchemy.engine import Engine

from ..errors import StoreError
from .sql import insert_ignore
from .tables import SETTINGS

#: settings key of a folder `preview` wrote to: the prefix, then the folder's absolute path
PREVIEW_FOLDER = "preview_folder:"


class Settings:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    def get(self, key: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(SETTINGS.c.value).where(SETTINGS.c.key == key)).scalar()

    def put_if_absent(self, key: str, value: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert_ignore(self.dialect, SETTINGS), [{"key": key, "value": value}])

    def record_preview_folder(self, folder: str, host: str) -> None:
        """Remember that `preview` wrote personal data to `folder` on `host` (once per folder: a folder
        already recorded costs no write, so previewing again works while a send holds the write lock)."""
        if self.get(PREVIEW_FOLDER + folder) is None:
            self.put_if_absent(PREVIEW_FOLDER + folder, host)

    def preview_folders(self) -> list[tuple[str, str]]:
        """(folder, host) for every folder `preview` wrote to."""
        query = select(SETTINGS.c.key, SETTINGS.c.value).where(SETTINGS.c.key.startswith(PREVIEW_FOLDER, autoescape=True))
        with self.engine.connect() as conn:
            return sorted((key[len(PREVIEW_FOLDER):], value) for key, value in conn.execute(query))

    def secret(self, from_environment: str | None, variable: str = "MAILER_SECRET") -> tuple[bytes, bool]:
        """The HMAC secret: the environment's, else one generated once and kept here.

        Returns (secret, created_now) so the caller can say that it made one. The
        suppression list holds hashes keyed by this secret: with another secret,
        every recorded opt-out would silently stop matching. So the database keeps
        a fingerprint of the secret it was first used with and refuses another.
        """
        created = False
        if from_environment:
            secret = from_environment.encode("utf-8")
        else:
            existing = self.get("secret")
            if existing is None:
                generated = _secrets.token_urlsafe(32)
                self.put_if_absent("secret", generated)
                existing = self.get("secret") or generated
                created = existing == generated
            secret = existing.encode("ascii")
        fingerprint = hmac.new(secret, b"mailer/secret-fingerprint/v1", hashlib.sha256).hexdigest()[:32]
        kept = self.get("secret_fingerprint")
        if kept is None:  # written once: a read-only command must not wait for another writer's lock
            self.put_if_absent("secret_fingerprint", fingerprint)
            kept = self.get("secret_fingerprint")
        if kept != fingerprint:
            raise StoreError(
                f"the unsubscribe secret (${variable}, or the one kept in the database) is not the one this "
                "database was first used with: recorded opt-outs would no longer match",
                hint=f"set ${variable} back to its previous value (or unset it if the database kept its own); "
                     "to start over with a new secret, use a new database")
        return secret, created
