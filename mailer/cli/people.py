"""mailer explain / forget / retention: what we hold about people, and erasing it."""
from __future__ import annotations

import os
import sys

import click

from .. import privacy
from ..errors import InputError
from ..locales import available
from . import Env, cli, pass_env

#: Erased, but some files that may hold the person could not be removed ("finished, but some failed").
EXIT_SOME_LEFT = 4


@cli.command()
@click.argument("email")
@click.option("--locale", type=click.Choice(available()), default="fr", show_default=True,
              help="Language of the answer.")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text",
              show_default=True)
@pass_env
def explain(env: Env, email: str, locale: str, fmt: str) -> None:
    """Write a ready-to-send answer telling a person what we hold about them.

    Who we are, every field we hold, where and when it was collected, the legal
    basis of each kind of campaign, every message sent and every decision, when
    the data will be deleted, and how to object.

    \b
    Example:  mailer explain jeanne@client.example --locale fr > answer.txt
    """
    import json

    ws = env.workspace()
    explanation = privacy.explain(ws, email)
    if fmt == "json":
        click.echo(json.dumps(privacy.as_json(explanation), indent=2, ensure_ascii=False))
    else:
        click.echo(privacy.render_explanation(explanation, locale, fmt, ws.config.compliance.retention_years), nl=False)


@cli.command()
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_env
def forget(env: Env, email: str, yes: bool) -> None:
    """Erase a person's data; keep only a keyed hash so they are never mailed again.

    Deletes the contact, their consent records, attributes and interactions,
    replaces the address in the send log by its keyed hash, adds an `erasure`
    entry to the suppression list and records the erasure (date, who ran it).
    Removes the copies of their messages from the maildir outbox and the files
    `mailer preview` wrote that hold their address; any it cannot remove are
    listed, and the exit code is then 4.

    \b
    Example:  mailer forget jeanne@client.example --yes
    """
    ws = env.workspace(writing=True)
    if not yes:
        _confirm(f"Erase everything we hold about {email}?")
    result = privacy.forget(ws, email)
    if result.had_contact or result.log_rows:
        click.echo(f"Erased {email}: contact {'deleted' if result.had_contact else 'not found'}, "
                   f"{result.log_rows} send-log rows now keyed by hash only.")
    else:
        click.echo(f"We held no data about {email}.")
    click.echo("The address's keyed hash is on the suppression list: it will never be mailed or imported again."
               if result.suppression_added else "The address was already on the suppression list.")
    if result.outbox_files:
        click.echo(f"Removed {result.outbox_files} copies of messages sent to them from {ws.config.outbox}.")
    _previews_removed(result.preview_files, result.unreachable)


def _previews_removed(removed: int, unreachable: list[str]) -> None:
    """What was removed of the preview copies, and (stderr, exit 4) what may still hold the person."""
    if removed:
        click.echo(f"Removed {removed} preview files (mailer preview) that held them.")
    if unreachable:
        click.echo(f"{len(unreachable)} files or folders that may hold them could not be removed:", err=True)
        for line in unreachable:
            click.echo(f"  {line}", err=True)
        raise click.exceptions.Exit(EXIT_SOME_LEFT)


@cli.command()
@click.option("--apply", "apply_", is_flag=True, help="Erase the expired contacts (as `forget` does).")
@click.option("--yes", is_flag=True, help="With --apply: do not ask for confirmation.")
@click.option("--days", default=60, show_default=True, type=click.IntRange(0, 3650),
              help="Also list contacts expiring within this many days.")
@pass_env
def retention(env: Env, apply_: bool, yes: bool, days: int) -> None:
    """List contacts past their retention period (role addresses excepted); --apply erases them.

    The clock runs from the latest of collection, last contact *from* the person,
    and consent; a contact with no collection date counts as expired.
    Suppression entries are kept. Contacts expiring soon are listed so that a
    reconfirmation campaign can be planned.

    \b
    Example:  mailer retention            # then: mailer retention --apply
    """
    ws = env.workspace(writing=apply_)
    if apply_ and not yes:
        preview = privacy.retention(ws, apply=False, horizon_days=0)
        if preview.expired:
            _confirm(f"Erase the {len(preview.expired)} contacts past retention (mailer retention lists them)?")
    report = privacy.retention(ws, apply=apply_, horizon_days=days)
    click.echo(f"Retention: {report.retention_years} years. Expired today ({report.today.isoformat()}): "
               f"{len(report.expired)}")
    for item in report.expired:
        click.echo(f"  {item.email:<40} {item.describe(expired=True)}")
    click.echo(f"Expiring within {days} days: {len(report.expiring)}")
    for item in report.expiring:
        click.echo(f"  {item.email:<40} {item.describe(expired=False)}")
    if report.erased:
        click.echo(f"Erased {report.erased} contacts past retention (suppression entries kept).")
        if report.outbox_files:
            click.echo(f"Removed {report.outbox_files} copies of messages sent to them from {ws.config.outbox}.")
        _previews_removed(report.preview_files, report.unreachable)
    elif report.expired:
        click.echo("Run with --apply to erase them.")


def _confirm(question: str) -> None:
    """Ask in a terminal; with no terminal, refuse (exit 2): an erasure is never implied."""
    if not sys.stdin.isatty() and not os.environ.get("MAILER_ASSUME_TTY"):
        raise InputError("not asking for confirmation without a terminal", hint="add --yes")
    click.confirm(question, abort=True)
