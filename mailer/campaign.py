"""What you do with a campaign: plan it, preview it, send it. The CLI's commands are these calls.

    with mailer.open_workspace("config.toml") as ws:
        summary = mailer.send_campaign(ws, "campaigns/cloud-audit.toml")
    print(summary.sent, summary.blocked)

Nothing here prints, prompts or exits: progress, confirmation and interruption are
callbacks the caller passes in.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import owner_only
from .addresses import normalise
from .config import load_campaign
from .contacts import ContactData
from .delivery import DeliveryReport
from .errors import ComplianceRefusal, NotFound
from .gate import RULE_IDS
from .importer import ImportOutcome, Progress, no_progress
from .lease import keep_campaign, take_campaign, this_process
from .owner_only import too_open
from .planning import Plan, PreparedCampaign, decide_campaign, expected_recipients, prepare_campaign
from .render import RenderedMessage
from .sending import LARGE_SEND, SendReport, deliver_campaign, start_render_workers_early
from .states import SendState
from .store import Run, SendLog
from .transport import Transport
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
class PreviewResult:
    plan: Plan
    folder: Path
    written: list[Path] = field(default_factory=list)  # the .eml files, one per message
    first: bytes | None = None                          # the first message's bytes, for a reviewer
    #: warnings for the person running it (the folder is open to other users)
    notes: list[str] = field(default_factory=list)


def preview_campaign(ws: Workspace, campaign_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                     to: str | None = None, limit: int | None = None, progress: Progress | None = None
                     ) -> PreviewResult:
    """Write the messages that would go out, footer and headers included, to `out_dir`:
    one .eml and one .html per allowed recipient (only `to`'s, when given; at most `limit`).
    Sends nothing and records no decision. Raises NotFound when `to` is not a recipient."""
    prepared = prepare_campaign(ws, Path(campaign_path))
    renderer = prepared.renderer
    wanted = normalise(to).key if to else None
    folder = Path(out_dir)
    owner_only.make_folder(folder)  # the previews hold personal data: the owner's alone
    # The one write of a preview: where its copies are, for `forget` to find them.
    ws.store.settings.record_preview_folder(str(folder.resolve()), socket.gethostname())
    result = PreviewResult(Plan(prepared.campaign, Counter()), folder, notes=list(filter(None, [too_open(folder)])))

    def write(contact: ContactData, rendered: RenderedMessage) -> None:
        """Called by the plan with each message it rendered and found compliant: written once."""
        if (wanted is not None and contact.address.key != wanted) or \
                (limit is not None and len(result.written) >= limit):
            return
        data = renderer.build_mime(rendered, renderer.message_id())
        stem = f"{len(result.written) + 1:05d}-{preview_name(contact.address.key)}"
        owner_only.write_file(folder / f"{stem}.eml", data)
        if rendered.html is not None:
            owner_only.write_file(folder / f"{stem}.html", rendered.html.encode("utf-8"))
        result.written.append(folder / f"{stem}.eml")
        result.first = result.first or data

    result.plan = decide_campaign(ws, prepared, render_check=True, persist=False, on_rendered=write,
                                  progress=progress or no_progress)
    if wanted is not None:
        result.plan.recipients = [r for r in result.plan.recipients or [] if r.key == wanted]
        if not result.plan.recipients:
            raise NotFound(f"{to} is not among the recipients of {result.plan.campaign.id}",
                           hint=f"is it in the list {result.plan.campaign.list_name!r}?")
    return result


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
    #: rows a crash had left in `sending`, found delivered / marked uncertain
    confirmed_delivered: int = 0
    uncertain_recovered: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)   # (address, server's answer)
    deferrals: Counter[str] = field(default_factory=Counter)         # server's answer -> times
    #: what the transport suggests changing (one sentence each)
    notes: list[str] = field(default_factory=list)
    #: what was counted per outcome (includes "suppressed" and "taken")
    outcomes: Counter[str] = field(default_factory=Counter)
    footer_blocked: int = 0
    #: the gate's decisions of this run
    plan: Plan | None = None


#: Called with the plan and how many messages would be sent, before anything is: False stops there.
Confirm = Callable[[Plan, int], bool]


def send_campaign(ws: Workspace, campaign_path: str | os.PathLike[str], *, dry_run: bool = False,
                  retry_uncertain: bool = False, limit: int | None = None, confirm: Confirm | None = None,
                  progress: Progress | None = None, on_result: OnResult | None = None,
                  on_stopping: Callable[[], None] | None = None, render_workers: int | None = None) -> RunSummary:
    """Plan, then deliver every allowed recipient (at most `limit`), recording each decision and
    each delivery. Rerunning resumes: nobody is mailed twice for one campaign.

    dry_run records and sends nothing. `confirm` is asked before anything is sent. SIGINT and
    SIGTERM (when called from the main thread) stop after the messages in flight (`on_stopping`
    is told); a second one interrupts. Raises TemplateError, ComplianceRefusal, TransportError
    (server unreachable, campaign being sent by another process).
    """
    progress = progress or no_progress
    prepared = prepare_campaign(ws, Path(campaign_path))
    campaign = prepared.campaign
    transport = ws.open_transport()
    lease = run_id = None
    if not dry_run:  # one process at a time sends a campaign (and recovers its crashed rows)
        ws.store.campaigns.record(campaign.id, campaign.kind, campaign.locale, campaign.list_name)
        lease = take_campaign(ws.store, campaign.id)
        run_id = ws.store.campaigns.start_run(campaign.id)
    if render_workers is None:
        workers = ws.environ.get("MAILER_RENDER_WORKERS")
        render_workers = int(workers) if workers and workers.isdigit() else None
    if not dry_run and render_workers != 0 and (os.cpu_count() or 1) > 1 \
            and expected_recipients(ws, campaign) >= LARGE_SEND:
        start_render_workers_early()
    results: Counter[str] = Counter()
    counts: dict[str, int] = {}
    outcome = "failed"

    def count(state: str) -> None:
        results[state] += 1
        if on_result is not None:
            on_result(state)

    try:
        plan = decide_campaign(ws, prepared, persist=not dry_run, retry_uncertain=retry_uncertain,
                               transport=transport, run_id=run_id, keep_recipients=False, progress=progress)
        counts = dict(plan.counts)
        to_send = plan.allowed_count if limit is None else min(limit, plan.allowed_count)
        summary = RunSummary(campaign.id, plan.counts, to_send=to_send, dry_run=dry_run, imported=plan.imported,
                             confirmed_delivered=plan.confirmed_delivered,
                             uncertain_recovered=plan.uncertain_recovered,
                             blocked={rule: plan.counts[rule] for rule in RULE_IDS if plan.counts.get(rule)},
                             plan=plan)
        if plan.first_allowed is not None:  # a misspelt variable or a template defect stops here
            first = prepared.renderer.render(plan.first_allowed)
            if first.footer_problems:
                raise ComplianceRefusal([*first.footer_problems][:20] + ["nothing was sent"])
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
            report = runner.run(_deliver(ws, prepared, plan, transport, limit, count, render_workers,
                                         lease, on_stopping))
        outcome = "aborted" if report.delivered.aborted else "stopped" if report.delivered.stopped else "finished"
    finally:
        if run_id is not None:
            ws.store.campaigns.finish_run(run_id, outcome, counts | {f"delivery:{k}": v for k, v in results.items()})
        if lease is not None:
            ws.store.campaigns.release_lease(campaign.id, lease)
    _summarise(summary, report.delivered, report.footer_blocked)
    summary.notes = transport.notes()
    return summary


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
                   on_result: OnResult, render_workers: int | None, lease: str | None,
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
        async with keep_campaign(ws.store, prepared.campaign.id, lease or this_process()):
            return await deliver_campaign(ws, prepared, plan, transport, limit=limit, on_result=on_result,
                                          stop=stop, render_workers=render_workers)
    finally:
        await transport.close()


@dataclass
class CampaignStatus:
    campaign_id: str
    states: dict[str, int]          # send-log state -> rows
    rules: dict[str, int]           # rule id -> blocked rows
    hard_bounces: int
    last_run: Run | None
    #: rows in the state asked for (`show`), in plan order
    rows: list[SendLog] = field(default_factory=list)
    #: opt-outs (of any campaign) waiting in the spool to be recorded (mailer.spool)
    spooled_optouts: int = 0

    @property
    def allowed(self) -> int:
        return sum(v for k, v in self.states.items() if k != SendState.BLOCKED)


def campaign_status(ws: Workspace, campaign: str | os.PathLike[str], *, show: str | None = None) -> CampaignStatus:
    """A campaign's send log (`campaign` is its file or its id). Raises NotFound when it was never sent."""
    path = Path(campaign)
    campaign_id = load_campaign(path).id if path.is_file() else str(campaign)
    if not ws.store.campaigns.known(campaign_id):
        raise NotFound(f"no send log for campaign {campaign_id!r}",
                       hint="send the campaign first (or check the id)")
    states, rules = ws.store.sendlog.status_counts(campaign_id)
    return CampaignStatus(campaign_id, states, rules, ws.store.suppressions.bounces_recorded(campaign_id),
                          ws.store.campaigns.last_run(campaign_id),
                          ws.store.sendlog.rows(campaign_id, [show]) if show else [],
                          spooled_optouts=ws.spool.pending())
