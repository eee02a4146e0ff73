"""mailer check / preview / send / status."""
from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime

import click

from ..campaign import CampaignStatus, campaign_status, plan_campaign, preview_campaign, send_campaign, send_test
from ..contacts import ENCODINGS
from ..errors import ComplianceRefusal, InputError, NotFound, TransportError
from ..gate import RULE_IDS
from ..planning import Plan
from ..states import SendState
from ..workspace import Workspace
from . import Env, cli, pass_env
from .output import SendingBar, Steps, print_counts, print_summary, readable

EXIT_FAILED_DELIVERIES = 4


@cli.command()
@click.argument("campaign", type=click.Path(dir_okay=False))
@click.option("--no-dns", is_flag=True, help="Skip the DNS preflight (SPF, DKIM, DMARC, MX).")
@click.option("--no-smtp", is_flag=True, help="Skip logging in to the SMTP server.")
@pass_env
def check(env: Env, campaign: str, no_dns: bool, no_smtp: bool) -> None:
    """Validate config and campaign and show the gate's counts per rule. Sends nothing.

    Every allowed message is rendered to check that its footer is visible. With
    the smtp transport, connects and logs in to the server as a send would.

    The DNS preflight asks DNS ([dns] nameservers, else the system resolver)
    what a mailbox provider would: for the From domain (and the DKIM and bounce
    domains) one valid SPF record within 10 lookups that authorises the relay,
    the DKIM key matching the private key (a signed sample must verify), DMARC
    and its alignment, and MX records. Each problem is shown with its fix.

    \b
    Exit codes: 0 ready for bulk sending (Gmail/Yahoo rules); 1 runtime
    failure (SMTP login); 2 bad input; 3 compliance refusal; 5 not ready for
    bulk sending (problems listed); 6 DNS could not be asked (timeout,
    unreachable resolver). --no-dns skips the DNS preflight.

    \b
    Example:  mailer check campaigns/cloud-audit.toml
    """
    ws = env.workspace()
    try:
        with Steps() as steps:
            plan = plan_campaign(ws, campaign, progress=steps)
    except ComplianceRefusal:
        click.secho(f"{campaign}: NOT OK", fg="red")
        raise
    click.echo(f"{env.config_path}: OK")
    click.echo(f"{campaign}: OK (templates compile, {len(plan.allowed)} messages render with a visible footer)")
    print_counts(plan)
    for note in plan.notes:
        click.echo(f"Note: {note}")
    if ws.transport_class.leaves_host and not no_smtp:
        found = asyncio.run(ws.open_transport().preflight())
        if found:
            click.echo(found)
    if not no_dns:
        from ..addresses import parse_from_header
        from ..dns_check import EXIT_NOT_READY, preflight
        result = preflight(ws.config, parse_from_header(plan.campaign.from_)[1], ws.environ)
        for line in result.lines():
            click.secho(line, fg=None if result.ready or not line.startswith("Verdict") else "red")
        if not result.ready:
            raise click.exceptions.Exit(EXIT_NOT_READY)


@cli.command()
@click.argument("campaign", type=click.Path(dir_okay=False))
@click.option("--to", "to", help="Render only this person's message, whatever their state (sent, or blocked: "
                                 "marked with the rule that blocks it).")
@click.option("--include-sent", is_flag=True, help="Also render the messages already sent.")
@click.option("--out", "out", type=click.Path(file_okay=False), default="preview", show_default=True,
              help="Folder for the .eml and .html files and index.html (an earlier preview there is replaced).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Write at most N messages.")
@pass_env
def preview(env: Env, campaign: str, to: str | None, include_sent: bool, out: str, limit: int | None) -> None:
    """Render the messages that would go out (footer and headers included).

    Writes one .eml and one .html page per message into --out, and index.html
    listing every candidate with the gate's decision and links to the messages
    (open it in a browser); prints the first message and the decisions.

    \b
    Example:  mailer preview campaigns/cloud-audit.toml --to jeanne@client.example
    """
    ws = env.workspace()
    with Steps() as steps:
        result = preview_campaign(ws, campaign, out, to=to, limit=limit, include_sent=include_sent, progress=steps)
    for note in [*result.notes, *result.plan.notes]:
        click.echo(f"Note: {note}", err=True)
    if result.first is not None:
        click.echo(readable(result.first))
        click.echo("-" * 72)
    if to is not None:
        entry = next((e for e in result.entries if e.stem is not None), None)
        if entry is not None and entry.decision != "allowed":
            click.echo(f"{to}: {entry.verdict}")
    replaced = f" (replacing {result.replaced} files of the previous preview)" if result.replaced else ""
    count = len(result.written)
    click.echo(f"Wrote {count} message{'' if count == 1 else 's'} to {result.folder}/{replaced}; open "
               f"{result.folder / 'index.html'} to review them")
    if result.already_sent and not include_sent and to is None:
        click.echo(f"{result.already_sent} messages were already sent: --include-sent renders them too, "
                   "--to ADDRESS one of them")
    print_counts(result.plan)
    blocked = [r for r in result.plan.recipients or [] if r.blocked_by and r.blocked_by != "already-sent"]
    if blocked:
        click.echo("Blocked:")
        for r in blocked[:100]:
            click.echo(f"  {r.key:<40} {r.blocked_by:<20} {r.detail}")
        if len(blocked) > 100:
            click.echo(f"  … and {len(blocked) - 100} more (index.html lists them all)")


@cli.command()
@click.argument("campaign", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Plan and show the counts; record and send nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Send at most N messages in this run.")
@click.option("--retry-uncertain", is_flag=True,
              help="Resend deliveries a crash left uncertain (they may then arrive twice).")
@click.option("--allow-changes", is_flag=True,
              help="Send although the campaign file or its templates changed since earlier runs sent messages.")
@click.option("--test-to", "test_to", metavar="EMAIL",
              help="Send one test message to EMAIL instead (subject '[TEST] …'); nothing is recorded.")
@click.option("--as", "as_contact", metavar="CONTACT",
              help="With --test-to: whose message to send (default: the first allowed recipient).")
@pass_env
def send(env: Env, campaign: str, dry_run: bool, yes: bool, limit: int | None, retry_uncertain: bool,
         allow_changes: bool, test_to: str | None, as_contact: str | None) -> None:
    """Plan, confirm, send with a progress bar, and print a summary.

    Rerunning resumes: nobody is mailed twice for one campaign.

    With --test-to, one recipient's message goes to EMAIL through the configured
    transport, subject prefixed [TEST]: nothing is recorded in the send log, and
    its unsubscribe link records nothing when used.

    \b
    Examples:  mailer send campaigns/cloud-audit.toml --yes
               mailer send campaigns/cloud-audit.toml --test-to me@acme.example --as jeanne@client.example
    """
    if as_contact and not test_to:
        raise click.UsageError("--as goes with --test-to")
    ws = env.workspace(writing=not dry_run and not test_to)
    if test_to:
        _send_test(ws, campaign, test_to, as_contact)
        return
    bar = SendingBar()

    shown: list[bool] = []

    def confirm(plan: Plan, to_send: int) -> bool:
        """Shows the plan; asks unless --yes, before anything is written (send_campaign calls it again
        with the run's plan then); the sending bar starts once the run's plan is made."""
        if not shown:
            shown.append(True)
            _show_plan(plan)
            if not yes:
                if not sys.stdin.isatty() and not os.environ.get("MAILER_ASSUME_TTY"):
                    raise InputError("not asking for confirmation without a terminal",
                                     hint="add --yes to send without confirmation")
                click.confirm(f"Send {to_send} messages via {ws.config.transport.type} "
                              f"({ws.open_transport().target.rstrip('/')})?", abort=True)
                return True
        bar.start(to_send)
        return True

    def stopping() -> None:
        click.echo("\nStopping after the messages in flight… (Ctrl-C again to force)", err=True)

    with Steps() as steps, bar.shown():
        summary = send_campaign(ws, campaign, dry_run=dry_run, retry_uncertain=retry_uncertain, limit=limit,
                                allow_changes=allow_changes, ask_before_writing=not yes,
                                confirm=confirm, progress=steps, on_result=bar, on_stopping=stopping)
    if summary.dry_run or summary.to_send == 0:
        if summary.plan is not None:
            _show_plan(summary.plan)
        if summary.dry_run:
            click.echo(f"Dry run: {summary.to_send} messages would be sent; nothing was recorded or sent.")
        else:
            click.echo("Nothing to send.")
            if _still_waiting(ws, campaign, summary.campaign_id):
                raise click.exceptions.Exit(EXIT_FAILED_DELIVERIES)
        return
    print_summary(summary)
    for note in summary.notes:
        click.echo(f"Note: {note}")
    if summary.recovered is not None and summary.recovered.senders:
        found = summary.recovered
        done = [f"{found.uncertain} of the messages it was sending are marked uncertain (not resent unless "
                "--retry-uncertain)" if found.uncertain else "",
                f"{found.confirmed} it was sending were found delivered" if found.confirmed else "",
                f"the {found.given_back} recipients it had taken went to the others" if found.given_back else ""]
        click.echo(f"Note: {', '.join(found.senders)} stopped while sending this campaign: "
                   + "; ".join(filter(None, done)))
    if summary.aborted:
        raise TransportError(f"sending stopped: {summary.aborted}",
                             hint="nothing is lost: check the server, then rerun the same command to resume")
    if summary.footer_blocked:
        raise ComplianceRefusal([f"{summary.footer_blocked} messages would not have shown the footer as written and "
                                 "were not sent (mailer status CAMPAIGN --show blocked says why); fix the template"])
    if summary.stopped:
        click.echo("Stopped. Rerun the same command to resume.")
    waiting = _still_waiting(ws, campaign, summary.campaign_id)
    if summary.failed or waiting:
        raise click.exceptions.Exit(EXIT_FAILED_DELIVERIES)


def _still_waiting(ws: Workspace, campaign: str, campaign_id: str) -> int:
    """Allowed recipients of the campaign not sent yet (deferred or uncertain, from this run or an
    earlier one), said with the command that continues: a run is not done while there are any."""
    try:
        found = campaign_status(ws, campaign_id)
    except NotFound:  # nothing was ever planned for it
        return 0
    states = found.states
    others = [share.name for share in found.senders if share.state == "sending"]
    if others:  # theirs to finish: not a reason for this one's exit code
        left = states.get(SendState.PLANNED, 0) + states.get(SendState.SENDING, 0)
        click.echo(f"Still sending this campaign: {', '.join(others)} ({left} recipients not sent yet; "
                   f"mailer status {campaign_id} shows each sender's share).", err=True)
    deferred, uncertain = states.get(SendState.DEFERRED, 0), states.get(SendState.UNCERTAIN, 0)
    if deferred or uncertain:
        click.echo(f"Not finished: {deferred + uncertain} allowed recipients were not sent yet ({deferred} "
                   f"deferred, {uncertain} uncertain).", err=True)
    if deferred:
        click.echo(f"  Rerun `mailer send {campaign} --yes` to retry the deferred.", err=True)
    if uncertain:
        click.echo(f"  Uncertain messages may have arrived: check, then `mailer send {campaign} --yes "
                   "--retry-uncertain` sends them again.", err=True)
    return deferred + uncertain


def _show_plan(plan: Plan) -> None:
    if plan.imported is not None:
        r = plan.imported.result
        read_as = f" (read as {ENCODINGS[plan.imported.encoding]})" if plan.imported.encoding != "utf-8" else ""
        click.echo(f"Imported {plan.imported.path.name}{read_as}: {r.inserted} new, {r.updated} updated, "
                   f"{r.unchanged} unchanged.")
        if plan.imported.erased_skipped:
            click.echo(f"Skipped {plan.imported.erased_skipped} rows of people whose data was erased.")
    if plan.confirmed_delivered:
        click.echo(f"{plan.confirmed_delivered} messages interrupted by a crash were found delivered.")
    print_counts(plan)
    for note in plan.notes:
        click.echo(f"Note: {note}")


@cli.command()
@click.argument("campaign", required=False)
@click.option("--show", type=click.Choice(["blocked", "failed", "uncertain", "deferred", "sent", "planned"]),
              default=None, help="Also list the addresses in this state.")
@pass_env
def status(env: Env, campaign: str | None, show: str | None) -> None:
    """Show a campaign's send log: sent, failed, uncertain, blocked per rule, and the
    unsubscribes, hard bounces and spam complaints that came from it. Without CAMPAIGN:
    one line per campaign.

    CAMPAIGN is the campaign file or its id.

    \b
    Examples:  mailer status
               mailer status campaigns/cloud-audit.toml --show blocked
    """
    if campaign is None:
        if show:
            raise click.UsageError("--show needs a CAMPAIGN")
        _status_of_all(env.workspace())
        return
    found = campaign_status(env.workspace(), campaign, show=show)
    states, rules = found.states, found.rules
    click.echo(f"Campaign {found.campaign_id}")
    click.echo(f"  {'allowed':<20} {found.allowed:>7}")
    for state in ("sent", "planned", "sending", "deferred", "failed", "uncertain"):
        if states.get(state):
            click.echo(f"    {state:<18} {states[state]:>7}")
    if found.hard_bounces:
        click.echo(f"    {'hard bounces':<18} {found.hard_bounces:>7}  (now on the suppression list)")
    click.echo(f"  {'blocked':<20} {states.get('blocked', 0):>7}")
    for rule in RULE_IDS:
        if rules.get(rule):
            click.echo(f"    {rule:<18} {rules[rule]:>7}")
    _print_senders(found)
    run = found.last_run
    if run is not None:
        outcome = run.outcome
        if found.dead_run and outcome == "running":
            outcome = ("stopped without finishing (its process is gone); the messages it was sending are "
                       "counted uncertain, and the next `mailer send` resumes")
        click.echo(f"Last run: {run.started_at:%Y-%m-%d %H:%M} UTC, {outcome}")
        if run.counts.get("duplicate"):
            click.echo(f"  {run.counts['duplicate']} repeated rows in the CSV were skipped as duplicates")
    if len(found.versions) > 1 or found.versions and "" not in found.versions:
        click.echo("Sent, by version of the campaign file and templates: " + ", ".join(
            f"{v or 'unrecorded'} {count} (from {started:%Y-%m-%d %H:%M})"
            for v, (count, started) in sorted(found.versions.items(), key=lambda kv: kv[1][1])))
    unsubscribed = {origin: n for origin, n in found.suppressions.items() if origin in _UNSUBSCRIBES}
    if unsubscribed:
        how = ", ".join(f"{n} {origin}" for origin, n in sorted(unsubscribed.items()))
        click.echo(f"Unsubscribed from it: {sum(unsubscribed.values())} ({how})")
    if found.complaints:
        sent = states.get("sent", 0)
        rate = f" ({found.complaints / sent:.2%} of the messages sent; Gmail and Yahoo want under 0.3%)" if sent else ""
        click.echo(f"Complaints about it: {found.complaints}{rate}")
    if found.spooled_optouts:
        click.echo(f"Opt-outs waiting to be recorded: {found.spooled_optouts} (kept in {env.workspace().spool.path} "
                   "while the database was busy; the next send or import records them)")
    for row in found.rows:
        extra = f"{row.rule:<20} {row.detail}" if show == "blocked" else \
            f"{row.smtp_code or '':<4} {row.smtp_text or row.detail}"
        click.echo(f"  {row.address_key:<40} {extra}")



def _print_senders(found: CampaignStatus) -> None:
    """Each sender's share: what it sent, and what it holds now (when several took part, or one is
    sending now)."""
    if not found.senders or (len(found.senders) == 1 and found.senders[0].state != "sending"):
        return
    click.echo("Senders:")
    header = ("SENDER", "RUN", "STATE", "SENT", "FAILED", "DEFERRED", "UNCERTAIN", "IN FLIGHT", "RESERVED")
    rows = []
    for share in found.senders:
        state = share.state
        if state == "gone" and share.last_seen is not None:
            seen = share.last_seen.replace(tzinfo=UTC) if share.last_seen.tzinfo is None else share.last_seen
            state = f"gone (last seen {seen:%H:%M:%S} UTC)" if seen.date() == datetime.now(UTC).date() \
                else f"gone (last seen {seen:%Y-%m-%d %H:%M} UTC)"
        counts = share.rows
        rows.append((share.name, share.run_id, state, counts.get("sent", 0), counts.get("failed", 0),
                     counts.get("deferred", 0), counts.get("uncertain", 0), counts.get("sending", 0),
                     counts.get("planned", 0)))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  " + "  ".join(str(v).rjust(w) if isinstance(v, int) else str(v).ljust(w)
                                    for v, w in zip(row, widths, strict=True)).rstrip())


def _send_test(ws: Workspace, campaign: str, to: str, as_contact: str | None) -> None:
    with Steps() as steps:
        sent = send_test(ws, campaign, to, as_contact=as_contact, progress=steps)
    if sent.verdict:
        click.echo(f"Note: {sent.contact} would not be sent this campaign ({sent.verdict}); the test shows their "
                   "message anyway", err=True)
    if sent.delivery.state != "sent":
        answer = f" ({sent.delivery.code} {sent.delivery.text})" if sent.delivery.code else \
            f" ({sent.delivery.text})" if sent.delivery.text else ""
        raise TransportError(f"the test message to {sent.to} was not delivered: {sent.delivery.state}{answer}")
    click.echo(f"Sent a test of {sent.contact}'s message to {sent.to} via {sent.target.rstrip('/')}: "
               f"{sent.subject}")
    click.echo("Nothing was recorded; its unsubscribe link records nothing when used.")


#: suppression origins that are a person unsubscribing (from a campaign's message)
_UNSUBSCRIBES = ("one-click", "link", "mailto")


def _status_of_all(ws: Workspace) -> None:
    """One line per campaign: its last run, and what its send log and the suppression list hold."""
    ids = ws.store.campaigns.ids()
    if not ids:
        click.echo("No campaign was sent yet: mailer send CAMPAIGN.toml starts one.")
        return
    origins = ws.store.suppressions.origins_by_campaign()
    complaints = ws.store.complaints.by_campaign()
    header = ("CAMPAIGN", "LAST RUN", "OUTCOME", "SENT", "FAILED", "DEFERRED", "BLOCKED", "UNSUBSCRIBED",
              "BOUNCED", "COMPLAINED")
    rows = []
    for campaign_id in ids:
        found = campaign_status(ws, campaign_id)
        run = found.last_run
        outcome = "" if run is None else "stopped (process gone)" if found.dead_run and run.outcome == "running" \
            else run.outcome
        counts = origins.get(campaign_id, {})
        rows.append((campaign_id, f"{run.started_at:%Y-%m-%d %H:%M}" if run else "", outcome,
                     found.states.get("sent", 0), found.states.get("failed", 0), found.states.get("deferred", 0),
                     found.states.get("blocked", 0), sum(counts.get(o, 0) for o in _UNSUBSCRIBES),
                     counts.get("bounce", 0), complaints.get(campaign_id, 0)))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(v).rjust(w) if isinstance(v, int) else str(v).ljust(w)
                             for v, w in zip(row, widths, strict=True)).rstrip())
    waiting = ws.spool.pending()
    if waiting:
        click.echo(f"Opt-outs waiting to be recorded: {waiting} (the next send or import records them)")
