"""The compliance gate: one pure function per rule, named after its rule id.

A rule takes (contact, campaign, context) and returns None when the contact
passes, or a short reason when the rule blocks. `decide` applies the rules in
the order of SPEC §2 and returns the first that blocks. No rule does I/O: the
context carries everything they need (suppression sets, send log, today).
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Protocol
from urllib.parse import urlsplit

from .addresses import RoleAddresses, domain_and_parents, parse_from_header, public_host_problem
from .config import Campaign, Config
from .contacts import ContactData

# EU member states plus Iceland, Liechtenstein and Norway.
EEA = frozenset({
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT",
    "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "IS", "LI", "NO",
})


@lru_cache(maxsize=8192)  # a list repeats its job titles and industries thousands of times
def words(text: str) -> tuple[str, ...]:
    """Case- and accent-insensitive words: "Télécom & IT" -> ("telecom", "it")."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return tuple(re.findall(r"[^\W_]+", plain))


@dataclass(frozen=True)
class RelevanceMatcher:
    """Matches a job title or industry against phrases, word by word.

    "directeur informatique" matches "Directeur Informatique Adjoint" (the phrase's
    words appear in sequence) but not "Directeur" alone; "CTO" does not match "Doctor".
    """

    job_titles: tuple[tuple[str, ...], ...]
    industries: tuple[tuple[str, ...], ...]

    @classmethod
    def build(cls, job_titles: Iterable[str], industries: Iterable[str]) -> RelevanceMatcher:
        return cls(tuple(w for w in map(words, job_titles) if w),
                   tuple(w for w in map(words, industries) if w))

    @staticmethod
    def _contains(haystack: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
        n = len(phrase)
        return any(haystack[i:i + n] == phrase for i in range(len(haystack) - n + 1))

    def matches(self, job_title: str, industry: str) -> bool:
        title, sector = words(job_title), words(industry)
        return (any(self._contains(title, p) for p in self.job_titles)
                or any(self._contains(sector, p) for p in self.industries))


@dataclass
class GateContext:
    """What the rules may look at besides the contact and the campaign."""

    today: date
    retention_years: int
    lookup_hashes: Callable[[str], tuple[str, ...]]
    suppressed_hashes: set[str] = field(default_factory=set)
    suppressed_domains: set[str] = field(default_factory=set)
    delivered: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)
    roles: RoleAddresses = RoleAddresses()
    relevance: RelevanceMatcher | None = None
    #: recipient domains that can receive no mail, with why ([send] check_mx; looked up before deciding)
    domains_without_mail: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    contact: ContactData
    blocked_by: str | None = None
    detail: str = ""

    @property
    def allowed(self) -> bool:
        return self.blocked_by is None


def _generic(contact: ContactData, ctx: GateContext) -> bool:
    return ctx.roles.exempt(contact.address.key, contact.kind)


def add_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def retention_reference(contact: ContactData) -> tuple[date | None, str]:
    """The date the retention clock runs from, and which field it is."""
    candidates = [(d, name) for d, name in (
        (contact.collected_at, "collected_at"),
        (contact.last_interaction_at, "last_interaction_at"),
        (contact.consent_at, "consent_at")) if d is not None]
    if not candidates:
        return None, ""
    return max(candidates, key=lambda pair: pair[0])


# --------------------------------------------------------------------------- rules

def invalid_address(contact: ContactData, campaign: Campaign, ctx: GateContext) -> str | None:
    if not contact.address.valid:
        return contact.address.reason or "the address is not valid"
    return None


def suppressed(contact: ContactData, campaign: Campaign, ctx: GateContext) -> str | None:
    if ctx.suppressed_domains:
        for domain in domain_and_parents(contact.address.domain):
            if domain in ctx.suppressed_domains:
                return f"the domain {domain} is on the suppression list"
    if ctx.suppressed_hashes and not ctx.suppressed_hashes.isdisjoint(ctx.lookup_hashes(contact.address.key)):
        return "the address is on the suppression list"
    return None


def duplicate(contact: ContactData, campaign: Campaign, ctx: GateContext) -> str | None:
    if contact.address.key in ctx.seen:
        return "the address appears earlier in this run"
    return None


def already_sent(contact: ContactData, campaign: Campaign, ctx: GateContext) -> str | None:
    if contact.address.key in ctx.delivered:
        return "the send log already holds a delivery of this campaign to this address"
    return None


def audience(contact: ContactData, campaign: Campaign, ctx: GateContext) -> str | None:
    if contact.kind not in campaign.audiences:
        return f"{contact.kind} contact, the campaign is for {', '.join(campaign.audiences)}"
    return None


def missing_source(contact: ContactData, campaign: Campaign, ctx: GateContext) -> str | None:
    if campaign.kind in ("prospecting", "newsletter") and not contact.source and not _generic(contact, ctx):
        return "no source: the footer must say where the address was collected"
    return None


def retention_expired(contact: ContactData, campaign: Campaign, ctx: GateContext) -> str | None:
    if _generic(contact, ctx):
        return None
    if contact.collected_at is None:
        return ("no collection date: give collected_at in the file, or the date of the whole file "
                "(contacts import --collected-at, [recipients] collected_at)")
    reference, which = retention_reference(contact)
    assert reference is not None
    expiry = add_years(reference, ctx.retention_years)
    if ctx.today > expiry:
        return f"{which} {reference.isoformat()} is more than {ctx.retention_years} years ago (expired {expiry.isoformat()})"
    return None


def not_member(contact: ContactData, campaign: Campaign, ctx: GateContext) -> str | None:
    if campaign.kind == "members" and not contact.member:
        return "members campaign and the contact is not a member"
    return None


def no_consent(contact: ContactData, campaign: Campaign, ctx: GateContext) -> str | None:
    # Writing to an association's own members is not prospecting (L34-5): no opt-in needed.
    if contact.kind != "b2c" or campaign.kind == "members" or _generic(contact, ctx):
        return None
    if contact.consent == "opt-in":
        missing = [name for name, value in (("consent_at", contact.consent_at),
                                            ("consent_proof", contact.consent_proof)) if not value]
        if missing:
            return f"opt-in without {' and '.join(missing)}: consent counts only with its date and proof"
        return None
    if contact.consent == "customer":
        if campaign.soft_opt_in:
            return None
        return "customer (soft opt-in) but the campaign does not set soft_opt_in = true"
    return "consumer without opt-in consent"


def no_partner_consent(contact: ContactData, campaign: Campaign, ctx: GateContext) -> str | None:
    if contact.kind == "b2c" and contact.source_type == "partner" and not contact.partner_consent:
        return "consumer address from a partner, without consent to be shared with partners"
    return None


def not_relevant(contact: ContactData, campaign: Campaign, ctx: GateContext) -> str | None:
    if contact.kind != "b2b" or campaign.kind != "prospecting" or _generic(contact, ctx):
        return None
    if ctx.relevance is None or not ctx.relevance.matches(contact.job_title, contact.industry):
        shown = contact.job_title or "no job title"
        return f"{shown!r} / {contact.industry or 'no industry'!r} matches no [relevance] rule"
    return None


def no_mx(contact: ContactData, campaign: Campaign, ctx: GateContext) -> str | None:
    if ctx.domains_without_mail:
        return ctx.domains_without_mail.get(contact.address.domain)
    return None


Rule = Callable[[ContactData, Campaign, GateContext], "str | None"]

RULES: tuple[tuple[str, Rule], ...] = (
    ("invalid-address", invalid_address),
    ("suppressed", suppressed),
    ("duplicate", duplicate),
    ("already-sent", already_sent),
    ("audience", audience),
    ("missing-source", missing_source),
    ("retention-expired", retention_expired),
    ("not-member", not_member),
    ("no-consent", no_consent),
    ("no-partner-consent", no_partner_consent),
    ("not-relevant", not_relevant),
    ("no-mx", no_mx),  # only with [send] check_mx = true
)
# Applied after rendering: what the template cannot be rebuilt around (mailer.isolation).
FOOTER_MISSING = "footer-missing"
RULE_IDS: tuple[str, ...] = tuple(rule_id for rule_id, _ in RULES) + (FOOTER_MISSING,)


def decide(contact: ContactData, campaign: Campaign, ctx: GateContext) -> Decision:
    """The contact's decision: allowed, or blocked by the first rule that fails."""
    try:
        for rule_id, rule in RULES:
            reason = rule(contact, campaign, ctx)
            if reason is not None:
                return Decision(contact, rule_id, reason)
        return Decision(contact)
    finally:
        ctx.seen.add(contact.address.key)


# --------------------------------------------------------------------------- campaign level

class TransportFacts(Protocol):
    """What the campaign-level rules need to know of the transport (its class will do)."""

    leaves_host: bool
    needs_processor: bool


def unreachable_unsubscribe_url(url: str) -> str | None:
    """Why a recipient could not use this one-click unsubscribe URL from the internet, or None."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        return "not https (mailbox providers require an https one-click link)"
    if "@" in parts.netloc or "\\" in url or any(c.isspace() or ord(c) < 32 for c in url):
        return "a user name, a backslash or a blank in it (browsers and mailer could read another host)"
    problem = public_host_problem(parts.hostname or "")
    return f"{problem}, not a public name" if problem else None


def campaign_notes(config: Config, transport: TransportFacts) -> list[str]:
    """What the run must say although it may go on (a test setup's explicit exceptions)."""
    notes = []
    if transport.leaves_host and config.unsubscribe.allow_local_url:
        unreachable = unreachable_unsubscribe_url(config.unsubscribe.base_url)
        if unreachable:
            notes.append(f"[unsubscribe] allow_local_url = true: messages carry an unsubscribe link "
                         f"({config.unsubscribe.base_url}) that recipients cannot reach ({unreachable}); "
                         "for test setups only")
    return notes


def campaign_problems(config: Config, campaign: Campaign, transport: TransportFacts) -> list[str]:
    """Reasons to refuse the whole campaign before anything is sent (exit 3)."""
    problems: list[str] = []
    org = config.organization
    for name in ("name", "postal_address", "privacy_url", "contact_email"):
        if not getattr(org, name).strip():
            problems.append(f"{config.path}: [organization] {name} is empty; every footer must show it")
    if org.contact_email.strip():
        try:
            parse_from_header(org.contact_email)
        except ValueError:
            problems.append(f"{config.path}: [organization] contact_email {org.contact_email!r} is not an address")
    if org.privacy_url.strip() and urlsplit(org.privacy_url).scheme not in ("http", "https"):
        problems.append(f"{config.path}: [organization] privacy_url must start with https://")

    base = urlsplit(config.unsubscribe.base_url)
    try:
        port_ok = base.port is None or 0 < base.port
    except ValueError:
        port_ok = False
    if base.scheme not in ("http", "https") or not base.hostname:
        problems.append(f"{config.path}: [unsubscribe] base_url {config.unsubscribe.base_url!r} is not an http(s) URL; "
                        "the one-click unsubscribe link needs it")
    elif base.query or base.fragment or "?" in config.unsubscribe.base_url or "#" in config.unsubscribe.base_url \
            or not port_ok:
        problems.append(f"{config.path}: [unsubscribe] base_url {config.unsubscribe.base_url!r}: the token is added "
                        "to its path (base_url/u/TOKEN), so it may have no query, fragment or invalid port")
    elif transport.leaves_host and not config.unsubscribe.allow_local_url:
        unreachable = unreachable_unsubscribe_url(config.unsubscribe.base_url)
        if unreachable:
            problems.append(f"{config.path}: [unsubscribe] base_url {config.unsubscribe.base_url!r}: {unreachable}; "
                            "messages leave this machine, so recipients must be able to open the link: give the "
                            "https address at which `mailer serve` is reachable")

    if campaign.kind == "prospecting" and "b2b" in campaign.audiences:
        relevance = campaign.relevance
        if relevance is None or not (relevance.job_titles or relevance.industries):
            problems.append(f"{campaign.path}: b2b prospecting needs a [relevance] table with job_titles or "
                            "industries: the offer must relate to the person's role")

    if transport.needs_processor:
        processor = config.processor
        if not processor.name:
            problems.append(f"{config.path}: [processor] name is empty: say which provider sends the mail "
                            "(it processes personal data on your behalf)")
        if not processor.dpa_signed:
            problems.append(f"{config.path}: [processor] dpa_signed is false: a data processing agreement "
                            "(GDPR art. 28) with {0} is required".format(processor.name or "the provider"))
        country = processor.country.strip().upper()
        if not country:
            problems.append(f"{config.path}: [processor] country is empty (ISO code such as \"FR\")")
        elif country not in EEA and not processor.transfer_mechanism:
            problems.append(f"{config.path}: [processor] {processor.name or 'the provider'} is in {country}, outside "
                            "the EEA: set transfer_mechanism to \"adequacy\", \"dpf\" or \"scc\"")
    return problems
