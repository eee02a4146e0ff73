"""Each rule of SPEC §2 blocking and not blocking, on the pure gate functions."""
from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest

from mailer.addresses import RoleAddresses, address_hash, lookup_hashes, mailbox_hash, normalise
from mailer.config import Campaign, Relevance
from mailer.contacts import ContactData
from mailer.gate import GateContext, RelevanceMatcher, decide

KEY = b"k" * 32
TODAY = date(2026, 11, 29)


def campaign(**changes: object) -> Campaign:
    base = Campaign(path=Path("c.toml"), id="c1", kind="prospecting", audiences=("b2b",), subject="s",
                    from_="a@acme.example", reply_to="", locale="fr", soft_opt_in=False, list_name="l", csv=None,
                    html_template=None, text_template=None,
                    relevance=Relevance(job_titles=["CTO", "directeur informatique"], industries=["telecom"]),
                    rate_per_second=0)
    return replace(base, **changes)  # type: ignore[arg-type]


def contact(email: str = "jeanne.martin@client.example", **changes: object) -> ContactData:
    values: dict[str, object] = dict(kind="b2b", first_name="Jeanne", job_title="CTO", industry="software",
                                     source="Salon 2026", collected_at=date(2026, 6, 1))
    values.update(changes)
    return ContactData(address=normalise(email), **values)  # type: ignore[arg-type]


def context(c: Campaign | None = None, **changes: object) -> GateContext:
    c = c or campaign()
    relevance = c.relevance
    ctx = GateContext(today=TODAY, retention_years=3, lookup_hashes=lambda k: lookup_hashes(KEY, k),
                      relevance=RelevanceMatcher.build(relevance.job_titles, relevance.industries) if relevance else None)
    for name, value in changes.items():
        setattr(ctx, name, value)
    return ctx


def rule_for(person: ContactData, c: Campaign | None = None, **ctx_changes: object) -> str | None:
    c = c or campaign()
    return decide(person, c, context(c, **ctx_changes)).blocked_by


def test_a_relevant_b2b_prospect_with_a_source_is_allowed() -> None:
    assert rule_for(contact()) is None


def test_invalid_address() -> None:
    assert rule_for(contact("not-an-address")) == "invalid-address"
    assert rule_for(contact("two@@client.example")) == "invalid-address"
    assert rule_for(contact("Jeanne.Martin@Client.EXAMPLE")) is None


def test_suppressed_address_and_domain() -> None:
    person = contact()
    hashed = address_hash(KEY, person.address.key)
    assert rule_for(person, suppressed_hashes={hashed}) == "suppressed"
    assert rule_for(contact("JEANNE.MARTIN@client.example"), suppressed_hashes={hashed}) == "suppressed"
    assert rule_for(person, suppressed_domains={"client.example"}) == "suppressed"
    assert rule_for(person, suppressed_domains={"other.example"}, suppressed_hashes={"0" * 64}) is None


def test_suppression_applies_even_to_generic_addresses() -> None:
    generic = contact("contact@client.example", source="")
    assert rule_for(generic, suppressed_domains={"client.example"}) == "suppressed"


def test_duplicate_within_one_run() -> None:
    c = campaign()
    ctx = context(c)
    assert decide(contact(), c, ctx).blocked_by is None
    assert decide(contact("Jeanne.Martin@client.example"), c, ctx).blocked_by == "duplicate"
    assert decide(contact("other@client.example"), c, ctx).blocked_by is None


def test_already_sent() -> None:
    person = contact()
    assert rule_for(person, delivered={person.address.key}) == "already-sent"
    assert rule_for(person, delivered={"someone@else.example"}) is None


def test_audience() -> None:
    assert rule_for(contact(kind="b2c", consent="opt-in", consent_at=date(2026, 5, 2), consent_proof="form /newsletter")) == "audience"
    both = campaign(audiences=("b2b", "b2c"))
    assert rule_for(contact(kind="b2c", consent="opt-in", consent_at=date(2026, 5, 2), consent_proof="form /newsletter"), both) is None


def test_missing_source_for_prospecting_and_newsletters_only() -> None:
    assert rule_for(contact(source="")) == "missing-source"
    assert rule_for(contact(source=""), campaign(kind="newsletter")) == "missing-source"
    members = campaign(kind="members")
    assert rule_for(contact(source="", member=True), members) is None


def test_retention_expired_counts_from_the_latest_of_collection_interaction_consent() -> None:
    assert rule_for(contact(collected_at=date(2023, 11, 28))) == "retention-expired"
    assert rule_for(contact(collected_at=date(2023, 11, 29))) is None  # exactly 3 years: not more
    assert rule_for(contact(collected_at=date(2020, 1, 1), last_interaction_at=date(2025, 1, 1))) is None
    both = campaign(audiences=("b2c",), kind="newsletter")
    assert rule_for(contact(kind="b2c", consent="opt-in", consent_proof="form /newsletter",
                            collected_at=date(2020, 1, 1), consent_at=date(2024, 1, 1)), both) is None
    assert rule_for(contact(collected_at=date(2023, 1, 1)), retention_years=5) is None


def test_not_member() -> None:
    members = campaign(kind="members", audiences=("b2b", "b2c"))
    assert rule_for(contact(member=False), members) == "not-member"
    assert rule_for(contact(member=True), members) is None


def test_no_consent_for_consumers() -> None:
    b2c = campaign(kind="newsletter", audiences=("b2c",))
    assert rule_for(contact(kind="b2c"), b2c) == "no-consent"
    assert rule_for(contact(kind="b2c", consent="opt-in", consent_at=date(2026, 5, 2), consent_proof="form /newsletter"), b2c) is None
    assert rule_for(contact(kind="b2c", consent="customer"), b2c) == "no-consent"
    assert rule_for(contact(kind="b2c", consent="customer"), replace(b2c, soft_opt_in=True)) is None


def test_members_campaigns_need_no_opt_in() -> None:
    members = campaign(kind="members", audiences=("b2c",))
    assert rule_for(contact(kind="b2c", member=True), members) is None


def test_no_partner_consent() -> None:
    b2c = campaign(kind="newsletter", audiences=("b2c",))
    from_partner = contact(kind="b2c", consent="opt-in", consent_at=date(2026, 5, 2), consent_proof="form /newsletter", source_type="partner")
    assert rule_for(from_partner, b2c) == "no-partner-consent"
    assert rule_for(replace(from_partner, partner_consent=True), b2c) is None
    assert rule_for(contact(source_type="partner")) is None  # b2b lead resale is free


@pytest.mark.parametrize("title,industry,relevant", [
    ("CTO", "", True),
    ("cto & co-founder", "", True),
    ("Directeur Informatique Adjoint", "", True),
    ("DIRECTEUR  INFORMATIQUE", "", True),
    ("Directeur", "", False),
    ("Doctor", "", False),
    ("Comptable", "Télécom", True),
    ("Comptable", "telecoms", False),
    ("Comptable", "food", False),
    ("", "", False),
])
def test_not_relevant_word_match(title: str, industry: str, relevant: bool) -> None:
    result = rule_for(contact(job_title=title, industry=industry))
    assert (result is None) is relevant


def test_relevance_applies_to_b2b_prospecting_only() -> None:
    assert rule_for(contact(job_title="Comptable", industry="food"), campaign(kind="newsletter")) is None


def test_accents_are_ignored_on_both_sides() -> None:
    accented = campaign(relevance=Relevance(job_titles=["Directeur Général"], industries=[]))
    assert rule_for(contact(job_title="directeur general delegue", industry=""), accented) is None


def test_generic_addresses_skip_personal_data_rules_but_not_the_others() -> None:
    generic = contact("contact@pme.example", source="", job_title="", industry="", collected_at=date(2015, 1, 1))
    assert rule_for(generic) is None
    assert rule_for(replace(generic, collected_at=None)) is None
    b2c = campaign(kind="newsletter", audiences=("b2c",))
    assert rule_for(replace(generic, kind="b2c", source="Salon", collected_at=date(2026, 1, 1)), b2c) == "no-consent"
    assert rule_for(generic, delivered={generic.address.key}) == "already-sent"
    assert rule_for(replace(generic, kind="b2c")) == "audience"
    assert rule_for(contact("jeanne.martin@pme.example", source="")) == "missing-source"


def test_configured_generic_locals_extend_the_list() -> None:
    person = contact("achats@pme.example", job_title="", industry="")
    assert rule_for(person) == "not-relevant"
    assert rule_for(person, roles=RoleAddresses.build(["Achats"])) is None


@pytest.mark.parametrize("email", [
    "info@gmail.com", "contact+jane.doe@gmail.com", "support@orange.fr", "contact@GoogleMail.com",
    "sales@hotmail.fr", "hello@yahoo.fr", "info@free.fr", "contact@laposte.net", "info@gmx.de", "info@web.de",
    "info@icloud.com", "contact@outlook.com", "info@mail.orange.fr",
    # the same providers under other country domains
    "info@protonmail.ch", "contact@outlook.de", "info@yahoo.ca", "hello@hotmail.nl", "info@live.nl",
    "contact@aol.de", "info@arcor.de", "contact@mail.de", "info@outlook.es", "info@yahoo.co.uk", "info@gmx.ch",
])
def test_consumers_are_never_mailed_through_the_role_address_exemption(email: str) -> None:
    newsletter = campaign(kind="newsletter", audiences=("b2b", "b2c"))
    # A consumer without consent, at a mailbox provider, with a role word (or a tagged one) as local part.
    assert rule_for(contact(email, kind="b2c", source="Salon 2026"), newsletter) == "no-consent"
    # Even declared b2b, a mailbox at a consumer provider belongs to a person: every rule applies.
    b2b = contact(email, kind="b2b", source="", job_title="", industry="")
    assert rule_for(b2b, newsletter) == "missing-source"
    assert rule_for(replace(b2b, source="Salon", collected_at=None), newsletter) == "retention-expired"
    assert rule_for(replace(b2b, source="Salon")) == "not-relevant"


def test_the_exemption_needs_the_role_word_itself_at_an_organisations_domain() -> None:
    for email in ("contact+jane.doe@pme.example", "contact.jane@pme.example", "jane.contact@pme.example",
                  "info+news@pme.example"):
        assert rule_for(contact(email, source="", job_title="", industry="")) == "missing-source", email
    assert rule_for(contact("Contact@PME.example", source="", job_title="", industry="")) is None
    assert rule_for(contact("info@sub.pme.example", source="", job_title="", industry="")) is None


def test_configured_consumer_domains_extend_the_list() -> None:
    person = contact("info@famille-dupont.example", source="", job_title="", industry="")
    assert rule_for(person) is None
    roles = RoleAddresses.build((), ["Famille-Dupont.example."])
    assert rule_for(person, roles=roles) == "missing-source"


def test_opt_in_counts_only_with_its_date_and_proof() -> None:
    b2c = campaign(kind="newsletter", audiences=("b2c",))
    given = contact(kind="b2c", consent="opt-in", consent_at=date(2026, 5, 2), consent_proof="form /newsletter")
    assert rule_for(given, b2c) is None
    for missing, expected in (({"consent_at": None}, "consent_at"), ({"consent_proof": ""}, "consent_proof"),
                              ({"consent_at": None, "consent_proof": ""}, "consent_at and consent_proof")):
        decision = decide(replace(given, **missing), b2c, context(b2c))  # type: ignore[arg-type]
        assert decision.blocked_by == "no-consent"
        assert f"without {expected}" in decision.detail


def test_an_unknown_collection_date_counts_as_expired() -> None:
    undated = contact(collected_at=None)
    decision = decide(undated, campaign(), context())
    assert decision.blocked_by == "retention-expired"
    assert "no collection date" in decision.detail and "--collected-at" in decision.detail
    # A later interaction or consent does not stand in for the collection date.
    assert rule_for(contact(collected_at=None, last_interaction_at=date(2026, 10, 1))) == "retention-expired"


@pytest.mark.parametrize("stored,mailed", [
    ("jeanne@client.example", "jeanne+promo@client.example"),
    ("jeanne+old@client.example", "jeanne@client.example"),
    ("jeanne+old@client.example", "Jeanne+New@Client.example"),
    ("j.eanne.d@gmail.com", "jeanned@gmail.com"),
    ("jeanned@googlemail.com", "j.e.a.n.n.e.d+x@gmail.com"),
    ("JeanneD@gmail.com", "jeanne.d@GoogleMail.com"),
])
def test_an_address_entry_covers_the_mailbox_however_it_is_spelt(stored: str, mailed: str) -> None:
    entry = mailbox_hash(KEY, normalise(stored).key)
    assert rule_for(contact(mailed), suppressed_hashes={entry}) == "suppressed"


def test_dots_matter_outside_gmail_and_entries_made_before_keep_working() -> None:
    entry = mailbox_hash(KEY, normalise("jeanne.d@client.example").key)
    assert rule_for(contact("jeanned@client.example"), suppressed_hashes={entry}) is None
    # An entry of mailer 0.1 holds the hash of the address as typed (tag included).
    legacy = address_hash(KEY, "jeanne+promo@client.example")
    assert rule_for(contact("jeanne+promo@client.example"), suppressed_hashes={legacy}) == "suppressed"


def test_a_domain_entry_covers_its_subdomains() -> None:
    assert rule_for(contact("a@mail.client.example"), suppressed_domains={"client.example"}) == "suppressed"
    assert rule_for(contact("a@client.example"), suppressed_domains={"mail.client.example"}) is None
    assert rule_for(contact("a@notclient.example"), suppressed_domains={"client.example"}) is None


def test_rules_apply_in_the_spec_order() -> None:
    everything_wrong = contact("x@client.example", kind="b2c", source="", collected_at=date(2000, 1, 1))
    hashed = address_hash(KEY, everything_wrong.address.key)
    assert rule_for(everything_wrong, suppressed_hashes={hashed}, delivered={everything_wrong.address.key}) \
        == "suppressed"
    assert rule_for(everything_wrong, delivered={everything_wrong.address.key}) == "already-sent"
    assert rule_for(everything_wrong) == "audience"


def test_no_mx_blocks_the_domains_looked_up_before_deciding() -> None:
    without_mail = {"dead.example": "the domain dead.example does not exist"}
    assert rule_for(contact("jeanne@dead.example"), domains_without_mail=without_mail) == "no-mx"
    assert rule_for(contact("jeanne@client.example"), domains_without_mail=without_mail) is None
    # the compliance rules come first: a suppressed person at a dead domain shows as suppressed
    assert rule_for(contact("jeanne@dead.example"), domains_without_mail=without_mail,
                    suppressed_domains={"dead.example"}) == "suppressed"
