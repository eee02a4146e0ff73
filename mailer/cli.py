"""The command line: parse, call the library, print, map errors to exit codes.

Exit codes: 0 done; 1 runtime failure; 2 bad input; 3 compliance refusal of the
whole campaign; 4 finished, but some deliveries failed.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import click

from . import __version__
from .addresses import normalise
from .config import find_config_path, load_campaign
from .contacts import ContactData
from .errors import InputError, MailerError, NotFound, TransportError
from .gate import RULE_IDS
from .lease import keep_campaign, take_campaign, this_process
from .pipeline import (
    LARGE_SEND,
    Plan,
    Workspace,
    deliver_campaign,
    expected_recipients,
    import_contacts,
    open_workspace,
    plan_campaign,
    prepare_campaign,
    start_render_workers_early,
)
from .render import RenderedMessage
from .store import utcnow
from .transport import open_transport

EXIT_FAILED_DELIVERIES = 4


class MailerGroup(click.Group):
    """Turns every MailerError into one clear message and its exit code (the one place)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MailerError as exc:
            debug = bool(ctx.meta.get("mailer.debug"))
            if debug:
                traceback.print_exc()
            click.secho(f"Error: {exc.message}", fg="red", err=True)
            if exc.hint:
                click.echo(f"Hint: {exc.hint}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except Exception as exc:  # an unexpected bug: say so plainly
            if ctx.meta.get("mailer.debug"):
                raise
            click.secho(f"Error: unexpected {type(exc).__name__}: {exc}", fg="red", err=True)
            click.echo("Hint: rerun with --debug for the traceback, and report it.", err=True)
            ctx.exit(1)


class Env:
    """What commands share: the --config path and the environment (swappable in tests)."""

    def __init__(self, config: str | None, environ: dict[str, str]) -> None:
        self.config_option = config
        self.environ = environ
        self._workspace: Workspace | None = None

    @property
    def config_path(self) -> Path:
        return find_config_path(self.config_option, self.environ)

    def workspace(self) -> Workspace:
        if self._workspace is None:
            self._workspace = open_workspace(self.config_path, self.environ)
            if self._workspace.secret_generated:
                var = self._workspace.config.unsubscribe.secret_env
                click.echo(f"Note: ${var} is not set; created a random secret for unsubscribe tokens and "
                           f"kept it in the database. In production, set ${var}.", err=True)
        return self._workspace

    def close(self) -> None:
        if self._workspace is not None:
            self._workspace.close()


pass_env = click.make_pass_decorator(Env)


@click.group(cls=MailerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="config.toml to use (default: $MAILER_CONFIG, else ./config.toml).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="mailer")
@click.pass_context
def cli(ctx: click.Context, config: str | None, debug: bool) -> None:
    """Send email campaigns that cannot break the rules.

    Every recipient passes a compliance gate; every message carries a footer the
    template cannot leave out; everything is recorded.

    \b
    Start with:  mailer init demo && cd demo
                 mailer send campaigns/cloud-audit.toml
    """
    ctx.meta["mailer.debug"] = debug
    env = Env(config, dict(os.environ))
    ctx.obj = env
    ctx.call_on_close(env.close)


# --------------------------------------------------------------------------- init

@cli.command()
@click.argument("directory", type=click.Path(file_okay=False), default=".")
def init(directory: str) -> None:
    """Write a working sample: config.toml, a campaign, templates and contacts.

    Never overwrites a file that exists.

    \b
    Example:  mailer init demo && cd demo && mailer send campaigns/cloud-audit.toml
    """
    target = Path(directory)
    sample = resources.files("mailer") / "sample"
    written, kept = [], []
    with resources.as_file(sample) as source:
        for path in sorted(Path(source).rglob("*")):
            relative = path.relative_to(source)
            if path.is_dir() or "__pycache__" in relative.parts or relative.parts[:2] == ("templates", "footer"):
                continue
            destination = target / relative
            if destination.exists():
                kept.append(relative)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
            written.append(relative)
    for name in written:
        click.echo(f"  wrote {target / name}")
    for name in kept:
        click.echo(f"  kept  {target / name} (exists)")
    click.echo(f"\nNext: cd {target} && mailer check campaigns/cloud-audit.toml")


# --------------------------------------------------------------------------- contacts

@cli.group()
def contacts() -> None:
    """Import and inspect contacts."""


@contacts.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--list", "list_name", required=True, help="Contact list to add the contacts to.")
@click.option("--skip-invalid", is_flag=True, help="Import the good rows and list the bad ones.")
@pass_env
def contacts_import(env: Env, file: str, list_name: str, skip_invalid: bool) -> None:
    """Validate a contacts CSV and upsert it into a list (all or nothing).

    Comma or semicolon separated, UTF-8 with or without BOM; columns as in the
    README. Rows are matched on the normalised address.

    \b
    Example:  mailer contacts import contacts/prospects.csv --list prospects-2026
    """
    with _Steps() as steps:
        outcome = import_contacts(env.workspace(), Path(file), list_name, skip_invalid=skip_invalid, progress=steps)
    r = outcome.result
    click.echo(f"{file}: {r.inserted} new, {r.updated} updated, {len(outcome.repeated)} repeated rows merged; "
               f"{r.added_to_list} added to list {list_name!r}.")
    if outcome.erased_skipped:
        click.echo(f"Skipped {outcome.erased_skipped} rows of people whose data was erased "
                   "(at their request, or past retention with no newer collection).")
    if outcome.skipped:
        click.secho(f"Skipped {len(outcome.skipped)} invalid rows:", fg="yellow")
        for problem in outcome.skipped:
            click.echo(f"  {problem}")


# --------------------------------------------------------------------------- check / preview

def _print_counts(plan: Plan) -> None:
    counts = plan.counts
    total = sum(counts.values())
    click.echo(f"Campaign {plan.campaign.id}: {total} candidates")
    click.echo(f"  {'allowed':<20} {counts.get('allowed', 0):>7}")
    for rule in RULE_IDS:
        if counts.get(rule):
            click.echo(f"  {rule:<20} {counts[rule]:>7}")
    if plan.uncertain_recovered:
        click.secho(f"  {plan.uncertain_recovered} deliveries were interrupted by a crash and are marked uncertain "
                    "(not resent; use --retry-uncertain to resend them).", fg="yellow")


@cli.command()
@click.argument("campaign", type=click.Path(dir_okay=False))
@click.option("--no-dns", is_flag=True, help="Skip the DNS preflight of the From domain.")
@click.option("--no-smtp", is_flag=True, help="Skip logging in to the SMTP server.")
@pass_env
def check(env: Env, campaign: str, no_dns: bool, no_smtp: bool) -> None:
    """Validate config and campaign and show the gate's counts per rule. Sends nothing.

    Every allowed message is rendered to check that its footer is visible. With
    the smtp transport, connects and logs in to the server as a send would.

    \b
    Example:  mailer check campaigns/cloud-audit.toml
    """
    ws = env.workspace()
    prepared = prepare_campaign(ws, Path(campaign))
    with _Steps() as steps:
        plan = plan_campaign(ws, prepared, render_check=True, persist=False, progress=steps)
    click.echo(f"{env.config_path}: OK")
    click.echo(f"{campaign}: OK (templates compile, {len(plan.allowed)} messages render with a visible footer)")
    _print_counts(plan)
    if not no_dns:
        from .dns_check import preflight
        for line in preflight(prepared.renderer.from_domain, ws.config.dkim.selector):
            click.echo(line)
    if ws.config.transport.type == "smtp" and not no_smtp:
        transport = open_transport(ws.config, env.environ)
        click.echo(asyncio.run(transport.preflight()))


@cli.command()
@click.argument("campaign", type=click.Path(dir_okay=False))
@click.option("--to", "to", help="Render only the message for this address.")
@click.option("--out", "out", type=click.Path(file_okay=False), default="preview", show_default=True,
              help="Folder for the .eml and .html files.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Write at most N messages.")
@pass_env
def preview(env: Env, campaign: str, to: str | None, out: str, limit: int | None) -> None:
    """Render the messages that would go out (footer and headers included).

    Writes one .eml and one .html per allowed recipient into --out, prints the
    first message, and lists the gate's decisions.

    \b
    Example:  mailer preview campaigns/cloud-audit.toml --to jeanne@client.example
    """
    ws = env.workspace()
    prepared = prepare_campaign(ws, Path(campaign))
    renderer = prepared.renderer
    wanted = normalise(to).key if to else None
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    first: bytes | None = None

    def write(contact: ContactData, rendered: RenderedMessage) -> None:
        """Called by the plan with each message it rendered and found compliant: written once."""
        nonlocal written, first
        if (wanted is not None and contact.address.key != wanted) or (limit is not None and written >= limit):
            return
        data = renderer.build_mime(rendered, renderer.message_id())
        written += 1
        stem = f"{written:05d}-{_safe(contact.address.key)}"
        (folder / f"{stem}.eml").write_bytes(data)
        if rendered.html is not None:
            (folder / f"{stem}.html").write_text(rendered.html, encoding="utf-8")
        first = first or data

    with _Steps() as steps:
        plan = plan_campaign(ws, prepared, render_check=True, persist=False, on_rendered=write, progress=steps)
    recipients = plan.recipients or []
    if wanted is not None:
        recipients = [r for r in recipients if r.key == wanted]
        if not recipients:
            raise NotFound(f"{to} is not among the recipients of {plan.campaign.id}",
                           hint=f"is it in the list {plan.campaign.list_name!r}?")
    if first is not None:
        click.echo(_readable(first))
        click.echo("-" * 72)
    click.echo(f"Wrote {written} messages to {folder}/")
    _print_counts(plan)
    blocked = [r for r in recipients if r.blocked_by]
    if blocked:
        click.echo("Blocked:")
        for r in blocked[:100]:
            click.echo(f"  {r.key:<40} {r.blocked_by:<20} {r.detail}")
        if len(blocked) > 100:
            click.echo(f"  … and {len(blocked) - 100} more (mailer status shows them after a send)")


def _readable(data: bytes) -> str:
    """A message as a reviewer reads it: decoded headers, then the decoded text part."""
    import email
    from email import policy
    message = email.message_from_bytes(data, policy=policy.default)
    lines = [f"{name}: {value}" for name, value in message.items() if name.lower() != "dkim-signature"]
    body = message.get_body(("plain",))
    text = body.get_content() if body is not None else ""
    return "\n".join(lines) + "\n\n" + text.replace("\r\n", "\n")


def _safe(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "@._-" else "_" for ch in key)[:80]


# --------------------------------------------------------------------------- send

@cli.command()
@click.argument("campaign", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Plan and show the counts; record and send nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Send at most N messages in this run.")
@click.option("--retry-uncertain", is_flag=True,
              help="Resend deliveries a crash left uncertain (they may then arrive twice).")
@pass_env
def send(env: Env, campaign: str, dry_run: bool, yes: bool, limit: int | None, retry_uncertain: bool) -> None:
    """Plan, confirm, send with a progress bar, and print a summary.

    Rerunning resumes: nobody is mailed twice for one campaign.

    \b
    Example:  mailer send campaigns/cloud-audit.toml --yes
    """
    ws = env.workspace()
    prepared = prepare_campaign(ws, Path(campaign))
    transport = open_transport(ws.config, env.environ)
    lease = None
    if not dry_run:  # one process at a time sends a campaign (and recovers its crashed rows)
        c = prepared.campaign
        ws.store.record_campaign(c.id, c.kind, c.locale, c.list_name)
        lease = take_campaign(ws.store, c.id)
    run_id = None if dry_run else ws.store.start_run(prepared.campaign.id)
    workers = env.environ.get("MAILER_RENDER_WORKERS")
    render_workers = int(workers) if workers and workers.isdigit() else None
    if not dry_run and render_workers != 0 and (os.cpu_count() or 1) > 1 \
            and expected_recipients(ws, prepared.campaign) >= LARGE_SEND:
        start_render_workers_early()
    results: Counter[str] = Counter()
    counts: dict[str, int] = {}
    outcome = "failed"
    try:
        with _Steps() as steps:
            plan = plan_campaign(ws, prepared, persist=not dry_run, retry_uncertain=retry_uncertain,
                                 transport=transport, run_id=run_id, keep_recipients=False, progress=steps)
        counts = dict(plan.counts)
        if plan.imported is not None:
            r = plan.imported.result
            click.echo(f"Imported {plan.imported.path.name}: {r.inserted} new, {r.updated} updated.")
            if plan.imported.erased_skipped:
                click.echo(f"Skipped {plan.imported.erased_skipped} rows of people whose data was erased.")
        if plan.confirmed_delivered:
            click.echo(f"{plan.confirmed_delivered} messages interrupted by a crash were found delivered.")
        _print_counts(plan)
        to_send = plan.allowed_count if limit is None else min(limit, plan.allowed_count)
        if plan.first_allowed is not None:  # a misspelt variable stops here, before anything is sent
            prepared.renderer.render(plan.first_allowed)
        if dry_run:
            click.echo(f"Dry run: {to_send} messages would be sent; nothing was recorded or sent.")
            return
        if to_send == 0:
            outcome = "nothing to send"
            click.echo("Nothing to send.")
            return
        target = ws.config.outbox if ws.config.transport.type == "maildir" else \
            f"{ws.config.smtp.host}:{ws.config.smtp.port}"
        if not yes:
            if not sys.stdin.isatty() and not os.environ.get("MAILER_ASSUME_TTY"):
                raise InputError("not asking for confirmation without a terminal",
                                 hint="add --yes to send without confirmation")
            click.confirm(f"Send {to_send} messages via {ws.config.transport.type} ({target})?", abort=True)

        outcome = "interrupted"
        # A bar only for sends that take more than a moment.
        started = time.monotonic()
        # Redrawn every 0.2% or so: redrawing for each of thousands of messages a second cost CPU.
        progress = click.progressbar(length=to_send, label="Sending", file=sys.stderr, show_pos=True,
                                     update_min_steps=max(1, to_send // 500),
                                     item_show_func=lambda _: _progress_label(results, started)) \
            if to_send >= 50 else contextlib.nullcontext(None)
        with progress as bar:
            def on_result(state: str) -> None:
                results[state] += 1
                if bar is not None:
                    bar.update(1, state)

            with asyncio.Runner(loop_factory=_event_loop_factory(env.environ)) as runner:
                report = runner.run(_deliver(ws, prepared, plan, transport, limit, on_result, render_workers, lease))
        outcome = "aborted" if report.delivered.aborted else "stopped" if report.delivered.stopped else "finished"
    finally:
        if run_id is not None:
            ws.store.finish_run(run_id, outcome, counts | {f"delivery:{k}": v for k, v in results.items()})
        if lease is not None:
            ws.store.release_lease(prepared.campaign.id, lease)
    _print_summary(report, ws, plan.campaign.id)
    for note in getattr(transport, "notes", list)():
        click.echo(f"Note: {note}")
    if report.delivered.aborted:
        raise TransportError(f"sending stopped: {report.delivered.aborted}",
                             hint="nothing is lost: check the server, then rerun the same command to resume")
    if report.delivered.stopped:
        click.echo("Stopped. Rerun the same command to resume.")
    if report.delivered.counts.get("failed"):
        raise click.exceptions.Exit(EXIT_FAILED_DELIVERIES)


def _event_loop_factory(environ: Mapping[str, str]) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed: driving the SMTP connections is the sending
    process's main work, and uvloop does it with less CPU. MAILER_EVENT_LOOP=asyncio keeps
    the standard loop."""
    if environ.get("MAILER_EVENT_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class _Steps:
    """Progress bars for the long steps before sending (CSV import, gate, rendering checks), one
    after the other on stderr: in a terminal, and for steps of 5,000 items or more (100,000
    contacts take about 6 s to import and decide, 13 s to render and check)."""

    SHOWN_FROM = 5000

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._bar: Any = None

    def __call__(self, label: str, total: int | None) -> Callable[[int], None]:
        self._close()
        if not self.enabled or total is None or total < self.SHOWN_FROM:
            return lambda n: None
        self._bar = click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True,
                                      update_min_steps=max(1, total // 500))
        self._bar.__enter__()
        return self._bar.update

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __enter__(self) -> _Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()


def _progress_label(results: Counter[str], started: float) -> str:
    """sent=… failed=… deferred=… and the rate so far, after the bar."""
    done = sum(results.values())
    rate = done / max(time.monotonic() - started, 1e-6)
    return " ".join([*(f"{k}={v}" for k, v in sorted(results.items())), f"{rate:,.0f} msg/s"])


async def _deliver(ws: Workspace, prepared: Any, plan: Plan, transport: Any, limit: int | None,
                   on_result: Callable[[str], None], render_workers: int | None, lease: str | None) -> Any:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        click.echo("\nStopping after the messages in flight… (Ctrl-C again to force)", err=True)
        stop.set()

    try:
        loop.add_signal_handler(signal.SIGINT, interrupted)
        loop.add_signal_handler(signal.SIGTERM, interrupted)
    except (NotImplementedError, RuntimeError):
        pass
    await transport.open()
    try:
        async with keep_campaign(ws.store, prepared.campaign.id, lease or this_process()):
            return await deliver_campaign(ws, prepared, plan, transport, limit=limit, on_result=on_result,
                                          stop=stop, render_workers=render_workers)
    finally:
        await transport.close()


# How providers say "slower": SES "454 Throttling failure: Maximum sending rate exceeded", Microsoft
# "4.7.0 ... throttled", others "rate limit", "too many messages", "slow down".
_THROTTLED = re.compile(r"throttl|rate (limit|exceeded)|sending rate|too many (messages|mails|emails)|slow down",
                        re.IGNORECASE)


def _print_summary(report: Any, ws: Workspace, campaign_id: str) -> None:
    counts = report.delivered.counts
    click.echo("Summary of this run:")
    for state in ("sent", "deferred", "failed", "uncertain", "suppressed"):
        if counts.get(state):
            click.echo(f"  {state:<12} {counts[state]:>7}")
    if report.footer_blocked:
        click.echo(f"  {'footer-missing':<12} {report.footer_blocked:>7}")
    if not any(counts.values()) and not report.footer_blocked:
        click.echo("  nothing delivered")
    for address, reason in report.delivered.failures[:20]:
        click.echo(f"  failed: {address}: {reason}")
    if counts.get("deferred"):
        click.echo("Deferred messages are retried by the next run of the same command. The server's answers:")
        for answer, times in report.delivered.deferrals.most_common(3):
            click.echo(f"  {times:>7} x {answer}")
        if any(_THROTTLED.search(answer) for answer in report.delivered.deferrals):
            click.echo("Note: the server limits how fast you send; set [smtp] rate_per_second (or the campaign's) "
                       "to its rate, and rerun.")
    click.echo(f"See: mailer status {campaign_id}")


# --------------------------------------------------------------------------- status

@cli.command()
@click.argument("campaign")
@click.option("--show", type=click.Choice(["blocked", "failed", "uncertain", "deferred", "sent", "planned"]),
              default=None, help="Also list the addresses in this state.")
@pass_env
def status(env: Env, campaign: str, show: str | None) -> None:
    """Show a campaign's send log: sent, failed, uncertain, blocked per rule.

    CAMPAIGN is the campaign file or its id.

    \b
    Example:  mailer status campaigns/cloud-audit.toml --show blocked
    """
    ws = env.workspace()
    campaign_id = load_campaign(Path(campaign)).id if Path(campaign).is_file() else campaign
    if not ws.store.campaign_known(campaign_id):
        raise NotFound(f"no send log for campaign {campaign_id!r}",
                       hint="run `mailer send CAMPAIGN` first (or check the id)")
    states, rules = ws.store.status_counts(campaign_id)
    allowed = sum(v for k, v in states.items() if k != "blocked")
    click.echo(f"Campaign {campaign_id}")
    click.echo(f"  {'allowed':<20} {allowed:>7}")
    for state in ("sent", "planned", "sending", "deferred", "failed", "uncertain"):
        if states.get(state):
            click.echo(f"    {state:<18} {states[state]:>7}")
    bounced = ws.store.bounces_recorded(campaign_id)
    if bounced:
        click.echo(f"    {'hard bounces':<18} {bounced:>7}  (now on the suppression list)")
    click.echo(f"  {'blocked':<20} {states.get('blocked', 0):>7}")
    for rule in RULE_IDS:
        if rules.get(rule):
            click.echo(f"    {rule:<18} {rules[rule]:>7}")
    run = ws.store.last_run(campaign_id)
    if run is not None:
        click.echo(f"Last run: {run.started_at:%Y-%m-%d %H:%M} UTC, {run.outcome}")
        if run.counts.get("duplicate"):
            click.echo(f"  {run.counts['duplicate']} repeated rows in the CSV were skipped as duplicates")
    if show:
        rows = ws.store.log_rows(campaign_id, [show])
        for row in rows:
            extra = f"{row.rule:<20} {row.detail}" if show == "blocked" else \
                f"{row.smtp_code or '':<4} {row.smtp_text or row.detail}"
            click.echo(f"  {row.address_key:<40} {extra}")


# --------------------------------------------------------------------------- suppression list

@cli.group()
def suppress() -> None:
    """Manage the suppression list (addresses are kept only as keyed hashes)."""


def _suppression_target(ws: Workspace, value: str) -> tuple[str, str]:
    value = value.strip()
    if value.startswith("@"):
        domain = value[1:].lower()
        if not domain or "." not in domain or any(c.isspace() for c in domain):
            raise InputError(f"{value!r} is not a domain", hint="write a domain as @example.com")
        return "domain", domain
    address = normalise(value)
    if "@" not in address.key:
        raise InputError(f"{value!r} is neither an address nor @domain")
    return "address", ws.hash_address(address.key)


@suppress.command("add")
@click.argument("values", nargs=-1, required=True)
@click.option("--reason", default="", help="Why (kept with the entry).")
@pass_env
def suppress_add(env: Env, values: tuple[str, ...], reason: str) -> None:
    """Add addresses or @domains to the suppression list.

    \b
    Example:  mailer suppress add jean@example.com @competitor.example --reason "asked by phone"
    """
    ws = env.workspace()
    targets = [_suppression_target(ws, v) for v in values]
    added = ws.store.suppress_many(targets, origin="manual", reason=reason)
    click.echo(f"{added} added, {len(set(targets)) - added} already on the list.")


@suppress.command("remove")
@click.argument("value")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_env
def suppress_remove(env: Env, value: str, yes: bool) -> None:
    """Remove an address or @domain from the suppression list.

    Only do this when the person asked to be mailed again.

    \b
    Example:  mailer suppress remove jean@example.com
    """
    ws = env.workspace()
    scope, target = _suppression_target(ws, value)
    if not yes and sys.stdin.isatty():
        click.confirm(f"Remove {value} from the suppression list (they will be mailed again)?", abort=True)
    if ws.store.unsuppress(scope, target):
        click.echo(f"Removed {value}.")
    else:
        raise NotFound(f"{value} is not on the suppression list")


@suppress.command("list")
@pass_env
def suppress_list(env: Env) -> None:
    """List the suppression list: scope, hash or domain, origin, reason, date.

    \b
    Example:  mailer suppress list
    """
    entries = env.workspace().store.suppressions()
    for e in entries:
        shown = e.value if e.scope == "domain" else e.value[:16] + "…"
        click.echo(f"{e.created_at:%Y-%m-%d}  {e.scope:<7} {shown:<24} {e.origin:<9} {e.campaign_id} {e.reason}")
    click.echo(f"{len(entries)} entries.")


@suppress.command("import")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--reason", default="", help="Why (kept with each entry).")
@pass_env
def suppress_import(env: Env, file: str, reason: str) -> None:
    """Import addresses and @domains: one per line, or a CSV with an email column.

    \b
    Example:  mailer suppress import old-unsubscribes.csv --reason "previous tool"
    """
    ws = env.workspace()
    from .suppression import read_suppression_file
    values = read_suppression_file(Path(file))
    targets = [_suppression_target(ws, v) for v in values]
    added = ws.store.suppress_many(targets, origin="import", reason=reason)
    click.echo(f"{file}: {len(targets)} entries read, {added} added, {len(set(targets)) - added} already on the list.")


@suppress.command("mailto")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@pass_env
def suppress_mailto(env: Env, paths: tuple[str, ...]) -> None:
    """Record the opt-outs mailed to the List-Unsubscribe mailto address.

    Give the messages received at [unsubscribe] mailto (.eml files, or folders
    such as a maildir): each one whose Subject carries a valid
    `unsubscribe-TOKEN` suppresses that address (origin `mailto`). Run it from
    cron on the mailbox; messages without a valid token are listed, not guessed.

    \b
    Example:  mailer suppress mailto ~/Maildir/unsubscribe/new
    """
    from .suppression import message_files, token_from_message
    from .tokens import InvalidToken, verify
    ws = env.workspace()
    added = known = 0
    rejected: list[str] = []
    for path in message_files([Path(p) for p in paths]):
        raw = token_from_message(path.read_bytes())
        try:
            if raw is None:
                raise InvalidToken("no unsubscribe-TOKEN in the subject")
            token = verify(ws.keys, raw)
        except InvalidToken as exc:
            rejected.append(f"{path}: {exc}")
            continue
        if ws.store.suppress(scope="address", value=token.address_hash, origin="mailto",
                             campaign_id=token.campaign_id):
            added += 1
        else:
            known += 1
    click.echo(f"{added} added, {known} already on the list, {len(rejected)} messages without a valid token.")
    for line in rejected[:50]:
        click.echo(f"  {line}")


@suppress.command("bounces")
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
    are counted, not suppressed. Run it from cron on the mailbox.

    \b
    Example:  mailer suppress bounces ~/Maildir/bounces/new
    """
    from .suppression import bounces_in, hard_bounce_status, message_files
    ws = env.workspace()
    reports: list[tuple[Path, list]] = []
    not_reports: list[str] = []
    for path in message_files([Path(p) for p in paths]):
        found = bounces_in(path.read_bytes())
        if found is None:
            not_reports.append(f"{path}: not a delivery status notification")
        else:
            reports.append((path, found))
    sent = ws.store.sent_messages(b.message_id for _, found in reports for b in found)
    added = known = passing = 0
    unmatched: list[str] = []
    for path, found in reports:
        for bounce in found:
            if bounce.action != "failed" or not hard_bounce_status(bounce.status):
                passing += 1
                continue
            key = normalise(bounce.recipient).key
            digest = ws.hash_address(key)
            campaign, logged_key = sent.get(bounce.message_id, ("", ""))
            if logged_key not in (key, digest):
                unmatched.append(f"{path}: {bounce.recipient} ({bounce.status}) is not about a message mailer "
                                 "sent to that address")
                continue
            reason = f"{bounce.status} {bounce.diagnostic}".strip()[:200]
            if ws.store.suppress(scope="address", value=digest, origin="bounce", reason=reason, campaign_id=campaign):
                added += 1
            else:
                known += 1
    click.echo(f"{added} hard bounces added, {known} already on the list, {passing} not permanent "
               f"(delays, full mailboxes, refused messages), {len(unmatched)} not matched to a message mailer sent, "
               f"{len(not_reports)} files that are not bounce reports.")
    for line in (unmatched + not_reports)[:50]:
        click.echo(f"  {line}")


@suppress.command("export")
@pass_env
def suppress_export(env: Env) -> None:
    """Print the suppression list as CSV (hashes and domains only, never addresses).

    \b
    Example:  mailer suppress export > suppressions.csv
    """
    entries = env.workspace().store.suppressions()
    click.echo("scope,value,origin,created_at")
    for e in entries:
        click.echo(f"{e.scope},{e.value},{e.origin},{e.created_at:%Y-%m-%dT%H:%M:%SZ}")


# --------------------------------------------------------------------------- people

def _who_runs_this() -> str:
    import getpass
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


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
    from .contacts import parse_date
    from .privacy import touch_contact
    try:
        day = parse_date(at)
    except ValueError:
        raise InputError(f"--at {at!r} is not a date", hint="use YYYY-MM-DD") from None
    latest = touch_contact(env.workspace(), email, day, what, utcnow().date())
    click.echo(f"Recorded a {what} on {day.isoformat()}; last contact from {email} is now {latest.isoformat()}.")


@cli.command()
@click.argument("email")
@click.option("--locale", type=click.Choice(["fr", "en"]), default="fr", show_default=True,
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

    from .privacy import as_json, explain_person, render_explanation
    ws = env.workspace()
    explanation = explain_person(ws, email)
    if fmt == "json":
        click.echo(json.dumps(as_json(explanation), indent=2, ensure_ascii=False))
    else:
        click.echo(render_explanation(explanation, locale, fmt, ws.config.compliance.retention_years), nl=False)


@cli.command()
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_env
def forget(env: Env, email: str, yes: bool) -> None:
    """Erase a person's data; keep only a keyed hash so they are never mailed again.

    Deletes the contact, their consent records, attributes and interactions,
    replaces the address in the send log by its keyed hash, adds an `erasure`
    entry to the suppression list and records the erasure (date, who ran it).

    \b
    Example:  mailer forget jeanne@client.example --yes
    """
    from .privacy import forget_person
    ws = env.workspace()
    if not yes:
        if not sys.stdin.isatty() and not os.environ.get("MAILER_ASSUME_TTY"):
            raise InputError("not asking for confirmation without a terminal", hint="add --yes")
        click.confirm(f"Erase everything we hold about {email}?", abort=True)
    result = forget_person(ws, email, by=_who_runs_this())
    if result.had_contact or result.log_rows:
        click.echo(f"Erased {email}: contact {'deleted' if result.had_contact else 'not found'}, "
                   f"{result.log_rows} send-log rows now keyed by hash only.")
    else:
        click.echo(f"We held no data about {email}.")
    click.echo("The address's keyed hash is on the suppression list: it will never be mailed or imported again."
               if result.suppression_added else "The address was already on the suppression list.")
    if result.outbox_files:
        click.echo(f"Removed {result.outbox_files} copies of messages sent to them from {ws.config.outbox}.")


@cli.command()
@click.option("--apply", "apply_", is_flag=True, help="Erase the expired contacts (as `forget` does).")
@click.option("--days", default=60, show_default=True, type=click.IntRange(0, 3650),
              help="Also list contacts expiring within this many days.")
@pass_env
def retention(env: Env, apply_: bool, days: int) -> None:
    """List contacts past their retention period (role addresses excepted); --apply erases them.

    The clock runs from the latest of collection, last contact *from* the person,
    and consent. Suppression entries are kept. Contacts expiring soon are listed
    so that a reconfirmation campaign can be planned.

    \b
    Example:  mailer retention            # then: mailer retention --apply
    """
    from .privacy import apply_retention, retention_report
    ws = env.workspace()
    today = utcnow().date()
    expired, soon = retention_report(ws, today, days)
    years = ws.config.compliance.retention_years
    click.echo(f"Retention: {years} years. Expired today ({today.isoformat()}): {len(expired)}")
    for item in expired:
        click.echo(f"  {item.email:<40} {item.field} {item.reference.isoformat()} -> expired {item.expires_on.isoformat()}")
    click.echo(f"Expiring within {days} days: {len(soon)}")
    for item in soon:
        click.echo(f"  {item.email:<40} {item.field} {item.reference.isoformat()} -> expires {item.expires_on.isoformat()}")
    if apply_ and expired:
        erased, files = apply_retention(ws, expired, by=_who_runs_this())
        click.echo(f"Erased {erased} contacts past retention (suppression entries kept).")
        if files:
            click.echo(f"Removed {files} copies of messages sent to them from {ws.config.outbox}.")
    elif expired:
        click.echo("Run with --apply to erase them.")


# --------------------------------------------------------------------------- serve

@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@pass_env
def serve(env: Env, host: str, port: int) -> None:
    """Run the one-click unsubscribe endpoint ([unsubscribe] base_url must reach it).

    POST /u/TOKEN unsubscribes at once (RFC 8058 one-click, or the page's
    button); GET /u/TOKEN shows a page with one button; GET /healthz answers ok.
    Put it behind a TLS proxy in production, or run the ASGI app
    `mailer.server:app_from_environment` under any ASGI server.

    \b
    Example:  mailer serve --host 0.0.0.0 --port 8080
    """
    import logging

    import uvicorn

    from .server import create_app
    app = create_app(env.workspace())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    click.echo(f"Unsubscribe endpoint on http://{host}:{port}/ (public URL: {env.workspace().config.unsubscribe.base_url})")
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning", server_header=False)


def main() -> None:
    cli(prog_name="mailer")
