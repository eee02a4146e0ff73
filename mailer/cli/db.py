"""mailer db init / upgrade: the database and its schema."""
from __future__ import annotations

import click

from ..workspace import create_database
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
    ws = env.workspace(writing=True)  # opening the workspace upgrades, and prints what it did
    if not ws.notes:
        click.echo("The database schema is up to date.")


@db.command("init")
@pass_env
def db_init(env: Env) -> None:
    """Create the database [database] url names (nothing to do when it exists).

    Only this command and `mailer init` create a database: every other command
    stops when it is missing, so a mistyped or lost database never passes for a
    new one (whose suppression list would be empty).

    \b
    Example:  mailer db init
    """
    url, created, notes = create_database(env.config_path, env.environ)
    for note in notes:
        click.echo(f"Note: {note}", err=True)
    click.echo(f"Created the database {url}." if created else f"The database {url} exists already.")
