"""DNS preflight: can mailbox providers authenticate this campaign's mail, and can replies arrive?

Deliverability, not law. Since 2024 Gmail and Yahoo require of bulk senders SPF and DKIM,
a DMARC record, a From domain that SPF or DKIM aligns with, and one-click unsubscribe
(mailer always adds it). `preflight` asks DNS what a receiving server would ask and says,
for each problem, what to publish. `mail_domain_problems` serves the gate's `no-mx` rule.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import dns.exception
import dns.nameserver
import dns.resolver

from .config import Config, DnsSettings, parse_nameserver
from .errors import MailerError

#: `mailer check`: the configuration is valid but not ready for bulk sending.
EXIT_NOT_READY = 5
SPF_LOOKUP_LIMIT = 10  # RFC 7208 §4.6.4
MIN_DKIM_BITS = 1024

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DnsUnavailable(MailerError):
    """DNS could not be asked: the resolver timed out, refused, or cannot be reached (exit 6)."""

    exit_code = 6


# --------------------------------------------------------------------------- asking DNS

class DnsResolver:
    """dnspython, with the configured name servers and timeout; a timeout or an unreachable
    server raises DnsUnavailable instead of looking like a missing record."""

    def __init__(self, settings: DnsSettings) -> None:
        self.timeout = settings.timeout_seconds
        if settings.nameservers:
            self.described = ", ".join(settings.nameservers)
            self._resolver = dns.resolver.Resolver(configure=False)
            servers: list[str | dns.nameserver.Nameserver] = []
            for text in settings.nameservers:
                address, port = parse_nameserver(text)
                servers.append(dns.nameserver.Do53Nameserver(address, port))
            self._resolver.nameservers = servers
        else:
            self.described = "the system resolver"
            try:
                self._resolver = dns.resolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                raise DnsUnavailable("no DNS resolver is configured on this system (/etc/resolv.conf)",
                                     hint="set [dns] nameservers = [\"IP\"] in config.toml") from None
        self._resolver.timeout = self.timeout
        self._resolver.lifetime = self.timeout
        self._resolver.use_edns(0, 0, 4096)
        self._resolver.cache = dns.resolver.LRUCache()  # one run asks the same names again

    def _answer(self, name: str, rdtype: str) -> tuple[list[object], bool]:
        """The records, and whether the name exists at all."""
        try:
            answer = self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return [], False
        except dns.resolver.NoAnswer:
            return [], True
        except dns.exception.Timeout:
            raise DnsUnavailable(f"DNS did not answer {name} {rdtype} within {self.timeout:g} s "
                                 f"({self.described})", hint=self._hint) from None
        except dns.resolver.NoNameservers as exc:
            raise DnsUnavailable(f"no DNS server could answer {name} {rdtype} ({self.described}): {exc}",
                                 hint=self._hint) from None
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsUnavailable(f"cannot ask DNS for {name} {rdtype} ({self.described}): "
                                 f"{type(exc).__name__}: {exc}", hint=self._hint) from None
        return list(answer), True

    @property
    def _hint(self) -> str:
        return ("check the network and [dns] nameservers / timeout_seconds in config.toml, or skip the DNS "
                "checks with --no-dns")

    def txt(self, name: str) -> list[str]:
        records, _ = self._answer(name, "TXT")
        return [b"".join(r.strings).decode("utf-8", "replace") for r in records]  # type: ignore[attr-defined]

    def addresses(self, name: str) -> list[IpAddress]:
        found: list[IpAddress] = []
        for rdtype in ("A", "AAAA"):
            records, exists = self._answer(name, rdtype)
            found += [ipaddress.ip_address(r.address) for r in records]  # type: ignore[attr-defined]
            if not exists:
                break
        return found

    def mx(self, name: str) -> list[tuple[int, str]] | None:
        """(preference, host) of the name's MX records; None when the name does not exist."""
        records, exists = self._answer(name, "MX")
        if not exists:
            return None
        return sorted((r.preference, r.exchange.to_text(omit_final_dot=True))  # type: ignore[attr-defined]
                      for r in records)

    def dkim_dnsfunc(self) -> Callable[..., bytes | None]:
        """dkimpy's `dnsfunc`: the TXT record of a name, through this resolver."""
        def lookup(name: bytes, timeout: int = 5) -> bytes | None:
            found = self.txt(name.decode("ascii").rstrip("."))
            return found[0].encode("utf-8") if found else None
        return lookup


# --------------------------------------------------------------------------- organisational domain

_PSL = Path("/usr/share/publicsuffix/public_suffix_list.dat")


@lru_cache(maxsize=1)
def _public_suffix_rules() -> frozenset[str]:
    """The public suffix list when the system has it (Debian's publicsuffix package), else empty."""
    try:
        text = _PSL.read_text(encoding="utf-8")
    except OSError:
        return frozenset()
    return frozenset(line.split()[0].lower() for line in text.splitlines() if line and not line.startswith("//"))


def organisational_domain(domain: str) -> str:
    """The registered domain (DMARC's organisational domain): one label below the public suffix.
    Without the public suffix list, the last two labels."""
    labels = domain.lower().rstrip(".").split(".")
    rules = _public_suffix_rules()
    suffix_length = 1
    for i in range(len(labels)):
        candidate = ".".join(labels[i:])
        wildcard = ".".join(["*", *labels[i + 1:]])
        if "!" + candidate in rules:
            suffix_length = len(labels) - i - 1
            break
        if candidate in rules or (i + 1 < len(labels) and wildcard in rules):
            suffix_length = len(labels) - i
            break
    return ".".join(labels[-(suffix_length + 1):]) if len(labels) > suffix_length else domain.lower()


def aligned(domain: str, from_domain: str, mode: str) -> bool:
    """DMARC identifier alignment: strict = identical, relaxed = same organisational domain."""
    if mode == "s":
        return domain.lower() == from_domain.lower()
    return organisational_domain(domain) == organisational_domain(from_domain)


# --------------------------------------------------------------------------- findings

Severity = Literal["ok", "warning", "problem"]


@dataclass(frozen=True)
class Finding:
    """One thing the preflight found; a problem makes the domain not ready for bulk sending."""

    area: str          # SPF, DKIM, DMARC, MX, alignment
    domain: str
    severity: Severity
    message: str
    fix: str = ""


@dataclass
class Preflight:
    resolver: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "problem"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ready(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        out = [f"DNS preflight (asking {self.resolver}):"]
        label = {"ok": "ok", "warning": "warning", "problem": "PROBLEM"}
        for f in self.findings:
            out.append(f"  {label[f.severity]:<8} {f.area:<9} {f.domain}: {f.message}")
            if f.fix:
                out.append(f"  {'':<8} {'':<9} fix: {f.fix}")
        if self.ready:
            count = len(self.warnings)
            extra = f" ({count} warning{'s' if count > 1 else ''} above)" if count else ""
            out.append(f"Verdict: ready for bulk sending{extra}.")
        else:
            count = len(self.problems)
            out.append(f"Verdict: NOT ready for bulk sending: {count} problem{'s' if count > 1 else ''} above "
                       "(Gmail and Yahoo bulk-sender rules).")
        return out


# --------------------------------------------------------------------------- SPF

_MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_COUNTED = {"include", "a", "mx", "ptr", "exists"}
_RESULTS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


@dataclass(frozen=True)
class SpfTerm:
    qualifier: str
    mechanism: str
    target: str = ""                                            # a domain (include, a, mx, ptr, exists)
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None   # ip4, ip6
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True)
class SpfRecord:
    text: str
    terms: tuple[SpfTerm, ...]
    redirect: str
    errors: tuple[str, ...]


def parse_spf(text: str) -> SpfRecord:
    """The record's mechanisms and redirect, and what in it does not follow RFC 7208."""
    terms: list[SpfTerm] = []
    errors: list[str] = []
    redirect = ""
    for token in text.split()[1:]:
        qualifier = token[0] if token[0] in "+-~?" else "+"
        body = token[1:] if token[0] in "+-~?" else token
        head = re.match(r"[A-Za-z][A-Za-z0-9_.-]*", body)
        name = head.group(0).lower() if head else ""
        rest = body[len(name):]
        if rest.startswith("=") and token[0] not in "+-~?":
            if name == "redirect":
                redirect = rest[1:].lower().rstrip(".")
            elif name not in ("exp",) and not re.fullmatch(r"[a-z][a-z0-9_.-]*", name):
                errors.append(f"{token!r} is not a valid modifier")
            continue
        if name not in _MECHANISMS:
            errors.append(f"{token!r} is not an SPF mechanism")
            continue
        try:
            terms.append(_parse_mechanism(qualifier, name, rest))
        except ValueError as exc:
            errors.append(f"{token!r}: {exc}")
    return SpfRecord(text, tuple(terms), redirect, tuple(errors))


def _parse_mechanism(qualifier: str, name: str, rest: str) -> SpfTerm:
    if name in ("ip4", "ip6"):
        if not rest.startswith(":"):
            raise ValueError("an address is required")
        network = ipaddress.ip_network(rest[1:], strict=False)
        if (network.version == 4) != (name == "ip4"):
            raise ValueError(f"not an IPv{name[-1]} address")
        return SpfTerm(qualifier, name, network=network)
    if name == "all":
        if rest:
            raise ValueError("'all' takes no argument")
        return SpfTerm(qualifier, name)
    target, cidr4, cidr6 = "", 32, 128
    if rest.startswith(":"):
        target, _, cidrs = rest[1:].partition("/")
        cidrs = "/" + cidrs if cidrs else ""
    else:
        cidrs = rest
    if cidrs:
        if name not in ("a", "mx"):
            raise ValueError("a prefix length is allowed only on a and mx")
        match = re.fullmatch(r"(?:/(\d{1,2}))?(?://(\d{1,3}))?", cidrs)
        if not match or int(match.group(1) or 32) > 32 or int(match.group(2) or 128) > 128:
            raise ValueError("bad prefix length")
        cidr4, cidr6 = int(match.group(1) or 32), int(match.group(2) or 128)
    if name in ("include", "exists") and not target:
        raise ValueError("a domain is required")
    if target and not re.fullmatch(r"[A-Za-z0-9_%{}.+,=/-]+\.?", target) or ".." in target:
        raise ValueError("not a domain")
    return SpfTerm(qualifier, name, target.lower().rstrip("."), cidr4=cidr4, cidr6=cidr6)


def spf_records(resolver: DnsResolver, domain: str) -> list[str]:
    return [r for r in resolver.txt(domain) if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")]


@dataclass
class _SpfWalk:
    """One walk of a domain's SPF tree: the DNS lookups it costs and what is wrong on the way."""

    resolver: DnsResolver
    lookups: int = 0
    errors: list[str] = field(default_factory=list)

    def count(self, domain: str, path: tuple[str, ...] = ()) -> None:
        if domain in path:
            self.errors.append(f"loop: {' → '.join((*path, domain))}")
            return
        if self.lookups > 3 * SPF_LOOKUP_LIMIT:
            return
        found = spf_records(self.resolver, domain)
        if len(found) != 1:
            if path:  # the top domain's own record count is reported on its own
                self.errors.append(f"{domain} (included by {path[-1]}) has {len(found) or 'no'} SPF records")
            return
        record = parse_spf(found[0])
        if path:
            self.errors += [f"{domain}: {e}" for e in record.errors]
        for term in record.terms:
            if term.mechanism in _COUNTED:
                self.lookups += 1
            if term.mechanism == "include" and "%" not in term.target:
                self.count(term.target, (*path, domain))
        if record.redirect:
            self.lookups += 1
            if "%" not in record.redirect:
                self.count(record.redirect, (*path, domain))


def spf_result(resolver: DnsResolver, ip: IpAddress, domain: str, path: tuple[str, ...] = ()) -> str:
    """SPF's answer for mail from `ip` claiming `domain` (RFC 7208 check_host, without macros and ptr)."""
    if domain in path or len(path) > SPF_LOOKUP_LIMIT:
        return "permerror"
    found = spf_records(resolver, domain)
    if len(found) != 1:
        return "none" if not found else "permerror"
    record = parse_spf(found[0])
    if record.errors:
        return "permerror"
    for term in record.terms:
        if _matches(resolver, term, ip, domain, (*path, domain)):
            return _RESULTS[term.qualifier]
    if record.redirect and "%" not in record.redirect:
        return spf_result(resolver, ip, record.redirect, (*path, domain))
    return "neutral"


def _matches(resolver: DnsResolver, term: SpfTerm, ip: IpAddress, domain: str, path: tuple[str, ...]) -> bool:
    target = term.target or domain
    if "%" in target:  # macros depend on the message: not evaluated
        return False
    if term.mechanism == "all":
        return True
    if term.mechanism in ("ip4", "ip6"):
        return term.network is not None and ip.version == term.network.version and ip in term.network
    if term.mechanism == "include":
        return spf_result(resolver, ip, target, path) == "pass"
    if term.mechanism == "exists":
        return bool([a for a in resolver.addresses(target) if a.version == 4])
    if term.mechanism in ("a", "mx"):
        hosts = [target] if term.mechanism == "a" else [h for _, h in (resolver.mx(target) or [])][:10]
        prefix = term.cidr4 if ip.version == 4 else term.cidr6
        network = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
        return any(a in network for h in hosts for a in resolver.addresses(h) if a.version == ip.version)
    return False  # ptr: discouraged by RFC 7208, not evaluated


def check_spf(resolver: DnsResolver, domain: str, relay: tuple[str, list[IpAddress]] | None) -> list[Finding]:
    """One SPF record, valid, a safe `all`, within 10 DNS lookups, authorising someone (the relay)."""
    def problem(message: str, fix: str) -> Finding:
        return Finding("SPF", domain, "problem", message, fix)

    found = spf_records(resolver, domain)
    if not found:
        return [problem("no SPF record", f"publish a TXT record at {domain} such as \"v=spf1 "
                        "include:<your provider's SPF domain> -all\"")]
    if len(found) > 1:
        return [problem(f"{len(found)} SPF records ({' | '.join(found)}): receivers treat that as an error "
                        "(permerror)", "merge them into a single v=spf1 record")]
    record = parse_spf(found[0])
    findings: list[Finding] = []
    if record.errors:
        findings.append(problem(f"invalid syntax in {record.text!r}: {'; '.join(record.errors)}",
                                "correct the record (RFC 7208)"))
    walk = _SpfWalk(resolver)
    walk.count(domain)
    if walk.errors:
        findings.append(problem(f"the SPF tree is broken: {'; '.join(walk.errors)}",
                                "fix or remove the include/redirect named"))
    if walk.lookups > SPF_LOOKUP_LIMIT:
        findings.append(problem(f"{walk.lookups} DNS lookups (include/a/mx/ptr/exists/redirect, counted through "
                                f"includes): more than {SPF_LOOKUP_LIMIT} makes SPF fail (permerror)",
                                "remove unused includes, or replace a/mx/includes by ip4:/ip6: ranges"))
    final_all = _effective_all(resolver, record)
    if final_all == "+":
        findings.append(problem("'+all' lets anyone send mail as this domain",
                                "end the record with -all (or ~all)"))
    elif final_all in ("?", ""):
        what = "'?all' says nothing about" if final_all == "?" else "no 'all': nothing is said of"
        findings.append(Finding("SPF", domain, "warning", f"{what} the servers not listed",
                                "end the record with -all (or ~all)"))
    if not any(t.qualifier == "+" and t.mechanism != "all" for t in record.terms) and not record.redirect:
        findings.append(problem(f"{record.text!r} authorises no server: nobody may send mail as {domain}",
                                "add your sending servers (ip4:/include: of your provider) before -all"))
    if any(t.mechanism == "ptr" for t in record.terms):
        findings.append(Finding("SPF", domain, "warning", "uses ptr, which RFC 7208 says not to use (slow, and "
                                "some receivers ignore it)", "replace ptr by ip4:/ip6: or a"))
    if any(f.severity == "problem" for f in findings):
        return findings
    covered = ""
    if relay is not None:
        host, addresses = relay
        results = {str(a): spf_result(resolver, a, domain) for a in addresses}
        missed = [a for a, r in results.items() if r != "pass"]
        if not addresses:
            findings.append(Finding("SPF", domain, "warning", f"the relay {host} has no address: whether SPF "
                                    "covers it is not known"))
        elif missed:
            findings.append(Finding(
                "SPF", domain, "warning",
                f"the relay {host} ({', '.join(missed)}) is not covered (SPF {', '.join(sorted(set(results.values())))})",
                "include your provider's SPF domain (its outgoing servers may differ from the relay's address), "
                "or add ip4:/ip6: for the relay"))
        else:
            covered = f"; covers the relay {host}" + (f" ({', '.join(results)})" if host not in results else "")
    findings.insert(0, Finding("SPF", domain, "ok", f"{record.text} ({walk.lookups} of {SPF_LOOKUP_LIMIT} "
                               f"DNS lookups{covered})"))
    return findings


def _effective_all(resolver: DnsResolver, record: SpfRecord, depth: int = 0) -> str:
    """The qualifier of the `all` that ends evaluation ("" when there is none), through redirect."""
    for term in record.terms:
        if term.mechanism == "all":
            return term.qualifier
    if record.redirect and depth < SPF_LOOKUP_LIMIT and "%" not in record.redirect:
        found = spf_records(resolver, record.redirect)
        if len(found) == 1:
            return _effective_all(resolver, parse_spf(found[0]), depth + 1)
    return ""


# --------------------------------------------------------------------------- DKIM

def _tags(text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), "".join(value.split()))
    return tags


def check_dkim(resolver: DnsResolver, selector: str, domain: str, private_key: bytes,
               sample_from: str) -> list[Finding]:
    """The selector's public key exists, parses, has at least 1024 bits and matches the private
    key; a sample signed with that key verifies against DNS."""
    import base64
    import binascii

    import dkim
    import dkim.crypto

    name = f"{selector}._domainkey.{domain}"

    def problem(message: str, fix: str) -> list[Finding]:
        return [Finding("DKIM", domain, "problem", message, fix)]

    records = [r for r in resolver.txt(name) if "p=" in r]
    if not records:
        return problem(f"no DKIM key at {name}", f"publish the public key of the private key mailer signs with "
                       f"as a TXT record at {name} (\"v=DKIM1; k=rsa; p=<base64>\")")
    if len(records) > 1:
        return problem(f"{len(records)} DKIM key records at {name}", "keep one")
    tags = _tags(records[0])
    if tags.get("k", "rsa").lower() != "rsa":
        return problem(f"k={tags['k']}: mailer signs with RSA", "publish an RSA key for this selector")
    if not tags.get("p"):
        return problem(f"the key at {name} is revoked (empty p=)", "publish the current public key")
    try:
        public = dkim.crypto.parse_public_key(base64.b64decode(tags["p"], validate=True))
    except (binascii.Error, ValueError, dkim.crypto.UnparsableKeyError) as exc:
        return problem(f"the key at {name} does not parse ({exc})", "publish the base64 DER public key in p=")
    bits = int(public["modulus"]).bit_length()
    findings: list[Finding] = []
    if bits < MIN_DKIM_BITS:
        findings += problem(f"the key at {name} has {bits} bits; receivers ignore keys under {MIN_DKIM_BITS}",
                            "generate a 2048-bit key and publish it")
    try:
        private = dkim.crypto.parse_pem_private_key(private_key)
    except dkim.crypto.UnparsableKeyError as exc:
        return findings + problem(f"the private key does not parse ({exc})", "give an RSA private key in PEM")
    if private["modulus"] != public["modulus"]:
        return findings + problem(f"the key published at {name} does not match the private key mailer signs "
                                  "with: every signature fails", "publish the public key of the configured "
                                  "private key (or configure the matching private key)")
    from .dkim_signing import DkimSigner
    sample = (f"From: {sample_from}\r\nTo: preflight@example.invalid\r\nSubject: mailer check\r\n"
              "Date: Tue, 01 Dec 2026 00:00:00 +0000\r\nMessage-ID: <preflight@mailer.invalid>\r\n"
              "List-Unsubscribe: <https://example.invalid/u/x>\r\n"
              "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nsample\r\n").encode()
    signed = DkimSigner(selector, domain, private_key).sign(sample)
    if not dkim.verify(signed, dnsfunc=resolver.dkim_dnsfunc(), minkey=MIN_DKIM_BITS if bits >= MIN_DKIM_BITS
                       else 512):
        return findings + problem("a sample message signed with the configured key does not verify against "
                                  f"the key at {name}", "publish the public key exactly as generated")
    if not findings:
        findings.append(Finding("DKIM", domain, "ok", f"selector {selector}: {bits}-bit key matches the private "
                                "key; a signed sample verifies"))
    return findings


# --------------------------------------------------------------------------- DMARC and MX

@dataclass(frozen=True)
class Dmarc:
    domain: str          # where the record was found (the From domain or its organisational domain)
    policy: str
    adkim: str
    aspf: str


def check_dmarc(resolver: DnsResolver, from_domain: str) -> tuple[Dmarc | None, list[Finding]]:
    found_at = from_domain
    records = [r for r in resolver.txt(f"_dmarc.{from_domain}") if r.lower().replace(" ", "").startswith("v=dmarc1")]
    org = organisational_domain(from_domain)
    if not records and org != from_domain:
        found_at = org
        records = [r for r in resolver.txt(f"_dmarc.{org}") if r.lower().replace(" ", "").startswith("v=dmarc1")]
    fix = (f"publish a TXT record at _dmarc.{from_domain} such as \"v=DMARC1; p=quarantine; "
           f"rua=mailto:dmarc@{org}\"")
    if not records:
        return None, [Finding("DMARC", from_domain, "problem", f"no DMARC record at _dmarc.{from_domain}", fix)]
    if len(records) > 1:
        return None, [Finding("DMARC", from_domain, "problem",
                              f"{len(records)} DMARC records at _dmarc.{found_at}: receivers ignore them all",
                              "keep a single v=DMARC1 record")]
    tags = _tags(records[0])
    policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return None, [Finding("DMARC", from_domain, "problem",
                              f"{records[0]!r}: p= must be none, quarantine or reject", fix)]
    if found_at != from_domain:
        policy = tags.get("sp", policy).lower()
    adkim, aspf = tags.get("adkim", "r").lower()[:1], tags.get("aspf", "r").lower()[:1]
    findings = [Finding("DMARC", from_domain, "ok", f"{records[0]}" + (f" (at {found_at})" if found_at != from_domain
                                                                        else ""))]
    if policy == "none":
        findings.append(Finding("DMARC", from_domain, "warning", "p=none: monitoring only, spoofed mail is "
                                "still delivered", "move to p=quarantine, then p=reject, once reports are clean"))
    if not tags.get("rua"):
        findings.append(Finding("DMARC", from_domain, "warning", "no rua=: you receive no aggregate reports",
                                f"add rua=mailto:dmarc@{org}"))
    return Dmarc(found_at, policy, adkim, aspf), findings


def mail_host_problem(resolver: DnsResolver, domain: str) -> str | None:
    """Why mail to `domain` cannot arrive (no such domain, null MX, neither MX nor A/AAAA), or None."""
    exchanges = resolver.mx(domain)
    if exchanges is None:
        return f"the domain {domain} does not exist"
    if exchanges:
        if all(host in ("", ".") for _, host in exchanges):
            return f"{domain} publishes a null MX: it accepts no mail"
        return None
    if resolver.addresses(domain):
        return None
    return f"{domain} has neither an MX nor an A/AAAA record"


def check_mx(resolver: DnsResolver, domain: str, what: str) -> list[Finding]:
    problem = mail_host_problem(resolver, domain)
    if problem:
        return [Finding("MX", domain, "problem", f"{problem}: {what} cannot arrive",
                        f"publish an MX record for {domain} pointing to a server that accepts its mail")]
    exchanges = resolver.mx(domain) or []
    if not exchanges:
        return [Finding("MX", domain, "warning", f"no MX record: {what} rely on the A record fallback",
                        f"publish an MX record for {domain}")]
    return [Finding("MX", domain, "ok", f"{what}: {', '.join(h for _, h in exchanges)}")]


# --------------------------------------------------------------------------- the preflight

def _relay(config: Config, resolver: DnsResolver) -> tuple[str, list[IpAddress]] | None:
    """The SMTP relay's addresses, when mail leaves through one (the smtp transport)."""
    if config.transport.type != "smtp":
        return None
    host = config.smtp.host
    try:
        return host, [ipaddress.ip_address(host)]
    except ValueError:
        return host, resolver.addresses(host)


def preflight(config: Config, from_address: str, environ: Mapping[str, str],
              resolver: DnsResolver | None = None) -> Preflight:
    """What a receiving mailbox provider would find in DNS for this sender. Raises DnsUnavailable
    when DNS cannot be asked (a timeout is never taken for a missing record)."""
    resolver = resolver or DnsResolver(config.dns)
    result = Preflight(resolver.described)
    from_domain = from_address.rpartition("@")[2].lower().rstrip(">").strip()
    bounce_domain = config.smtp.bounce_address.rpartition("@")[2].lower() if config.smtp.bounce_address else ""
    envelope_domain = bounce_domain or from_domain
    settings = config.dkim
    dkim_domain = (settings.domain or from_domain).lower() if settings.selector else ""

    relay = _relay(config, resolver)
    spf_ok: dict[str, bool] = {}
    for domain in dict.fromkeys(d for d in (from_domain, envelope_domain, dkim_domain) if d):
        found = check_spf(resolver, domain, relay if domain == envelope_domain else None)
        spf_ok[domain] = not any(f.severity == "problem" for f in found)
        result.findings += found

    dkim_ok = False
    if settings.selector:
        pem = environ.get(settings.private_key_env, "").encode("ascii", "replace")
        found = check_dkim(resolver, settings.selector, dkim_domain, pem, from_address)
        dkim_ok = not any(f.severity == "problem" for f in found)
        result.findings += found
    else:
        result.findings.append(Finding("DKIM", from_domain, "problem", "messages are not signed: Gmail and Yahoo "
                                       "require DKIM of bulk senders", "generate a key pair, publish the public "
                                       "key, and set [dkim] selector in config.toml (the private key in "
                                       "$MAILER_DKIM_KEY)"))

    dmarc, found = check_dmarc(resolver, from_domain)
    result.findings += found
    if dmarc is not None:
        spf_aligned = spf_ok.get(envelope_domain, False) and aligned(envelope_domain, from_domain, dmarc.aspf)
        dkim_aligned = dkim_ok and aligned(dkim_domain, from_domain, dmarc.adkim)
        mode = {"s": "strict", "r": "relaxed"}
        if spf_aligned or dkim_aligned:
            which = " and ".join(n for n, ok in (("SPF", spf_aligned), ("DKIM", dkim_aligned)) if ok)
            result.findings.append(Finding("alignment", from_domain, "ok", f"{which} aligned with the From domain"))
        else:
            reasons = []
            if settings.selector:
                reasons.append(f"DKIM d={dkim_domain} ({mode[dmarc.adkim]})" if dkim_ok and not dkim_aligned
                               else "DKIM does not pass")
            reasons.append(f"SPF for {envelope_domain} ({mode[dmarc.aspf]})"
                           if spf_ok.get(envelope_domain) else f"SPF for {envelope_domain} does not pass")
            result.findings.append(Finding(
                "alignment", from_domain, "problem",
                f"neither SPF nor DKIM passes aligned with {from_domain}: {', '.join(reasons)}; DMARC fails",
                f"sign with d={from_domain} ([dkim] domain) or send with a bounce address at {from_domain}"))

    result.findings += check_mx(resolver, from_domain, "replies to the From address")
    if bounce_domain and bounce_domain != from_domain:
        result.findings += check_mx(resolver, bounce_domain, "bounces to [smtp] bounce_address")
    return result


# --------------------------------------------------------------------------- the no-mx rule

@dataclass
class MailDomains:
    """Recipient domains that can receive no mail (with why), and those DNS did not answer for."""

    without_mail: dict[str, str] = field(default_factory=dict)
    unanswered: list[str] = field(default_factory=list)


def mail_domain_problems(domains: Iterable[str], resolver: DnsResolver, workers: int = 32,
                         on_looked_up: Callable[[int], None] | None = None) -> MailDomains:
    """Looks each domain up once, concurrently (on_looked_up(1) after each). A domain DNS did not
    answer for is not blocked."""
    result = MailDomains()

    def one(domain: str) -> tuple[str, str | None, bool]:
        try:
            return domain, mail_host_problem(resolver, domain), True
        except DnsUnavailable:
            return domain, None, False

    unique = sorted(set(domains))
    if not unique:
        return result
    with ThreadPoolExecutor(max_workers=min(workers, len(unique))) as pool:
        for domain, problem, answered in pool.map(one, unique):
            if not answered:
                result.unanswered.append(domain)
            elif problem:
                result.without_mail[domain] = problem
            if on_looked_up is not None:
                on_looked_up(1)
    return result


__all__ = ["EXIT_NOT_READY", "DnsResolver", "DnsUnavailable", "Finding", "MailDomains", "Preflight",
           "aligned", "mail_domain_problems", "organisational_domain", "parse_spf", "preflight"]
