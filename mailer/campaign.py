"""What you do with a campaign: plan it, preview it, send it. The CLI's commands are these calls.

    with mailer.open_workspace("config.toml") as ws:
        summary = mailer.send_campaign(ws, "campaigns/cloud-audit.toml")
    print(summary.sent, summary.blocked)

Nothing here prints, prompts or exits: progress, confirmation and interruption are
callbacks the caller passes in.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html as html_lib
import os
import re
import signal
import socket
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from . import owner_only
from .addresses import normalise
from .config import Campaign, load_campaign
from .contacts import ContactData
from .delivery import DeliveryReport
from .errors import ComplianceRefusal, InputError, NotFound
from .gate import RULE_IDS
from .importer import ImportOutcome, Progress, no_progress
from .lease import being_sent, keep_campaign, take_campaign
from .owner_only import too_open
from .planning import Plan, PreparedCampaign, decide_campaign, expected_recipients, prepare_campaign
from .render import RenderedMessage
from .senders import Heartbeat, Recovered, Sender, is_alive, live_plan, register
from .sending import LARGE_SEND, SendReport, deliver_campaign, start_render_workers_early
from .states import SendState
from .store import Run, SendLog, utcnow
from .store.reconnect import lost_connection
from .throttle import ThrottleReport
from .transport import Transport
from .transport.base import Delivery, Envelope
from .workspace import Workspace

#: Called with each delivery outcome as it is known ("sent", "failed", "deferred",
#: "uncertain", "blocked", "suppressed", "taken").
OnResult = Callable[[str], None]


def plan_campaign(ws: Workspace, campaign_path: str | os.PathLike[str], *, check_footer: bool = True,
                  progress: Progress | None = None) -> Plan:
    """The gate's decision for every candidate, with each recipient (`Plan.recipients`).

    Records no decision and sends nothing. With check_footer, every allowed message is
    rendered so that template errors and `footer-missing` are known now. The campaign's
    CSV, when it names one, is imported first (as every run does).
    Raises ComplianceRefusal (exit 3) when the campaign as a whole may not go.
    """
    prepared = prepare_campaign(ws, Path(campaign_path))
    return decide_campaign(ws, prepared, render_check=check_footer, persist=False,
                           progress=progress or no_progress)


@dataclass
class PreviewEntry:
    """One candidate of a preview: the gate's decision, and the files of its message if rendered."""

    key: str
    decision: str          # "allowed", "already-sent" or the rule that blocks it
    detail: str = ""
    subject: str = ""
    sender: str = ""
    to: str = ""
    stem: str | None = None  # NNNNN-address: the .eml and .html files' name, when rendered

    @property
    def verdict(self) -> str:
        if self.decision == "allowed":
            return "would be sent"
        if self.decision == "already-sent":
            return "already sent"
        return f"would not be sent: {self.decision}, {self.detail}" if self.detail else \
            f"would not be sent: {self.decision}"


@dataclass
class PreviewResult:
    plan: Plan
    folder: Path
    written: list[Path] = field(default_factory=list)  # the .eml files, one per message
    first: bytes | None = None                          # the first message's bytes, for a reviewer
    #: warnings for the person running it (the folder is open to other users)
    notes: list[str] = field(default_factory=list)
    #: every candidate, in the plan's order (index.html lists them)
    entries: list[PreviewEntry] = field(default_factory=list)
    #: files of an earlier preview removed from the folder
    replaced: int = 0

    @property
    def already_sent(self) -> int:
        return self.plan.counts.get("already-sent", 0)


#: the files a preview writes, and only those: a new preview removes the previous one's
_PREVIEW_FILE = re.compile(r"^\d{5}-[^/]*\.(?:eml|html)$")


def preview_campaign(ws: Workspace, campaign_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                     to: str | None = None, limit: int | None = None, include_sent: bool = False,
                     progress: Progress | None = None) -> PreviewResult:
    """Write the messages that would go out, footer and headers included, to `out_dir`: one .eml
    and one .html page per message (the page shows Subject, From and To above the message), and
    index.html listing every candidate with the gate's decision. The files of an earlier preview
    in that folder are replaced.

    Without `to`: the messages that would go out (at most `limit`), and with include_sent those
    already sent too. With `to`: that person's message whatever their state, marked with the
    decision when it would not be sent. Sends nothing and records no decision. Raises NotFound
    when `to` is not a candidate."""
    prepared = prepare_campaign(ws, Path(campaign_path))
    renderer = prepared.renderer
    wanted = normalise(to).key if to else None
    folder = Path(out_dir)
    owner_only.make_folder(folder)  # the previews hold personal data: the owner's alone
    # The one write of a preview: where its copies are, for `forget` to find them.
    ws.store.settings.record_preview_folder(str(folder.resolve()), socket.gethostname())
    result = PreviewResult(Plan(prepared.campaign, Counter()), folder, notes=list(filter(None, [too_open(folder)])))
    result.replaced = _clear_preview(folder)
    sender = f"{renderer.from_name} <{renderer.from_address}>" if renderer.from_name else renderer.from_address

    def write(contact: ContactData, rendered: RenderedMessage, entry: PreviewEntry) -> None:
        data = renderer.build_mime(rendered, renderer.message_id())
        entry.stem = f"{len(result.written) + 1:05d}-{preview_name(contact.address.key)}"
        entry.subject, entry.sender = rendered.subject, sender
        entry.to = f"{rendered.to_name} <{rendered.to_address}>" if rendered.to_name else rendered.to_address
        owner_only.write_file(folder / f"{entry.stem}.eml", data)
        if rendered.html is not None:
            owner_only.write_file(folder / f"{entry.stem}.html", _message_page(entry, rendered.html).encode("utf-8"))
        result.written.append(folder / f"{entry.stem}.eml")
        result.first = result.first or data

    def wanted_here(contact: ContactData) -> bool:
        return (wanted is None or contact.address.key == wanted) and (limit is None or len(result.written) < limit)

    def allowed(contact: ContactData, rendered: RenderedMessage) -> None:
        """Called by the plan with each message it rendered and found compliant: written once."""
        entry = PreviewEntry(contact.address.key, "allowed")
        result.entries.append(entry)
        if wanted_here(contact):
            write(contact, rendered, entry)

    def blocked(contact: ContactData, rule: str | None, detail: str) -> None:
        if rule is None:
            return  # allowed: written when rendered
        entry = PreviewEntry(contact.address.key, rule, detail)
        result.entries.append(entry)
        asked = wanted is not None or (include_sent and rule == "already-sent")
        if asked and wanted_here(contact):
            write(contact, renderer.render(contact), entry)

    result.plan = decide_campaign(ws, prepared, render_check=True, persist=False, on_rendered=allowed,
                                  on_decided=blocked, progress=progress or no_progress)
    if wanted is not None:
        result.plan.recipients = [r for r in result.plan.recipients or [] if r.key == wanted]
        if not result.plan.recipients:
            raise NotFound(f"{to} is not among the recipients of {result.plan.campaign.id}",
                           hint=f"is it in the list {result.plan.campaign.list_name!r}?")
    owner_only.write_file(folder / "index.html", _index_page(result).encode("utf-8"))
    return result


def _clear_preview(folder: Path) -> int:
    """Remove the files an earlier preview wrote in `folder` (and nothing else)."""
    removed = 0
    for path in folder.iterdir():
        if (path.name == "index.html" or _PREVIEW_FILE.match(path.name)) and path.is_file() \
                and not path.is_symlink():
            path.unlink()
            removed += 1
    return removed


_PAGE_STYLE = ("body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222}"
               "table{border-collapse:collapse}th,td{text-align:left;padding:4px 8px;vertical-align:top}"
               "th{color:#555;font-weight:600}tr+tr td,tr+tr th{border-top:1px solid #eee}"
               ".blocked{color:#a11}.sent{color:#555}iframe{width:100%;height:80vh;border:1px solid #ccc}")


def _message_page(entry: PreviewEntry, message_html: str) -> str:
    """A reviewer's page for one message: its headers and decision, then the HTML part exactly
    as it goes out, in a sandboxed frame (no script, no form, nothing of it reaches the page)."""
    e = html_lib.escape
    rows = "".join(f"<tr><th>{label}</th><td>{e(value)}</td></tr>" for label, value in
                   (("Subject", entry.subject), ("From", entry.sender), ("To", entry.to), ("Decision", entry.verdict)))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(entry.subject)}</title>'
            f"<style>{_PAGE_STYLE}</style></head><body>"
            f'<p><a href="index.html">All messages</a> · <a href="{e(entry.stem or "")}.eml">.eml</a></p>'
            f'<table class="headers">{rows}</table>'
            f'<iframe title="The message" sandbox="allow-popups allow-popups-to-escape-sandbox" '
            f'srcdoc="{e(message_html, quote=True)}"></iframe></body></html>\n')


def _index_page(result: PreviewResult) -> str:
    """index.html: every candidate, its decision, and links to the messages rendered."""
    e = html_lib.escape
    plan = result.plan
    rows = []
    for number, entry in enumerate(result.entries, 1):
        cls = "" if entry.decision == "allowed" else "sent" if entry.decision == "already-sent" else "blocked"
        links = (f'<a href="{e(entry.stem)}.html">message</a> · <a href="{e(entry.stem)}.eml">.eml</a>'
                 if entry.stem else "")
        rows.append(f'<tr class="{cls}"><td>{number}</td><td>{e(entry.to or entry.key)}</td>'
                    f"<td>{e(entry.verdict)}</td><td>{e(entry.subject)}</td><td>{e(entry.sender)}</td>"
                    f"<td>{links}</td></tr>")
    counts = ", ".join(f"{name} {count}" for name, count in sorted(plan.counts.items(), key=lambda kv: -kv[1]))
    title = f"Preview of {plan.campaign.id}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f"<style>{_PAGE_STYLE}</style></head><body><h1>{e(title)}</h1>"
            f"<p>{len(result.entries)} candidates: {e(counts)}. {len(result.written)} messages rendered.</p>"
            "<table><thead><tr><th>#</th><th>To</th><th>Decision</th><th>Subject</th><th>From</th><th>Files</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></body></html>\n")


@dataclass
class TestSend:
    """What `send_test` sent."""

    to: str                # the address the test went to
    contact: str           # whose message it is
    subject: str           # as sent, "[TEST] " first
    target: str            # where the transport delivered it
    delivery: Delivery
    #: the gate's decision for that contact, when it would not be sent to them
    verdict: str = ""


def send_test(ws: Workspace, campaign_path: str | os.PathLike[str], to: str, *, as_contact: str | None = None,
              progress: Progress | None = None) -> TestSend:
    """Send one contact's message (default: the first allowed one) to `to` through the configured
    transport, subject prefixed "[TEST]". Nothing is recorded: not in the send log, not as a
    contact, and its unsubscribe link and mailto record nothing when used. `to` need not be a
    contact. Raises NotFound when `as_contact` is not a candidate, InputError for a bad `to`."""
    address = normalise(to)
    if not address.valid:
        raise InputError(f"--test-to {to!r} is not an email address: {address.reason}")
    prepared = prepare_campaign(ws, Path(campaign_path))
    wanted = normalise(as_contact).key if as_contact else None
    chosen: list[tuple[ContactData, str | None, str]] = []

    sent_already: list[tuple[ContactData, str | None, str]] = []

    def pick(contact: ContactData, rule: str | None, detail: str) -> None:
        """The contact asked for, else the first allowed, else the first already sent to."""
        if not chosen and (contact.address.key == wanted if wanted else rule is None):
            chosen.append((contact, rule, detail))
        elif not wanted and rule == "already-sent" and not sent_already:
            sent_already.append((contact, None, ""))

    decide_campaign(ws, prepared, persist=False, keep_recipients=False, on_decided=pick,
                    progress=progress or no_progress)
    chosen = chosen or sent_already
    if not chosen:
        if wanted:
            raise NotFound(f"{as_contact} is not among the recipients of {prepared.campaign.id}",
                           hint=f"is it in the list {prepared.campaign.list_name!r}?")
        raise NotFound(f"no recipient of {prepared.campaign.id} may be sent this message",
                       hint="pick one with --as ADDRESS (mailer preview shows each decision)")
    contact, rule, detail = chosen[0]
    renderer = prepared.renderer
    renderer.test = True
    rendered = renderer.render(contact)
    if rendered.footer_problems:
        raise ComplianceRefusal(list(rendered.footer_problems))
    rendered = replace(rendered, subject=f"[TEST] {rendered.subject}", to_address=address.send_to, to_name="")
    data = renderer.build_mime(rendered, renderer.message_id())
    transport = ws.open_transport()
    wire = getattr(transport, "wire_format", None)
    envelope = Envelope(key=f"test.{uuid.uuid4().hex}", mail_from=ws.config.smtp.bounce_address or
                        renderer.from_address, rcpt_to=address.send_to, data=wire(data) if wire else data,
                        wire=wire is not None)

    async def deliver() -> Delivery:
        await transport.open()
        try:
            return await transport.deliver(envelope)
        finally:
            await transport.close()

    delivery = asyncio.run(deliver())
    verdict = "" if rule is None else f"{rule}, {detail}" if detail else rule
    return TestSend(address.send_to, contact.address.key, rendered.subject, transport.target, delivery, verdict)


def preview_name(key: str) -> str:
    """The part of a preview file's name that comes from the address (`forget` looks for it)."""
    return "".join(ch if ch.isalnum() or ch in "@._-" else "_" for ch in key)[:80]


@dataclass
class RunSummary:
    """What one `send_campaign` did."""

    campaign_id: str
    #: the gate's counts: "allowed" and one per rule id
    counts: Mapping[str, int]
    #: deliveries of this run
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    uncertain: int = 0
    #: rule id -> candidates blocked by it in this run (gate, footer check, opt-outs during the run)
    blocked: dict[str, int] = field(default_factory=dict)
    #: messages this run would send (allowed, within the limit)
    to_send: int = 0
    dry_run: bool = False
    #: the user declined at the confirmation: nothing was sent
    declined: bool = False
    #: the run was stopped (interrupted): rerunning resumes
    stopped: bool = False
    #: why the run stopped by itself (the server went away); rerunning resumes
    aborted: str = ""
    imported: ImportOutcome | None = None
    #: this process as a sender of the campaign ("host:pid"); "" for a dry run
    sender: str = ""
    #: what it did with the rows of other senders of the campaign that died meanwhile
    recovered: Recovered | None = None
    #: rows a crash had left in `sending`, found delivered / marked uncertain
    confirmed_delivered: int = 0
    uncertain_recovered: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)   # (address, server's answer)
    deferrals: Counter[str] = field(default_factory=Counter)         # server's answer -> times
    #: what the transport suggests changing (one sentence each)
    notes: list[str] = field(default_factory=list)
    #: the relay throttled: how often, the rate and connections the run settled at, whether it
    #: stopped trying (`gave_up`)
    throttling: ThrottleReport | None = None
    #: what was counted per outcome (includes "suppressed" and "taken")
    outcomes: Counter[str] = field(default_factory=Counter)
    footer_blocked: int = 0
    #: the gate's decisions of this run
    plan: Plan | None = None


#: Called with the plan and how many messages would be sent, before anything is: False stops there.
Confirm = Callable[[Plan, int], bool]


def fingerprint(campaign_path: Path, campaign: Campaign) -> str:
    """The version of what a campaign says: a hash of its file and its templates (not of its CSV,
    whose rows are expected to change between runs)."""
    digest = hashlib.sha256()
    for path in (campaign_path, campaign.html_template, campaign.text_template):
        digest.update(b"\0" if path is None else path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _check_unchanged(ws: Workspace, campaign_path: Path, campaign: Campaign, allow_changes: bool) -> str:
    """This run's fingerprint; InputError (exit 2) when earlier runs sent another version of the
    campaign's file or templates, unless allow_changes."""
    version = fingerprint(campaign_path, campaign)
    sent = {v: n for v, n in ws.store.campaigns.sent_versions(campaign.id).items() if v}
    if sent and version not in sent and not allow_changes:
        earlier = ", ".join(f"{v} ({count} sent from {started:%Y-%m-%d %H:%M})" for v, (count, started) in sent.items())
        raise InputError(f"{campaign_path}: the campaign file or its templates changed since earlier runs of "
                         f"{campaign.id} sent messages (version {version} now; earlier: {earlier}): the rest of the "
                         "recipients would get other text than the first",
                         hint="put the files back as they were, or rerun with --allow-changes to send this version "
                              "to the rest (`mailer status` shows which version each recipient got)")
    return version


def send_campaign(ws: Workspace, campaign_path: str | os.PathLike[str], *, dry_run: bool = False,
                  retry_uncertain: bool = False, limit: int | None = None, confirm: Confirm | None = None,
                  progress: Progress | None = None, on_result: OnResult | None = None,
                  on_stopping: Callable[[], None] | None = None, render_workers: int | None = None,
                  allow_changes: bool = False, ask_before_writing: bool = False) -> RunSummary:
    """Plan, then deliver every allowed recipient (at most `limit`), recording each decision and
    each delivery. Rerunning resumes: nobody is mailed twice for one campaign.

    A campaign whose file or templates changed since earlier runs sent messages is refused
    (InputError) unless allow_changes. dry_run records and sends nothing. `confirm` is asked
    before anything is sent; with ask_before_writing it is first asked with a plan made without
    writing anything (the CSV not imported yet: answer False and nothing changed), then called
    again with the run's plan, and the run sends no more than the number first agreed to. SIGINT and
    SIGTERM (when called from the main thread) stop after the messages in flight (`on_stopping`
    is told); a second one interrupts. Raises TemplateError, ComplianceRefusal, TransportError
    (server unreachable, campaign being sent by another process).
    """
    progress = progress or no_progress
    prepared = prepare_campaign(ws, Path(campaign_path))
    campaign = prepared.campaign
    version = _check_unchanged(ws, Path(campaign_path), campaign, allow_changes)
    transport = ws.open_transport()
    lease = None
    sender: Sender | None = None
    heartbeat: Heartbeat | None = None
    if confirm is not None and ask_before_writing and not dry_run:
        # Ask before anything is written (the CSV's import included): the question shows a plan
        # made without writing, and the run sends no more than the number agreed to.
        asked = decide_campaign(ws, prepared, persist=False, retry_uncertain=retry_uncertain,
                                keep_recipients=False, progress=progress)
        agreed = asked.allowed_count if limit is None else min(limit, asked.allowed_count)
        if agreed:
            if asked.first_allowed is not None:
                first = prepared.renderer.render(asked.first_allowed)
                if first.footer_problems:
                    raise ComplianceRefusal([*first.footer_problems][:20] + ["nothing was sent"])
            if not confirm(asked, agreed):
                return RunSummary(campaign.id, asked.counts, to_send=agreed, declined=True, plan=asked,
                                  blocked={rule: asked.counts[rule] for rule in RULE_IDS if asked.counts.get(rule)})
            limit = agreed
    if render_workers is None:
        workers = ws.environ.get("MAILER_RENDER_WORKERS")
        render_workers = int(workers) if workers and workers.isdigit() else None
    results: Counter[str] = Counter()
    counts: dict[str, int] = {}
    outcome = "failed"
    failure: BaseException | None = None

    def count(state: str) -> None:
        results[state] += 1
        if on_result is not None:
            on_result(state)

    try:
        if not dry_run:
            ws.store.campaigns.record(campaign.id, campaign.kind, campaign.locale, campaign.list_name)
            if ws.store.dialect != "postgresql":  # SQLite: one process at a time sends a campaign
                lease = take_campaign(ws.store, campaign.id)
            sender = register(ws.store, campaign.id, version)
            if lease is None:  # PostgreSQL: the others tell a live sender from a dead one by its heartbeat
                heartbeat = Heartbeat(ws.store, sender.run_id).start()
        if not dry_run and render_workers != 0 and (os.cpu_count() or 1) > 1 \
                and expected_recipients(ws, campaign) >= LARGE_SEND:
            start_render_workers_early()
        plan = _plan_or_join(ws, prepared, sender, transport, version, retry_uncertain=retry_uncertain,
                             several=lease is None, progress=progress)
        counts = dict(plan.counts)
        to_send = plan.allowed_count if limit is None else min(limit, plan.allowed_count)
        summary = RunSummary(campaign.id, plan.counts, to_send=to_send, dry_run=dry_run, imported=plan.imported,
                             confirmed_delivered=plan.confirmed_delivered,
                             uncertain_recovered=plan.uncertain_recovered,
                             blocked={rule: plan.counts[rule] for rule in RULE_IDS if plan.counts.get(rule)},
                             plan=plan, sender=sender.name if sender is not None else "",
                             recovered=sender.recovered if sender is not None else None)
        if dry_run:
            return summary
        if to_send == 0:
            outcome = "nothing to send"
            return summary
        if confirm is not None and not confirm(plan, to_send):
            outcome = "declined"
            summary.declined = True
            return summary
        outcome = "interrupted"
        with asyncio.Runner(loop_factory=_event_loop_factory(ws.environ)) as runner:
            report = runner.run(_deliver(ws, prepared, plan, transport, limit, count, render_workers, sender,
                                         lease, on_stopping))
        throttling = report.delivered.throttling
        outcome = "aborted" if report.delivered.aborted else "stopped" if report.delivered.stopped else \
            "stopped: the relay throttled" if throttling is not None and throttling.gave_up else "finished"
    except BaseException as exc:
        failure = exc
        raise
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        if sender is not None:
            sender.finished()
        _end_run(ws, campaign.id, sender, lease, outcome,
                 counts | {f"delivery:{k}": v for k, v in results.items()}, failure)
    _summarise(summary, report.delivered, report.footer_blocked)
    summary.notes = transport.notes()
    note = summary.throttling.note() if summary.throttling is not None else None
    if note:
        summary.notes.append(note)
    return summary


def _plan_or_join(ws: Workspace, prepared: PreparedCampaign, sender: Sender | None, transport: Transport,
                  version: str, *, retry_uncertain: bool, several: bool, progress: Progress) -> Plan:
    """This run's plan: made now (recording every decision, unless `sender` is None: a dry run), or,
    when `several` senders may send the campaign (PostgreSQL) and live ones are sending it, theirs.
    The senders starting together plan one at a time (the planning lock): the first plans, the
    others find its plan complete and join it, so two never write conflicting decisions."""
    with ws.store.campaigns.planning(prepared.campaign.id) if sender is not None else contextlib.nullcontext():
        planner = live_plan(ws.store, prepared.campaign.id, sender.run_id) if sender is not None and several \
            else None
        if sender is not None and planner is not None:
            return _join_plan(ws, prepared, sender, planner, version, retry_uncertain)
        plan = decide_campaign(ws, prepared, persist=sender is not None, retry_uncertain=retry_uncertain,
                               transport=transport, run_id=sender.run_id if sender is not None else None,
                               keep_recipients=False, progress=progress)
        if sender is not None:  # the plan wrote (the spool's opt-outs, contacts, decisions): still in the file read?
            ws.store.verify_in_place("the run planned")
        if plan.first_allowed is not None:  # a misspelt variable or a template defect stops here
            first = prepared.renderer.render(plan.first_allowed)
            if first.footer_problems:
                raise ComplianceRefusal([*first.footer_problems][:20] + ["nothing was sent"])
        if sender is not None:
            sender.planned()
        return plan


def _join_plan(ws: Workspace, prepared: PreparedCampaign, sender: Sender, planner: Run, version: str,
               retry_uncertain: bool) -> Plan:
    """Send the plan live senders are sending (`planner`'s) instead of deciding again: a plan to
    show, whose `allowed` counts the rows nobody took yet. Raises InputError when this process
    would send other text than theirs, or decide again (--retry-uncertain) under them."""
    campaign = prepared.campaign
    who = f"{planner.sender or 'another process'} (since {planner.started_at:%Y-%m-%d %H:%M:%S} UTC)"
    if planner.fingerprint and planner.fingerprint != version:
        raise InputError(f"campaign {campaign.id} is being sent by {who} with another version of its file or "
                         f"templates ({planner.fingerprint} there, {version} here): every sender of a campaign "
                         "must send the same text",
                         hint="use the same campaign file and templates as that sender, or wait for it to finish")
    if retry_uncertain:
        raise InputError(f"--retry-uncertain decides again over campaign {campaign.id}, which {who} is sending now",
                         hint="rerun with --retry-uncertain once its senders finished (mailer status shows them)")
    sender.join(planner)
    assert sender.plan_run_id is not None
    waiting = ws.store.sendlog.unreserved(campaign.id, sender.plan_run_id)
    plan = Plan(campaign, Counter({"allowed": waiting}), run_id=sender.plan_run_id,
                from_domain=prepared.renderer.from_domain)
    plan.notes[f"joined the plan of {who}: {waiting} recipients not taken yet by its senders"] = None
    return plan


def _end_run(ws: Workspace, campaign_id: str, sender: Sender | None, lease: str | None, outcome: str,
             counts: dict[str, int], failure: BaseException | None) -> None:
    """Record how the run ended, give back the rows it reserved and did not send, and give up the
    campaign's lease. Not when the database file is gone (that would make a new file or write
    into another one), nor when the database already failed: its error says more than a second
    one would, after waiting again (the rows it reserved go to the others once it is seen dead)."""
    if ws.store.lost or (failure is not None and lost_connection(failure)):
        return
    try:
        if sender is not None:
            sender.release()
            ws.store.campaigns.finish_run(sender.run_id, outcome, counts)
        if lease is not None:
            ws.store.campaigns.release_lease(campaign_id, lease)
    except SQLAlchemyError:
        if failure is None:
            raise


def _summarise(summary: RunSummary, delivered: DeliveryReport, footer_blocked: int) -> None:
    counts = delivered.counts
    summary.outcomes = Counter(counts)
    summary.sent, summary.failed = counts.get(SendState.SENT, 0), counts.get(SendState.FAILED, 0)
    summary.deferred, summary.uncertain = counts.get(SendState.DEFERRED, 0), counts.get(SendState.UNCERTAIN, 0)
    summary.footer_blocked = footer_blocked
    blocked = Counter(summary.blocked)
    if footer_blocked:
        blocked["footer-missing"] += footer_blocked
    if counts.get("suppressed"):
        blocked["suppressed"] += counts["suppressed"]
    summary.blocked = dict(blocked)
    summary.stopped, summary.aborted = delivered.stopped, delivered.aborted
    summary.failures, summary.deferrals = list(delivered.failures), Counter(delivered.deferrals)
    summary.throttling = delivered.throttling


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
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def _deliver(ws: Workspace, prepared: PreparedCampaign, plan: Plan, transport: Transport, limit: int | None,
                   on_result: OnResult, render_workers: int | None, sender: Sender | None, lease: str | None,
                   on_stopping: Callable[[], None] | None) -> SendReport:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        if on_stopping is not None:
            on_stopping()
        stop.set()

    try:
        loop.add_signal_handler(signal.SIGINT, interrupted)
        loop.add_signal_handler(signal.SIGTERM, interrupted)
    except (NotImplementedError, RuntimeError, ValueError):
        pass  # not the main thread: the caller stops the run its own way
    await transport.open()
    try:
        async with keep_campaign(ws.store, prepared.campaign.id, lease) if lease is not None \
                else contextlib.nullcontext():
            return await deliver_campaign(ws, prepared, plan, transport, limit=limit, on_result=on_result,
                                          stop=stop, render_workers=render_workers, sender=sender)
    finally:
        await transport.close()


@dataclass
class SenderShare:
    """One sender of a campaign (a run of `mailer send`) and the rows it took."""

    run_id: int
    name: str                  # "host:pid"
    started_at: datetime
    #: "sending" while it runs ("starting" before it has a plan to send); "gone" when it stopped
    #: without saying so (killed, crashed, lost); else how it ended ("finished", "stopped", …)
    state: str
    last_seen: datetime | None
    #: send-log state -> rows it took ("sending": in flight; "planned": reserved, not sent yet). A gone
    #: sender's rows in flight are counted uncertain.
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return self.rows.get(SendState.SENT, 0)


@dataclass
class CampaignStatus:
    campaign_id: str
    states: dict[str, int]          # send-log state -> rows
    rules: dict[str, int]           # rule id -> blocked rows
    hard_bounces: int
    last_run: Run | None
    #: rows in the state asked for (`show`), in plan order
    rows: list[SendLog] = field(default_factory=list)
    #: the last run is recorded as running but no live process sends the campaign (it crashed or
    #: was killed): the rows it left in `sending` are counted (and shown) as uncertain
    dead_run: bool = False
    #: opt-outs (of any campaign) waiting in the spool to be recorded (mailer.spool)
    spooled_optouts: int = 0
    #: suppression entries this campaign's messages caused, by origin (one-click, link, mailto, bounce, …)
    suppressions: dict[str, int] = field(default_factory=dict)
    #: version of the campaign file and templates (fingerprint) -> (messages sent, first sent from)
    versions: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    #: recipients who reported its message as spam (`mailer suppress complaints`)
    complaints: int = 0
    #: the senders that took rows of the campaign, or are sending it now, oldest first
    senders: list[SenderShare] = field(default_factory=list)

    @property
    def allowed(self) -> int:
        return sum(v for k, v in self.states.items() if k != SendState.BLOCKED)


def campaign_status(ws: Workspace, campaign: str | os.PathLike[str], *, show: str | None = None) -> CampaignStatus:
    """A campaign's send log (`campaign` is its file or its id). Raises NotFound when it was never sent.

    Writes nothing: the rows a sender that is gone left in flight are counted (and shown) as
    uncertain, and stay as they are until a sender or the next send records it."""
    path = Path(campaign)
    campaign_id = load_campaign(path).id if path.is_file() else str(campaign)
    if not ws.store.campaigns.known(campaign_id):
        raise NotFound(f"no send log for campaign {campaign_id!r}",
                       hint="send the campaign first (or check the id)")
    states, rules = ws.store.sendlog.status_counts(campaign_id)
    last_run = ws.store.campaigns.last_run(campaign_id)
    by_sender = ws.store.sendlog.by_sender(campaign_id)
    runs = {run.id: run for run in ws.store.campaigns.runs(
        {i for i in by_sender if i is not None} | {r.id for r in ws.store.campaigns.running(campaign_id) if r.id})
        if run.id is not None}
    now = utcnow()
    alive = {i for i, run in runs.items() if is_alive(run, now)}
    holder, _ = ws.store.campaigns.lease(campaign_id)
    if being_sent(ws.store, campaign_id):  # SQLite: the lease's holder is alive, whatever its heartbeat says
        alive |= {i for i, run in runs.items() if run.outcome == "running" and run.sender == holder}
    anyone = bool(alive) or being_sent(ws.store, campaign_id)
    # Rows in flight of a sender that is gone (or of none, when nobody sends): they may or may not
    # have left (the next send says which).
    gone = {i for i in by_sender if (i is None and not anyone) or (i is not None and i not in alive)}
    stranded = sum(by_sender[i].get(SendState.SENDING, 0) for i in gone)
    if stranded:
        states[SendState.SENDING] -= stranded
        if not states[SendState.SENDING]:
            del states[SendState.SENDING]
        states[SendState.UNCERTAIN] = states.get(SendState.UNCERTAIN, 0) + stranded
    shares = []
    for run_id, run in sorted(runs.items()):
        rows = dict(by_sender.get(run_id, {}))
        if run_id in gone and rows.get(SendState.SENDING):
            rows[SendState.UNCERTAIN] = rows.get(SendState.UNCERTAIN, 0) + rows.pop(SendState.SENDING)
        state = ("sending" if run.plan_run_id is not None else "starting") if run_id in alive \
            else "gone" if run.outcome == "running" else run.outcome
        if rows or run_id in alive:
            shares.append(SenderShare(run_id, run.sender or f"run {run_id}", run.started_at, state,
                                      run.heartbeat_at, rows))
    dead_run = last_run is not None and last_run.outcome == "running" and last_run.id not in alive \
        and not (last_run.sender == "" and anyone)
    shown: list[SendLog] = []
    if show:
        wanted = [show, SendState.SENDING] if show == SendState.UNCERTAIN and stranded else [show]
        shown = [row for row in ws.store.sendlog.rows(campaign_id, wanted)
                 if row.state != SendState.SENDING or show == SendState.SENDING or row.claimed_by in gone]
    return CampaignStatus(campaign_id, states, rules, ws.store.suppressions.bounces_recorded(campaign_id),
                          last_run, shown, dead_run,
                          spooled_optouts=ws.spool.pending(),
                          suppressions=ws.store.suppressions.origins_by_campaign().get(campaign_id, {}),
                          versions=ws.store.campaigns.sent_versions(campaign_id), senders=shares,
                          complaints=ws.store.complaints.count(campaign_id))
