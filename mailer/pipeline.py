"""The campaign pipeline, top to bottom:

    open_workspace -> prepare_campaign -> import_contacts -> plan_campaign
                   -> deliver_campaign (render, claim, transport, send log)

Each step takes typed values and returns typed values; the CLI only wires them.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.forkserver
import os
import signal
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from .addresses import address_hash, parse_from_header
from .config import Campaign, Config, load_campaign, load_config
from .contacts import ContactData, ContactsCsv
from .delivery import DeliveryReport, Outgoing, RetryPolicy, deliver_all
from .dkim_signing import DkimSigner, dkim_signer
from .errors import ComplianceRefusal, CsvError, TemplateError
from .gate import FOOTER_MISSING, GateContext, RelevanceMatcher, campaign_problems, decide, retention_reference
from .render import RenderedMessage, Renderer, Templates, load_templates
from .store import DELIVERED_STATES, ImportResult, Store, utcnow
from .tokens import Keys
from .transport.base import Envelope, Transport

#: A long step's progress: called with the step's label and its expected length (None if
#: unknown), returns the function to call with each advance (a number of items).
Progress = Callable[[str, int | None], Callable[[int], None]]


def _no_progress(label: str, total: int | None) -> Callable[[int], None]:
    return lambda n: None


@dataclass
class Workspace:
    """An organisation's config, its database and its keys, opened together."""

    config: Config
    store: Store
    keys: Keys
    secret_generated: bool = False
    environ: Mapping[str, str] = field(default_factory=dict)

    def hash_address(self, key: str) -> str:
        return address_hash(self.keys.address, key)

    def close(self) -> None:
        self.store.close()


def open_workspace(config_path: Path, environ: Mapping[str, str]) -> Workspace:
    config = load_config(config_path)
    store = Store.open(config.database_url)
    variable = config.unsubscribe.secret_env
    try:
        secret, generated = store.secret(environ.get(variable) or None, variable)
    except BaseException:
        store.close()
        raise
    return Workspace(config, store, Keys.derive(secret), generated, dict(environ))


# --------------------------------------------------------------------------- import

@dataclass
class ImportOutcome:
    path: Path
    result: ImportResult
    rows: int = 0
    skipped: list[str] = field(default_factory=list)
    repeated: list[ContactData] = field(default_factory=list)  # rows whose address came earlier in the file
    erased_skipped: int = 0


def import_contacts(ws: Workspace, path: Path, list_name: str, *, skip_invalid: bool = False,
                    now: datetime | None = None, progress: Progress = _no_progress) -> ImportOutcome:
    """Validate a contacts CSV and upsert it into a list: all or nothing, unless skip_invalid.

    The file is read and written in chunks inside one transaction, so memory
    stays flat however long the file; a bad row anywhere rolls everything back.
    """
    now = now or utcnow()
    reader = ContactsCsv(path, today=now.date())
    outcome = ImportOutcome(path, ImportResult())
    seen: set[str] = set()
    advance = progress(f"Importing {path.name}", _data_lines(path))

    def records() -> Iterator[ContactData]:
        chunk: list[ContactData] = []
        for record in reader:
            chunk.append(record)
            if len(chunk) >= 500:
                yield from keep(chunk)
                advance(len(chunk))
                chunk = []
        yield from keep(chunk)
        advance(len(chunk))

    anyone_erased = ws.store.has_erasures()

    def keep(chunk: list[ContactData]) -> Iterator[ContactData]:
        kept, erased = _without_erased(ws, chunk, now) if anyone_erased else (chunk, 0)
        outcome.erased_skipped += erased
        for record in kept:
            outcome.rows += 1
            if record.address.key in seen:
                outcome.repeated.append(record)
            seen.add(record.address.key)
            yield record

    def all_or_nothing() -> None:
        if reader.problems and not skip_invalid:
            raise CsvError(reader.problems, hint=f"fix these rows (nothing was imported), or rerun with "
                                                 f"--skip-invalid to import the {outcome.rows} good rows")

    outcome.result = ws.store.upsert_contacts(records(), list_name, reader.present, now=now,
                                              before_commit=all_or_nothing)
    outcome.skipped = list(reader.problems)
    return outcome


def _data_lines(path: Path) -> int | None:
    """The lines of a CSV after its header (rows, unless some hold quoted line breaks)."""
    try:
        with open(path, "rb") as handle:
            return max(0, sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b"")) - 1)
    except OSError:
        return None


def _without_erased(ws: Workspace, records: list[ContactData], now: datetime) -> tuple[list[ContactData], int]:
    """Drop the people who asked to be forgotten, and stale data of people erased at retention.

    A retention erasure does not stop a *new* collection: a row whose dates are
    more recent than the erasure comes back.
    """
    hashes = {r.address.key: ws.hash_address(r.address.key) for r in records}
    erased = ws.store.erasures(list(set(hashes.values())))
    if not erased:
        return records, 0
    kept = []
    for record in records:
        found = erased.get(hashes[record.address.key])
        if found is not None:
            reason, when = found
            reference = retention_reference(record)[0] or now.date()
            if reason == "request" or reference <= when.date():
                continue
        kept.append(record)
    return kept, len(records) - len(kept)


# --------------------------------------------------------------------------- plan

@dataclass
class PreparedCampaign:
    campaign: Campaign
    templates: Templates
    renderer: Renderer


def prepare_campaign(ws: Workspace, campaign_path: Path) -> PreparedCampaign:
    """Load and validate a campaign; refuse it (exit 3) when the campaign as a whole may not go."""
    campaign = load_campaign(campaign_path)
    templates = load_templates(campaign)
    problems = campaign_problems(ws.config, campaign)
    if problems:
        raise ComplianceRefusal(problems)
    from_domain = parse_from_header(campaign.from_)[1].rpartition("@")[2]
    signer = dkim_signer(ws.config, from_domain, ws.environ)
    return PreparedCampaign(campaign, templates, Renderer(ws.config, campaign, ws.keys, templates, signer))


@dataclass(slots=True)
class PlannedRecipient:
    key: str  # the normalised address
    contact_id: int | None
    blocked_by: str | None
    detail: str


@dataclass
class Plan:
    """The gate's decisions for one run: counts always, each recipient when kept."""

    campaign: Campaign
    counts: Counter[str]
    recipients: list[PlannedRecipient] | None = None  # kept for check and preview, not for send
    imported: ImportOutcome | None = None
    uncertain_recovered: int = 0
    confirmed_delivered: int = 0
    run_id: int | None = None
    first_allowed: ContactData | None = None

    @property
    def allowed_count(self) -> int:
        return self.counts.get("allowed", 0)

    @property
    def allowed(self) -> list[PlannedRecipient]:
        return [r for r in self.recipients or [] if r.blocked_by is None]


def _candidates(ws: Workspace, campaign: Campaign, imported: ImportOutcome | None) -> Iterator[ContactData]:
    """The list's members, streamed from the database, then the CSV's repeated rows
    (which the gate blocks as `duplicate`)."""
    yield from ws.store.list_contacts(campaign.list_name)
    if imported is not None:
        yield from imported.repeated


def plan_campaign(ws: Workspace, prepared: PreparedCampaign, *, today: date | None = None,
                  import_csv: bool = True, retry_uncertain: bool = False, render_check: bool = False,
                  transport: Transport | None = None, persist: bool = True, run_id: int | None = None,
                  keep_recipients: bool = True,
                  on_rendered: Callable[[ContactData, RenderedMessage], None] | None = None,
                  progress: Progress = _no_progress) -> Plan:
    """Import the campaign's CSV, recover a crashed run, and decide for every candidate.

    Candidates are streamed and decisions written in batches tagged with
    `run_id`, so a large list is never all in memory (unless keep_recipients,
    for check and preview). render_check renders every allowed message so that
    `footer-missing` (and any template error) is known now; `send` checks each
    message as it renders it instead. on_rendered receives each message that
    rendered with a visible footer (preview writes it, instead of rendering again).
    """
    campaign = prepared.campaign
    now = utcnow()
    today = today or now.date()
    imported = None
    if import_csv and campaign.csv is not None:
        imported = import_contacts(ws, campaign.csv, campaign.list_name, now=now, progress=progress)
    ws.store.list_id(campaign.list_name)  # a clear error when the list does not exist
    advance = progress("Rendering and checking" if render_check else "Deciding",
                       ws.store.list_size(campaign.list_name) + len(imported.repeated if imported else ()))
    since = 0

    recovered = confirmed = 0
    if persist:
        ws.store.record_campaign(campaign.id, campaign.kind, campaign.locale, campaign.list_name)
        confirmed, recovered = _recover_crashed(ws, campaign.id, transport)

    delivered_states = set(DELIVERED_STATES) - ({"uncertain"} if retry_uncertain else set())
    hashes, domains = ws.store.suppressed_sets()
    relevance = campaign.relevance
    ctx = GateContext(
        today=today, retention_years=ws.config.compliance.retention_years, hash_address=ws.hash_address,
        suppressed_hashes=hashes, suppressed_domains=domains,
        delivered=ws.store.log_keys(campaign.id, delivered_states),
        generic_locals=frozenset(g.lower() for g in ws.config.compliance.generic_locals),
        relevance=RelevanceMatcher.build(relevance.job_titles, relevance.industries) if relevance else None,
    )
    replaceable = ("blocked", "planned", "deferred") + (("uncertain",) if retry_uncertain else ())
    plan = Plan(campaign, Counter(), [] if keep_recipients else None, imported, recovered, confirmed, run_id)
    rows: list[dict[str, object]] = []
    for contact in _candidates(ws, campaign, imported):
        since += 1
        if since == 500:
            advance(since)
            since = 0
        decision = decide(contact, campaign, ctx)
        blocked_by, detail = decision.blocked_by, decision.detail
        if blocked_by is None and render_check:
            rendered = prepared.renderer.render(contact)
            if rendered.footer_problems:
                blocked_by, detail = FOOTER_MISSING, "; ".join(rendered.footer_problems)
            elif on_rendered is not None:
                on_rendered(contact, rendered)
        plan.counts[blocked_by or "allowed"] += 1
        if blocked_by is None and plan.first_allowed is None:
            plan.first_allowed = contact
        if plan.recipients is not None:
            plan.recipients.append(PlannedRecipient(contact.address.key, contact.id, blocked_by, detail))
        if persist and blocked_by not in ("duplicate", "already-sent"):
            rows.append({"address_key": contact.address.key, "contact_id": contact.id, "run_id": run_id,
                         "state": "blocked" if blocked_by else "planned", "rule": blocked_by or "",
                         "detail": detail})
            if len(rows) >= 1000:
                ws.store.write_decisions(campaign.id, rows, replaceable)
                rows = []
    if persist:
        ws.store.write_decisions(campaign.id, rows, replaceable)
    advance(since)
    return plan


def _recover_crashed(ws: Workspace, campaign_id: str, transport: Transport | None) -> tuple[int, int]:
    """Rows a dead process left in `sending`: sent if the transport can prove it, else uncertain."""
    rows = ws.store.log_rows(campaign_id, ["sending"])
    if not rows:
        return 0, 0
    confirmed = []
    if transport is not None:
        for row in rows:
            if transport.delivered(f"{campaign_id}.{row.id}"):
                confirmed.append({"id": row.id, "state": "sent", "sent_at": row.updated_at,
                                  "detail": "confirmed after a crash: the message is in the outbox"})
    ws.store.update_log(confirmed)
    uncertain = ws.store.mark_crashed_sends_uncertain(campaign_id)
    return len(confirmed), uncertain


# --------------------------------------------------------------------------- deliver

@dataclass
class SendReport:
    delivered: DeliveryReport
    footer_blocked: int = 0
    attempted: int = 0


RENDER_CHUNK = 100
LARGE_SEND = 1000  # from this many messages, rendering runs in worker processes


def expected_recipients(ws: Workspace, campaign: Campaign) -> int:
    """A quick upper estimate of a campaign's recipients, before planning: the list plus the CSV's lines."""
    lines = (_data_lines(campaign.csv) or 0) if campaign.csv is not None else 0
    return ws.store.list_size(campaign.list_name) + lines


def _forkserver() -> multiprocessing.context.ForkServerContext:
    """forkserver, not fork: render workers start small instead of inheriting the plan's memory,
    from a server that has imported mailer once."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mailer.pipeline"])
    return context  # type: ignore[return-value]


def start_render_workers_early() -> None:
    """Start the process that forks render workers now: it imports mailer while the plan runs,
    instead of holding up the first messages of a large send (half a second here)."""
    _forkserver()
    multiprocessing.forkserver.ensure_running()


async def deliver_campaign(ws: Workspace, prepared: PreparedCampaign, plan: Plan, transport: Transport, *,
                           limit: int | None = None, on_result: Callable[[str], None] | None = None,
                           stop: asyncio.Event | None = None, render_workers: int | None = None) -> SendReport:
    """Render and deliver every allowed recipient of the plan (at most `limit`).

    Rendering (Jinja, text part, footer check, MIME bytes) is CPU work: with
    render_workers > 0 it runs in that many processes while this one talks to the
    database and the transport. None picks one per core but one, for large sends.
    """
    campaign = prepared.campaign
    renderer = prepared.renderer
    bounce = ws.config.smtp.bounce_address or renderer.from_address
    to_send = plan.allowed_count if limit is None else min(limit, plan.allowed_count)
    report = SendReport(DeliveryReport(), attempted=to_send)
    footer_blocked: list[dict[str, object]] = []
    wire = getattr(transport, "wire_format", None)
    if render_workers is None:
        # This process is busy too (database, transport): leave it a core.
        render_workers = max(1, (os.cpu_count() or 1) - 1) if to_send >= LARGE_SEND else 0

    # This run's planned rows, read from the send log in chunks rather than held in memory.
    chunks = ws.store.pending_chunks(campaign.id, plan.run_id, RENDER_CHUNK, to_send)

    async def rendered_chunks() -> AsyncIterator[list[Outgoing | Blocked]]:
        if render_workers <= 0:
            for chunk in chunks:
                yield render_chunk(renderer, contacts_for(ws.store, chunk), campaign.id, bounce, wire)
                await asyncio.sleep(0)
            return
        pool = ProcessPoolExecutor(render_workers, mp_context=_forkserver(), initializer=_init_worker,
                                   initargs=(ws.config, campaign, ws.keys, bounce, renderer.dkim, wire))
        # Workers read their chunk's contacts from the database themselves: this
        # process, which also drives the transport, only hands out (log id, contact id).
        try:
            pending: deque[asyncio.Future[list[Outgoing | Blocked]]] = deque()
            upcoming = iter(chunks)
            for chunk in upcoming:
                pending.append(asyncio.wrap_future(pool.submit(_render_in_worker, chunk)))
                if len(pending) >= render_workers * 3:
                    break
            while pending:
                try:
                    done = await pending.popleft()
                except _WorkerTemplateError as exc:
                    raise TemplateError(exc.message, hint=exc.hint) from None
                following = next(upcoming, None)
                if following is not None:
                    pending.append(asyncio.wrap_future(pool.submit(_render_in_worker, following)))
                yield done
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    async def messages() -> AsyncIterator[Outgoing]:
        async for results in rendered_chunks():
            for result in results:
                if isinstance(result, Blocked):
                    footer_blocked.append({"id": result.log_id, "state": "blocked", "rule": FOOTER_MISSING,
                                           "detail": result.detail})
                    if on_result:
                        on_result("blocked")
                else:
                    yield result

    # Rate limits protect a remote relay's reputation; the maildir outbox has none.
    rates = [r for r in (campaign.rate_per_second, ws.config.smtp.rate_per_second) if r > 0] \
        if ws.config.transport.type == "smtp" else []
    try:
        report.delivered = await deliver_all(
            ws.store, transport, messages(), campaign_id=campaign.id, on_result=on_result, stop=stop,
            rate_per_second=min(rates) if rates else 0,
            retry=RetryPolicy(ws.config.smtp.max_attempts, ws.config.smtp.retry_base_seconds))
    finally:
        ws.store.update_log(footer_blocked)
    report.footer_blocked = len(footer_blocked)
    return report


@dataclass(frozen=True, slots=True)
class Blocked:
    """A message that rendered without a visible footer: blocked, never sent."""

    log_id: int
    detail: str


def render_chunk(renderer: Renderer, items: list[tuple[int, ContactData]], campaign_id: str,
                 bounce: str, wire: Callable[[bytes], bytes] | None = None) -> list[Outgoing | Blocked]:
    """Render, check and build the bytes of each (log id, contact); in the transport's wire form if given."""
    results: list[Outgoing | Blocked] = []
    for log_id, contact in items:
        rendered = renderer.render(contact)
        if rendered.footer_problems:
            results.append(Blocked(log_id, "; ".join(rendered.footer_problems)))
            continue
        message_id = renderer.message_id()
        data = renderer.build_mime(rendered, message_id)
        results.append(Outgoing(
            log_id=log_id, address_hash=rendered.address_hash, domain=contact.address.domain,
            subject=rendered.subject, message_id=message_id,
            envelope=Envelope(key=f"{campaign_id}.{log_id}", mail_from=bounce, rcpt_to=contact.email,
                              data=wire(data) if wire else data, wire=wire is not None)))
    return results


def contacts_for(store: Store, chunk: list[tuple[int, int]]) -> list[tuple[int, ContactData]]:
    """(log id, contact) for each (log id, contact id) whose contact still exists (not erased meanwhile)."""
    found = store.contacts_by_id(contact_id for _, contact_id in chunk)
    return [(log_id, found[contact_id]) for log_id, contact_id in chunk if contact_id in found]


_WORKER: tuple[Renderer, Store, str, str, Callable[[bytes], bytes] | None] | None = None


def _init_worker(config: Config, campaign: Campaign, keys: Keys, bounce: str, dkim: DkimSigner | None,
                 wire: Callable[[bytes], bytes] | None) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides how to stop
    _WORKER = (Renderer(config, campaign, keys, dkim=dkim), Store.attach(config.database_url), campaign.id, bounce,
               wire)


def _render_in_worker(chunk: list[tuple[int, int]]) -> list[Outgoing | Blocked]:
    assert _WORKER is not None
    renderer, store, campaign_id, bounce, wire = _WORKER
    try:
        return render_chunk(renderer, contacts_for(store, chunk), campaign_id, bounce, wire)
    except TemplateError as exc:  # re-raised in the parent with its message and hint
        raise _WorkerTemplateError(exc.message, exc.hint) from None


class _WorkerTemplateError(Exception):
    """A TemplateError that survives pickling across the process boundary."""

    def __init__(self, message: str, hint: str | None) -> None:
        super().__init__(message, hint)
        self.message, self.hint = message, hint
