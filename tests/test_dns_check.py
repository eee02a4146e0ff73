"""DNS preflight of the From domain, with an injected resolver (public DNS cannot be reached here)."""
from __future__ import annotations

import dns.exception

from mailer.dns_check import preflight

RECORDS = {
    "acme.example": ["v=spf1 include:_spf.brevo.com ~all", "google-site-verification=x"],
    "mail._domainkey.acme.example": ["v=DKIM1; k=rsa; p=MIIBIjANBg"],
    "_dmarc.acme.example": ["v=DMARC1; p=quarantine"],
}


def test_all_present() -> None:
    lines = preflight("acme.example", "mail", lambda name: RECORDS.get(name, []))
    assert "  SPF   ok: v=spf1 include:_spf.brevo.com ~all" in lines
    assert "  DKIM  ok: selector mail" in lines
    assert "  DMARC ok: v=DMARC1; p=quarantine" in lines


def test_missing_records_say_what_to_add() -> None:
    lines = preflight("bare.example", "mail", lambda name: [])
    assert any("SPF   MISSING" in line for line in lines)
    assert any("DKIM  MISSING: no key at mail._domainkey.bare.example" in line for line in lines)
    assert any("DMARC MISSING: add a v=DMARC1 TXT record at _dmarc.bare.example" in line for line in lines)


def test_dns_trouble_is_reported_not_raised() -> None:
    def broken(name: str) -> list[str]:
        raise dns.exception.Timeout()
    lines = preflight("acme.example", "", broken)
    assert any("cannot query acme.example" in line for line in lines)
    assert any("DKIM  not checked" in line for line in lines)
