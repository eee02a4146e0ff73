"""A campaign's plan: load and validate it, then the gate's decision for every candidate."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from .addresses import parse_from_header
from .config import Campaign, load_campaign
from .contacts import ContactData
from .dkim_signing import dkim_signer
from .errors import ComplianceRefusal
from .gate import FOOTER_MISSING, GateContext, RelevanceMatcher, campaign_notes, campaign_problems, decide
from .importer import ImportOutcome, Progress, data_lines, import_contacts, no_progress, read_as_imported
from .optouts import apply_spooled_optouts, spooled_hashes
from .render import RenderedMessage, Renderer, Templates, load_templates
from .states import DELIVERED_STATES, SendState
from .store import DECIDABLE_STATES, utcnow
from .transport import Transport
from .workspace import Workspace


@dataclass
class PreparedCampaign:
    campaign: Campaign
    templates: Templates
    renderer: Renderer


def prepare_campaign(ws: Workspace, campaign_path: Path) -> PreparedCampaign:
    """Load and validate a campaign; refuse it (exit 3) when the campaign as a whole may not go."""
    campaign = load_campaign(campaign_path)
    templates = load_templates(campaign)
    problems = campaign_problems(ws.config, campaign, ws.transport_class)
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
    from_domain: str = ""  # the From address's domain (what DNS must vouch for)
    #: what rendering left out without harm (web font stylesheets), once each
    notes: dict[str, None] = field(default_factory=dict)

    @property
    def allowed_count(self) -> int:
        return self.counts.get("allowed", 0)

    @property
    def allowed(self) -> list[PlannedRecipient]:
        return [r for r in self.recipients or [] if r.blocked_by is None]


def _candidates(ws: Workspace, campaign: Campaign, read: ImportOutcome | None,
                from_csv: list[ContactData] | None) -> Iterator[ContactData]:
    """The list's members, streamed from the database, then the CSV's repeated rows (which the
    gate blocks as `duplicate`). With `from_csv` (the file's contacts as an import would make
    them, not written), those stand in for the stored ones, and the new ones follow."""
    if from_csv is None:
        yield from ws.store.contacts.members(campaign.list_name)
    else:
        pending = {c.address.key: c for c in from_csv}
        if ws.store.contacts.list_size(campaign.list_name):
            for member in ws.store.contacts.members(campaign.list_name):
                yield pending.pop(member.address.key, member)
        yield from pending.values()
    if read is not None:
        yield from read.repeated


def decide_campaign(ws: Workspace, prepared: PreparedCampaign, *, today: date | None = None,
                  import_csv: bool = True, retry_uncertain: bool = False, render_check: bool = False,
                  transport: Transport | None = None, persist: bool = True, run_id: int | None = None,
                  keep_recipients: bool = True,
                  on_rendered: Callable[[ContactData, RenderedMessage], None] | None = None,
                  on_decided: Callable[[ContactData, str | None, str], None] | None = None,
                  progress: Progress = no_progress) -> Plan:
    """Import the campaign's CSV, recover a crashed run, and decide for every candidate.

    With persist=False nothing is written: the CSV is read and merged with the stored
    contacts in memory, no decision is recorded and no crashed run is recovered. Opt-outs
    waiting in the spool (mailer.spool) are recorded first, or, with persist=False, only
    honoured.

    Candidates are streamed and decisions written in batches tagged with
    `run_id`, so a large list is never all in memory (unless keep_recipients,
    for check and preview). render_check renders every allowed message so that
    `footer-missing` (and any template error) is known now; `send` checks each
    message as it renders it instead. on_rendered receives each message that
    rendered with a visible footer (preview writes it, instead of rendering again);
    on_decided receives every candidate with the rule that blocks it (None: allowed) and why.
    """
    campaign = prepared.campaign
    if persist:  # opt-outs `mailer serve` could not write at once are on the list before anyone is decided
        apply_spooled_optouts(ws)
    now = utcnow()
    today = today or now.date()
    imported = read = None
    from_csv: list[ContactData] | None = None
    if import_csv and campaign.csv is not None:
        if persist:
            imported = read = import_contacts(ws, campaign.csv, campaign.list_name, now=now, progress=progress,
                                              collected_at=campaign.collected_at,
                                              encoding=campaign.csv_encoding, date_format=campaign.csv_date_format)
        else:
            read, from_csv = read_as_imported(ws, campaign.csv, now=now, progress=progress,
                                              collected_at=campaign.collected_at,
                                              encoding=campaign.csv_encoding, date_format=campaign.csv_date_format)
    if from_csv is None:
        ws.store.contacts.list_id(campaign.list_name)  # a clear error when the list does not exist
    advance = progress("Rendering and checking" if render_check else "Deciding",
                       ws.store.contacts.list_size(campaign.list_name) + len(from_csv or ())
                       + len(read.repeated if read else ()))
    since = 0

    recovered = confirmed = 0
    if persist:
        ws.store.campaigns.record(campaign.id, campaign.kind, campaign.locale, campaign.list_name)
        confirmed, recovered = _recover_crashed(ws, campaign.id, transport)

    delivered_states = set(DELIVERED_STATES) - ({SendState.UNCERTAIN} if retry_uncertain else set())
    hashes, domains = ws.store.suppressions.sets()
    hashes |= spooled_hashes(ws)  # those still waiting (a plan that writes nothing, a secret changed)
    relevance = campaign.relevance
    ctx = GateContext(
        today=today, retention_years=ws.config.compliance.retention_years, lookup_hashes=ws.lookup_hashes,
        suppressed_hashes=hashes, suppressed_domains=domains,
        delivered=ws.store.sendlog.keys(campaign.id, delivered_states),
        roles=ws.config.compliance.role_addresses(),
        relevance=RelevanceMatcher.build(relevance.job_titles, relevance.industries) if relevance else None,
    )
    plan_notes: list[str] = []
    if campaign.check_mx:
        ctx.domains_without_mail = _domains_without_mail(ws, _candidates(ws, campaign, read, from_csv), plan_notes,
                                                         progress)
    replaceable = DECIDABLE_STATES + ((SendState.UNCERTAIN,) if retry_uncertain else ())
    plan = Plan(campaign, Counter(), [] if keep_recipients else None, imported, recovered, confirmed, run_id,
                from_domain=prepared.renderer.from_domain)
    plan.notes.update(dict.fromkeys(campaign_notes(ws.config, ws.transport_class)))
    plan.notes.update(dict.fromkeys(plan_notes))
    rows: list[dict[str, object]] = []
    footer_problems: dict[str, None] = {}
    for contact in _candidates(ws, campaign, read, from_csv):
        since += 1
        if since == 500:
            advance(since)
            since = 0
        decision = decide(contact, campaign, ctx)
        blocked_by, detail = decision.blocked_by, decision.detail
        if blocked_by is None and render_check:
            rendered = prepared.renderer.render(contact)
            plan.notes.update(dict.fromkeys(rendered.notes))
            if rendered.footer_problems:
                blocked_by, detail = FOOTER_MISSING, "; ".join(rendered.footer_problems)
                footer_problems.update(dict.fromkeys(rendered.footer_problems))
            elif on_rendered is not None:
                on_rendered(contact, rendered)
        plan.counts[blocked_by or "allowed"] += 1
        if on_decided is not None:
            on_decided(contact, blocked_by, detail)
        if blocked_by is None and plan.first_allowed is None:
            plan.first_allowed = contact
        if plan.recipients is not None:
            plan.recipients.append(PlannedRecipient(contact.address.key, contact.id, blocked_by, detail))
        if persist and blocked_by not in ("duplicate", "already-sent"):
            rows.append({"address_key": contact.address.key, "contact_id": contact.id, "run_id": run_id,
                         "state": SendState.BLOCKED.value if blocked_by else SendState.PLANNED.value, "rule": blocked_by or "",
                         "detail": detail})
            if len(rows) >= 1000:
                ws.store.sendlog.write_decisions(campaign.id, rows, replaceable)
                rows = []
    if persist:
        ws.store.sendlog.write_decisions(campaign.id, rows, replaceable)
    advance(since)
    if footer_problems:
        # A template defect, not a recipient's: the campaign as a whole may not go.
        raise ComplianceRefusal([*footer_problems][:20] + [
            f"{plan.counts[FOOTER_MISSING]} messages would not show the footer as written; nothing was sent"])
    return plan


def _domains_without_mail(ws: Workspace, candidates: Iterable[ContactData], notes: list[str],
                          progress: Progress) -> dict[str, str]:
    """The `no-mx` rule's lookups, done before deciding so that the rule itself does no I/O: each
    recipient domain once, concurrently. A domain DNS does not answer for in time is not blocked."""
    from .dns_check import DnsResolver, DnsUnavailable, mail_domain_problems
    domains = {c.address.domain for c in candidates if c.address.valid}
    try:
        found = mail_domain_problems(domains, DnsResolver(ws.config.dns),
                                     on_looked_up=progress("Looking up recipient domains (no-mx)", len(domains)))
    except DnsUnavailable as exc:
        notes.append(f"no-mx: DNS cannot be asked ({exc}): nobody was blocked by this rule")
        return {}
    if found.unanswered:
        shown = ", ".join(found.unanswered[:5]) + (" …" if len(found.unanswered) > 5 else "")
        count = len(found.unanswered)
        notes.append(f"no-mx: DNS did not answer in time for {count} recipient domain{'s' if count > 1 else ''} "
                     f"({shown}): their recipients were not blocked")
    return found.without_mail


def _recover_crashed(ws: Workspace, campaign_id: str, transport: Transport | None) -> tuple[int, int]:
    """Rows a dead process left in `sending`: sent if the transport can prove it, else uncertain."""
    rows = ws.store.sendlog.rows(campaign_id, [SendState.SENDING])
    if not rows:
        return 0, 0
    confirmed = []
    if transport is not None:
        for row in rows:
            if transport.delivered(f"{campaign_id}.{row.id}"):
                confirmed.append({"id": row.id, "state": SendState.SENT.value, "sent_at": row.updated_at,
                                  "detail": "confirmed after a crash: the message is in the outbox"})
    ws.store.sendlog.update(confirmed)
    uncertain = ws.store.sendlog.mark_crashed_uncertain(campaign_id)
    return len(confirmed), uncertain


def expected_recipients(ws: Workspace, campaign: Campaign) -> int:
    """A quick upper estimate of a campaign's recipients, before planning: the list plus the CSV's lines."""
    lines = (data_lines(campaign.csv) or 0) if campaign.csv is not None else 0
    return ws.store.contacts.list_size(campaign.list_name) + lines
