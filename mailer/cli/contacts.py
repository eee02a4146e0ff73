"""mailer contacts import / touch / list / show / remove."""
from __future__ import annotations

from pathlib import Path

import click

from ..contacts import DATE_FORMATS, ENCODINGS, parse_date
from ..errors import InputError, NotFound
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
@click.option("--encoding", type=click.Choice(sorted(ENCODINGS)), default=None,
              help="The file's encoding (default: detected; Excel in France writes cp1252).")
@click.option("--date-format", "date_format", type=click.Choice(DATE_FORMATS), default="DD/MM/YYYY",
              show_default=True, help="How dates like 12/06/2026 are read (YYYY-MM-DD is always read).")
@pass_env
def contacts_import(env: Env, file: str, list_name: str, skip_invalid: bool, collected_at: str | None,
                    encoding: str | None, date_format: str) -> None:
    """Validate a contacts CSV and upsert it into a list (all or nothing).

    Comma, semicolon or tab separated; UTF-8 (with or without BOM), UTF-16,
    Windows-1252 or Latin-1, detected (or --encoding); dates as YYYY-MM-DD or
    DD/MM/YYYY (--date-format); columns as in the README. Rows are matched on
    the normalised address.

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
                                  collected_at=day, encoding=encoding, date_format=date_format)
    r = outcome.result
    read_as = f" (read as {ENCODINGS[outcome.encoding]})" if outcome.encoding != "utf-8" else ""
    click.echo(f"{file}{read_as}: {r.inserted} new, {r.updated} updated, {r.unchanged} unchanged, "
               f"{len(outcome.repeated)} repeated rows merged; {r.added_to_list} added to list {list_name!r}.")
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


@contacts.command("list")
@click.option("--list", "list_name", default=None, help="Only the contacts of this list.")
@click.option("--search", "text", default="", help="Only contacts whose address, name, company or job title "
                                                   "contains TEXT (any case).")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Show at most N.")
@pass_env
def contacts_list(env: Env, list_name: str | None, text: str, limit: int) -> None:
    """List contacts: address, name, company, job title, kind, source, collection date, lists.

    \b
    Example:  mailer contacts list --list prospects-2026 --search dupont
    """
    found, total = env.workspace().store.contacts.search(list_name=list_name, text=text, limit=limit)
    if not found:
        click.echo("No contact matches." if text or list_name else "No contacts yet: mailer contacts import FILE "
                                                                   "--list NAME adds some.")
        return
    rows = [(c.email, f"{c.first_name} {c.last_name}".strip(), c.company, c.job_title, c.kind, c.source,
             c.collected_at.isoformat() if c.collected_at else "undated", ", ".join(lists))
            for c, lists in found]
    header = ("EMAIL", "NAME", "COMPANY", "JOB TITLE", "KIND", "SOURCE", "COLLECTED", "LISTS")
    widths = [min(40, max(len(str(r[i])) for r in [header, *rows])) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(_cut(str(v), w).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    if total > len(found):
        click.echo(f"… {total - len(found)} more (--limit, --search or --list narrow it)")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


@contacts.command("show")
@click.argument("email")
@pass_env
def contacts_show(env: Env, email: str) -> None:
    """Show one contact: every field, lists, suppression, retention and the campaigns it was in.

    \b
    Example:  mailer contacts show jeanne@client.example
    """
    from ..privacy import explain
    held = explain(env.workspace(), email)
    c = held.contact
    if c is None and held.suppressed_since is None and held.holds_nothing:
        raise NotFound(f"no contact {email}", hint="mailer contacts list --search TEXT finds one")
    lines: list[tuple[str, object]] = [("email", c.email if c is not None else held.email)]
    if c is not None:
        lines += [("name", f"{c.first_name} {c.last_name}".strip()), ("company", c.company),
                  ("job title", c.job_title), ("industry", c.industry), ("country", c.country), ("kind", c.kind),
                  ("source", f"{c.source} ({c.source_type})" if c.source else ""),
                  ("collected", c.collected_at or "undated"),
                  ("consent", f"{c.consent} {c.consent_at or ''} {c.consent_proof}".strip()),
                  ("member", "yes" if c.member else ""), ("last contact", c.last_interaction_at or ""),
                  *((f"attrs.{k}", v) for k, v in c.attrs.items())]
    else:
        lines.append(("contact", "none held (only what the send log or the suppression list keep)"))
    lines += [("lists", ", ".join(held.lists)),
              ("suppressed", f"since {held.suppressed_since:%Y-%m-%d} ({held.suppression_origin})"
               if held.suppressed_since else "no"),
              ("retention", f"until {held.deletion_date}" if held.deletion_date else
               "role address (kept while the organisation exists)" if held.generic else "")]
    for decision in held.decisions:
        lines.append((f"campaign {decision.campaign_id}",
                      f"{decision.state}{' (' + decision.rule + ')' if decision.rule else ''} "
                      f"{decision.at:%Y-%m-%d %H:%M}"))
    shown = [(label, value) for label, value in lines if value not in ("", None)]
    width = max(len(label) for label, _ in shown) + 2
    for label, value in shown:
        click.echo(f"{label + ':':<{width}}{value}")


@contacts.command("remove")
@click.argument("email")
@click.option("--list", "list_name", required=True, help="The list to take the contact out of.")
@pass_env
def contacts_remove(env: Env, email: str, list_name: str) -> None:
    """Take a contact out of a list (the contact and its history stay; `forget` erases a person).

    \b
    Example:  mailer contacts remove jeanne@client.example --list prospects-2026
    """
    from ..addresses import normalise
    if not env.workspace().store.contacts.remove_from_list(normalise(email).key, list_name):
        raise NotFound(f"{email} is not in the list {list_name!r}",
                       hint=f"mailer contacts list --list {list_name} shows who is")
    click.echo(f"Removed {email} from the list {list_name!r}. The contact stays; `mailer forget` erases a person.")
