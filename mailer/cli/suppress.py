"""mailer suppress …: the suppression list (addresses are kept only as keyed hashes)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import NotFound
from ..optouts import (
    InboundResult,
    import_suppressions,
    record_bounce_reports,
    record_complaints,
    record_mailto_optouts,
    suppress,
    suppressions,
    suppressions_covering,
    unsuppress,
)
from ..workspace import Workspace
from . import Env, cli, pass_env

#: Finished, but some inbound messages could not be read (the spec's "some failed").
EXIT_SOME_SKIPPED = 4


@cli.group("suppress")
def suppress_group() -> None:
    """Manage the suppression list (addresses are kept only as keyed hashes)."""


@suppress_group.command("add")
@click.argument("values", nargs=-1, required=True)
@click.option("--reason", default="", help="Why (kept with the entry).")
@pass_env
def suppress_add(env: Env, values: tuple[str, ...], reason: str) -> None:
    """Add addresses or @domains to the suppression list.

    \b
    Example:  mailer suppress add jean@example.com @competitor.example --reason "asked by phone"
    """
    result = suppress(env.workspace(writing=True), values, reason=reason)
    click.echo(f"{result.added} added, {result.known} already on the list.")


@suppress_group.command("remove")
@click.argument("value")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_env
def suppress_remove(env: Env, value: str, yes: bool) -> None:
    """Remove an address or @domain from the suppression list.

    Only do this when the person asked to be mailed again.

    \b
    Example:  mailer suppress remove jean@example.com
    """
    ws = env.workspace(writing=True)
    if not yes and sys.stdin.isatty():
        click.confirm(f"Remove {value} from the suppression list (they will be mailed again)?", abort=True)
    if unsuppress(ws, value):
        click.echo(f"Removed {value}.")
    else:
        raise NotFound(f"{value} is not on the suppression list")


@suppress_group.command("list")
@pass_env
def suppress_list(env: Env) -> None:
    """List the suppression list: scope, hash or domain, origin, reason, date.

    \b
    Example:  mailer suppress list
    """
    entries = suppressions(env.workspace(writing=True))
    for e in entries:
        shown = e.value if e.scope == "domain" else e.value[:16] + "…"
        click.echo(f"{e.created_at:%Y-%m-%d}  {e.scope:<7} {shown:<24} {e.origin:<9} {e.campaign_id} {e.reason}")
    click.echo(f"{len(entries)} entries.")


@suppress_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--reason", default="", help="Why (kept with each entry).")
@pass_env
def suppress_import(env: Env, file: str, reason: str) -> None:
    """Import addresses and @domains: one per line, or a CSV with an email column.

    \b
    Example:  mailer suppress import old-unsubscribes.csv --reason "previous tool"
    """
    read, result = import_suppressions(env.workspace(writing=True), Path(file), reason=reason)
    click.echo(f"{file}: {read} entries read, {result.added} added, {result.known} already on the list.")


@suppress_group.command("mailto")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@pass_env
def suppress_mailto(env: Env, paths: tuple[str, ...]) -> None:
    """Record the opt-outs mailed to the List-Unsubscribe mailto address.

    Give the messages received at [unsubscribe] mailto (.eml files, or folders
    such as a maildir): each one whose Subject carries a valid
    `unsubscribe-TOKEN` suppresses that address (origin `mailto`). Run it from
    cron on the mailbox; messages without a valid token are listed, not guessed.
    A message that cannot be read is listed and left in place, the others are
    recorded, and the exit code is 4.

    \b
    Example:  mailer suppress mailto ~/Maildir/unsubscribe/new
    """
    result = record_mailto_optouts(env.workspace(writing=True), [Path(p) for p in paths])
    click.echo(f"{result.added} added, {result.known} already on the list, "
               f"{len(result.rejected)} messages without a valid token.")
    for line in result.rejected[:50]:
        click.echo(f"  {line}")
    _report_skipped(result)


@suppress_group.command("bounces")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@pass_env
def suppress_bounces(env: Env, paths: tuple[str, ...]) -> None:
    """Record the hard bounces reported after the relay had accepted a message.

    Give the bounce reports received at [smtp] bounce_address (.eml files, or
    folders such as a maildir). A report (RFC 3464 delivery status notification)
    saying a recipient failed with 5.1.x (no such mailbox or domain) or 5.2.1
    (mailbox disabled) suppresses that address (origin `bounce`), if the bounced
    message is one mailer sent to that address (its Message-ID is in the send
    log): a forged or stray report suppresses no one. Delays and other failures
    are counted, not suppressed. Run it from cron on the mailbox. A file that
    cannot be read is listed and left in place, and the exit code is 4.

    \b
    Example:  mailer suppress bounces ~/Maildir/bounces/new
    """
    result = record_bounce_reports(env.workspace(writing=True), [Path(p) for p in paths])
    click.echo(f"{result.added} hard bounces added, {result.known} already on the list, {result.passing} not permanent "
               f"(delays, full mailboxes, refused messages), {result.unmatched} not matched to a message mailer sent, "
               f"{result.not_reports} files that are not bounce reports.")
    for line in result.rejected[:50]:
        click.echo(f"  {line}")
    _report_skipped(result)


@suppress_group.command("complaints")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@pass_env
def suppress_complaints(env: Env, paths: tuple[str, ...]) -> None:
    """Record the spam complaints that mailbox providers report (feedback loops).

    Give the reports received at the address you registered with the
    providers' feedback loops (.eml files, or folders such as a maildir). A
    feedback report (ARF, RFC 5965: Feedback-Type abuse, fraud, virus or other)
    about a message mailer sent suppresses the address that message was sent to
    (origin `complaint`) and counts against its campaign in `mailer status`.
    The message is found by its Message-ID in the send log (or by the signed
    unsubscribe token in its List-Unsubscribe header, when the relay replaced
    the Message-ID), so a report whose recipient is redacted works too. A report
    about a message mailer did not send suppresses no one, and one naming
    another recipient suppresses only the address the message went to.
    not-spam and auth-failure reports, and mail that is not a report, are
    counted and skipped. Reading the same reports again changes nothing. Run
    it from cron on the mailbox. A file that cannot be read (or a report whose
    MIME parts cannot be) is listed and left in place, and the exit code is 4.

    \b
    Example:  mailer suppress complaints ~/Maildir/fbl/new
    """
    result = record_complaints(env.workspace(writing=True), [Path(p) for p in paths])
    click.echo(f"{result.recorded} complaints recorded ({result.added} added to the suppression list, "
               f"{result.recorded - result.added} already on it), {result.known} already recorded, "
               f"{result.unmatched} not matched to a message mailer sent, {result.not_complaints} reports that "
               f"are not complaints (not-spam, auth-failure), {result.not_reports} files that are not feedback "
               "reports.")
    if result.by_token:
        click.echo(f"{result.by_token} of them were matched by their unsubscribe token: the relay replaced the "
                   "Message-ID mailer gave.")
    for line in result.rejected[:50]:
        click.echo(f"  {line}")
    if len(result.rejected) > 50:
        click.echo(f"  … and {len(result.rejected) - 50} more")
    _report_skipped(result)


def _report_skipped(result: InboundResult) -> None:
    """The messages that could not be read, on stderr, then exit 4: the others were recorded,
    and a cron job sees that some need a look."""
    if not result.skipped:
        return
    click.echo(f"{len(result.skipped)} files could not be read and were left in place:", err=True)
    for line in result.skipped[:50]:
        click.echo(f"  {line}", err=True)
    if len(result.skipped) > 50:
        click.echo(f"  … and {len(result.skipped) - 50} more", err=True)
    raise click.exceptions.Exit(EXIT_SOME_SKIPPED)


@suppress_group.command("export")
@pass_env
def suppress_export(env: Env) -> None:
    """Print the suppression list as CSV (hashes and domains only, never addresses).

    \b
    Example:  mailer suppress export > suppressions.csv
    """
    entries = suppressions(env.workspace(writing=True))
    click.echo("scope,value,origin,created_at")
    for e in entries:
        click.echo(f"{e.scope},{e.value},{e.origin},{e.created_at:%Y-%m-%dT%H:%M:%SZ}")


@suppress_group.command("check")
@click.argument("values", nargs=-1, required=True)
@pass_env
def suppress_check(env: Env, values: tuple[str, ...]) -> None:
    """Say whether mail to each address (or @domain) is stopped, since when and by what; nothing else.

    An address entry covers the mailbox however it is spelt (+tags; dots and
    googlemail.com at Gmail); a domain entry covers its subdomains.

    \b
    Example:  mailer suppress check jean+news@example.com @client.example
    """
    ws = env.workspace()
    for value in values:
        _check_one(ws, value)
    waiting = ws.spool.pending()
    if waiting:
        click.echo(f"Note: {waiting} opt-outs received while the database was busy wait in the spool; the next "
                   "writing command (send, suppress add, …) records them.", err=True)


def _check_one(ws: Workspace, value: str) -> None:
    entries = suppressions_covering(ws, value)
    if not entries:
        click.echo(f"{value}: not on the suppression list.")
        return
    click.echo(f"{value}: suppressed.")
    for e in entries:
        shown = f"@{e.value}" if e.scope == "domain" else "the mailbox"
        click.echo(f"  {e.created_at:%Y-%m-%d}  {shown} ({e.origin}{': ' + e.reason if e.reason else ''})")
