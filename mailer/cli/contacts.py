"""mailer contacts import / touch."""
from __future__ import annotations

from pathlib import Path

import click

from ..contacts import parse_date
from ..errors import InputError
from ..importer import import_contacts
from ..privacy import touch_contact
from ..store import utcnow
from . import Env, cli, pass_env
from .output import Steps


@cli.group()
def contacts() -> None:
    """Import and inspect contacts."""


@contacts.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--list", "list_name", required=True, help="Contact list to add the contacts to.")
@click.option("--skip-invalid", is_flag=True, help="Import the good rows and list the bad ones.")
@click.option("--collected-at", "collected_at", metavar="DATE",
              help="When the file's addresses were collected (YYYY-MM-DD), for rows with no collected_at. "
                   "Without a date, a contact counts as past retention.")
@pass_env
def contacts_import(env: Env, file: str, list_name: str, skip_invalid: bool, collected_at: str | None) -> None:
    """Validate a contacts CSV and upsert it into a list (all or nothing).

    Comma or semicolon separated, UTF-8 with or without BOM; columns as in the
    README. Rows are matched on the normalised address.

    \b
    Example:  mailer contacts import contacts/prospects.csv --list prospects-2026
    """
    day = None
    if collected_at is not None:
        try:
            day = parse_date(collected_at)
        except ValueError:
            raise InputError(f"--collected-at {collected_at!r} is not a date", hint="use YYYY-MM-DD") from None
    with Steps() as steps:
        outcome = import_contacts(env.workspace(writing=True), Path(file), list_name, skip_invalid=skip_invalid, progress=steps,
                                  collected_at=day)
    r = outcome.result
    click.echo(f"{file}: {r.inserted} new, {r.updated} updated, {len(outcome.repeated)} repeated rows merged; "
               f"{r.added_to_list} added to list {list_name!r}.")
    if outcome.undated:
        click.secho(f"{outcome.undated} rows have no collection date: they count as past retention and will not be "
                    "mailed. Give collected_at in the file, or --collected-at DATE for the whole file.", fg="yellow")
    if outcome.erased_skipped:
        click.echo(f"Skipped {outcome.erased_skipped} rows of people whose data was erased "
                   "(at their request, or past retention with no newer collection).")
    if outcome.skipped:
        click.secho(f"Skipped {len(outcome.skipped)} invalid rows:", fg="yellow")
        for problem in outcome.skipped:
            click.echo(f"  {problem}")


@contacts.command("touch")
@click.argument("email")
@click.option("--at", "at", required=True, help="When the person contacted us (YYYY-MM-DD).")
@click.option("--what", type=click.Choice(["reply", "click", "form"]), required=True,
              help="What the person did. Opens and our own sends do not count.")
@pass_env
def contacts_touch(env: Env, email: str, at: str, what: str) -> None:
    """Record a contact initiated by the person: it restarts the retention clock.

    \b
    Example:  mailer contacts touch jeanne@client.example --at 2026-11-20 --what reply
    """
    try:
        day = parse_date(at)
    except ValueError:
        raise InputError(f"--at {at!r} is not a date", hint="use YYYY-MM-DD") from None
    latest = touch_contact(env.workspace(writing=True), email, day, what, utcnow().date())
    click.echo(f"Recorded a {what} on {day.isoformat()}; last contact from {email} is now {latest.isoformat()}.")
