"""DNS preflight of the From domain: SPF, DKIM selector, DMARC (deliverability, not law)."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import dns.exception
import dns.resolver

Lookup = Callable[[str], Iterable[str]]


def _txt_lookup(lifetime: float = 3.0) -> Lookup:
    resolver = dns.resolver.Resolver()
    resolver.lifetime = lifetime

    def lookup(name: str) -> list[str]:
        try:
            answer = resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
    return lookup


def preflight(domain: str, dkim_selector: str = "", lookup: Lookup | None = None) -> list[str]:
    """Lines describing SPF, DKIM and DMARC for `domain`; never raises for DNS trouble."""
    lookup = lookup or _txt_lookup()
    lines = [f"DNS preflight for {domain}:"]

    def records(name: str) -> list[str] | None:
        try:
            return list(lookup(name))
        except (dns.exception.DNSException, OSError) as exc:
            lines.append(f"  cannot query {name}: {type(exc).__name__} (offline?)")
            return None

    spf = records(domain)
    if spf is not None:
        found = [r for r in spf if r.lower().startswith("v=spf1")]
        lines.append(f"  SPF   ok: {found[0]}" if found else "  SPF   MISSING: add a v=spf1 TXT record")
    if dkim_selector:
        dkim = records(f"{dkim_selector}._domainkey.{domain}")
        if dkim is not None:
            ok = any("p=" in r for r in dkim)
            where = f"{dkim_selector}._domainkey.{domain}"
            lines.append(f"  DKIM  ok: selector {dkim_selector}" if ok else f"  DKIM  MISSING: no key at {where}")
    else:
        lines.append("  DKIM  not checked (set [dkim] selector in config.toml)")
    dmarc = records(f"_dmarc.{domain}")
    if dmarc is not None:
        found = [r for r in dmarc if r.lower().startswith("v=dmarc1")]
        lines.append(f"  DMARC ok: {found[0]}" if found else f"  DMARC MISSING: add a v=DMARC1 TXT record at _dmarc.{domain}")
    return lines
