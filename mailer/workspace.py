"""A workspace: an organisation's config, its database and its keys, opened together.

    with mailer.open_workspace("config.toml") as ws:
        summary = mailer.send_campaign(ws, "campaigns/cloud-audit.toml")
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

from sqlalchemy.exc import SQLAlchemyError

from .addresses import lookup_hashes, mailbox_hash
from .config import Config, database_url_with_password, load_config
from .owner_only import too_open
from .spool import OptOutSpool, spool_path
from .store import Store, database_failure, redacted
from .tokens import Keys
from .transport import Transport, open_transport, transport_class


@dataclass
class Workspace:
    """What every operation works on. Open it with `open_workspace`; close it (or use `with`)."""

    config: Config
    store: Store
    keys: Keys
    #: True when no secret was in the environment and one was generated and kept in the database
    secret_generated: bool = False
    environ: Mapping[str, str] = field(default_factory=dict)
    #: things the user should hear once (a schema upgrade, a generated secret), for the caller to show
    notes: list[str] = field(default_factory=list)

    def hash_address(self, key: str) -> str:
        """The keyed hash under which an address is kept once its data is gone: its canonical
        mailbox's, so that an entry covers every spelling of the mailbox (mailer.addresses)."""
        return mailbox_hash(self.keys.address, key)

    def lookup_hashes(self, key: str) -> tuple[str, ...]:
        """Every hash an entry about `key` may be stored under (also entries made before 0.2)."""
        return lookup_hashes(self.keys.address, key)

    def unsubscribe_token(self, campaign_id: str, email: str, locale: str) -> str:
        """The signed token of the one-click link (`[unsubscribe] base_url` + "/u/" + token) that
        unsubscribes `email`, as it appears in that campaign's messages."""
        from .addresses import normalise
        from .tokens import sign
        return sign(self.keys, campaign_id, locale, self.hash_address(normalise(email).key))

    @property
    def spool(self) -> OptOutSpool:
        """Where `mailer serve` keeps the opt-outs the database could not take in time (mailer.spool)."""
        return OptOutSpool(spool_path(self.config.database_url, self.config.path))

    @property
    def transport_class(self) -> type[Transport]:
        return transport_class(self.config)

    def open_transport(self) -> Transport:
        """The configured transport, not connected yet."""
        return open_transport(self.config, self.environ)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def open_workspace(config_path: str | os.PathLike[str], environ: Mapping[str, str] | None = None, *,
                   create: bool = False) -> Workspace:
    """Load `config_path`, open its database and derive the keys.

    The database must exist (`DatabaseMissing` otherwise) unless `create`: only an explicit
    create makes one, so a mistyped or lost database never passes for a new campaign's.

    `environ` (default: `os.environ`) supplies the secrets the config names: the
    unsubscribe secret, the SMTP password, the DKIM key. Raises `ConfigError` for a bad
    config file and `StoreError` when the database cannot be used.
    """
    environ = dict(os.environ if environ is None else environ)
    config = load_config(Path(config_path))
    if config.database_password_env:  # render workers get the config: the url they open is complete
        config = replace(config, database_url=database_url_with_password(config, environ))
    store = Store.open(config.database_url, create=create, busy_timeout=config.database_busy_timeout,
                       reconnect_seconds=config.database_reconnect_seconds)
    variable = config.unsubscribe.secret_env
    try:
        secret, generated = store.settings.secret(environ.get(variable) or None, variable)
    except SQLAlchemyError as exc:
        store.close()
        raise database_failure(exc, config.database_url) from None
    except BaseException:
        store.close()
        raise
    notes = list(store.notes)
    if config.transport.type == "maildir":
        notes.extend(filter(None, [too_open(config.outbox)]))
    if generated:
        notes.append(f"${variable} is not set; created a random secret for unsubscribe tokens and kept it in the "
                     f"database. In production, set ${variable}.")
    return Workspace(config, store, Keys.derive(secret), generated, environ, notes)


def create_database(config_path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
                    ) -> tuple[str, bool, list[str]]:
    """Create the database `config_path` names, with its schema: (its url, password hidden; whether it
    was created now; notes). Nothing else is written: the unsubscribe secret is kept at first use,
    so the secret a later command brings in the environment is the one the database keeps."""
    environ = dict(os.environ if environ is None else environ)
    config = load_config(Path(config_path))
    url = database_url_with_password(config, environ) if config.database_password_env else config.database_url
    store = Store.open(url, create=True, busy_timeout=config.database_busy_timeout,
                       reconnect_seconds=config.database_reconnect_seconds)
    try:
        return redacted(config.database_url), store.created, list(store.notes)
    finally:
        store.close()
