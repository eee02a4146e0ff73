"""mailer db upgrade: the database schema."""
from __future__ import annotations

import click

from . import Env, cli, pass_env


@cli.group()
def db() -> None:
    """The database schema: create it, upgrade it to this version of mailer."""


@db.command("upgrade")
@pass_env
def db_upgrade(env: Env) -> None:
    """Apply the schema migrations this version of mailer brings (also done on first use).

    \b
    Example:  mailer db upgrade
    """
    ws = env.workspace()  # opening the workspace upgrades, and prints what it did
    if not ws.notes:
        click.echo("The database schema is up to date.")
