"""`mailer check`'s DNS preflight and the `no-mx` rule, against a real DNS server on loopback
(dnslib) serving test zones: nothing of dnspython is mocked."""
from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CAMPAIGN, HEADER, Project, counts
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dnslib import AAAA, MX, QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

from mailer.config import parse_nameserver
from mailer.dns_check import aligned, organisational_domain, parse_spf

Records = dict[str, list[tuple[str, object]]]


def keypair(bits: int = 2048) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption()).decode("ascii")
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode("ascii")


PEM, DKIM_RECORD = keypair()
_, OTHER_DKIM_RECORD = keypair()


def ready_domain(domain: str, *, spf: str = "v=spf1 ip4:127.0.0.1 mx -all", dkim: str | None = DKIM_RECORD,
                 dmarc: str | None = None) -> Records:
    """A domain ready for bulk sending (SPF covering the 127.0.0.1 relay, DKIM key of PEM, DMARC
    p=reject with rua, MX), or with the given records replaced (None: left out)."""
    records: Records = {
        domain: [("TXT", spf), ("TXT", "google-site-verification=x"), ("MX", (10, f"mx.{domain}"))],
        f"mx.{domain}": [("A", "127.0.0.2")],
        f"_dmarc.{domain}": [("TXT", dmarc or f"v=DMARC1; p=reject; rua=mailto:dmarc@{domain}")],
    }
    if dkim is not None:
        records[f"mail._domainkey.{domain}"] = [("TXT", dkim)]
    return records


ZONES: Records = {
    **ready_domain("ready.example"),
    **{k: v for k, v in ready_domain("nodmarc.example").items() if not k.startswith("_dmarc.")},
    **ready_domain("twospf.example"),
    **ready_domain("toomany.example", spf="v=spf1 ip4:127.0.0.1 " + " ".join(
        f"include:s{i}.toomany.example" for i in range(11)) + " -all"),
    **{f"s{i}.toomany.example": [("TXT", f"v=spf1 ip4:10.0.0.{i} -all")] for i in range(11)},
    **ready_domain("loop.example", spf="v=spf1 ip4:127.0.0.1 include:loop2.example -all"),
    "loop2.example": [("TXT", "v=spf1 include:loop.example -all")],
    **ready_domain("badkey.example", dkim=OTHER_DKIM_RECORD),
    **ready_domain("brand.example", dkim=None),
    **ready_domain("esp.example"),                               # signs for brand.example: misaligned
    **ready_domain("nobody.example", spf="v=spf1 -all"),
    **ready_domain("plusall.example", spf="v=spf1 ip4:127.0.0.1 +all"),
    **ready_domain("strict.example", dmarc="v=DMARC1; p=quarantine; adkim=s; rua=mailto:d@strict.example"),
    **ready_domain("mail.strict.example"),
    **ready_domain("noreply.example"),
    "redirect.example": [("TXT", "v=spf1 redirect=ready.example"), ("MX", (10, "mx.ready.example"))],
    "_dmarc.redirect.example": [("TXT", "v=DMARC1; p=none")],
    "mail._domainkey.redirect.example": [("TXT", DKIM_RECORD)],
    "other-relay.example": [("A", "192.0.2.10")],
    # the no-mx rule's recipient domains
    "client.example": [("MX", (10, "mx.client.example"))],
    "mx.client.example": [("A", "127.0.0.3")],
    "telco.example": [("A", "127.0.0.4"), ("AAAA", "::1")],    # no MX: mail goes to the A record
    "nullmx.example": [("MX", (0, "."))],
    "txtonly.example": [("TXT", "v=spf1 -all")],               # exists, but no MX and no address
}
ZONES["twospf.example"].append(("TXT", "v=spf1 include:_spf.other.example ~all"))
ZONES["noreply.example"] = [r for r in ZONES["noreply.example"] if r[0] != "MX"]
SLOW = {"slow.example"}  # answered after the test's timeout


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        if name in SLOW:
            time.sleep(1.5)
        if name not in ZONES and not any(k.endswith("." + name) for k in ZONES):
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        wanted = QTYPE[request.q.qtype]
        for rtype, value in ZONES.get(name, []):
            if rtype != wanted:
                continue
            if rtype == "TXT":
                data = str(value).encode()
                rdata: object = TXT([data[i:i + 255] for i in range(0, len(data), 255)])
            elif rtype == "MX":
                preference, host = value  # type: ignore[misc]
                rdata = MX(host, preference)
            else:
                rdata = {"A": A, "AAAA": AAAA}[rtype](str(value))
            reply.add_answer(RR(name, getattr(QTYPE, rtype), rdata=rdata, ttl=60))
        return reply


class TruncatingUdpHandler(DNSHandler):  # type: ignore[misc]
    """Over UDP, answers over 300 bytes are sent empty with the TC bit, so the DKIM keys come over
    TCP, as large records do from real servers (dnslib's own truncation drops the question, which
    dnspython rightly rejects)."""

    def get_reply(self, data: bytes) -> bytes:
        reply: bytes = super().get_reply(data)
        if self.protocol == "udp" and len(reply) > 300:
            truncated = DNSRecord.parse(data).reply()
            truncated.header.tc = 1
            return truncated.pack()  # type: ignore[no-any-return]
        return reply


@pytest.fixture(scope="module")
def dns_server() -> Iterator[str]:
    """A DNS server on a free loopback port (UDP and TCP), as "127.0.0.1:PORT"."""
    logger = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", logf=lambda _: None)
    for _ in range(20):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        try:
            udp = DNSServer(ZoneResolver(), port=port, address="127.0.0.1", logger=logger,
                            handler=TruncatingUdpHandler)
            tcp = DNSServer(ZoneResolver(), port=port, address="127.0.0.1", tcp=True, logger=logger)
        except OSError:
            continue
        break
    else:
        raise RuntimeError("no free port for the test DNS server")
    udp.start_thread()
    tcp.start_thread()
    yield f"127.0.0.1:{port}"
    udp.stop()
    tcp.stop()


@pytest.fixture
def silent_resolver() -> Iterator[str]:
    """A UDP socket that receives queries and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def configure(project: Project, nameserver: str, *, from_domain: str, dkim_domain: str = "",
              bounce: str = "", timeout: float = 1.0, dkim: bool = True, relay: str = "127.0.0.1") -> None:
    config = project.base_config.replace('type = "maildir"', 'type = "smtp"')
    config = config.replace('host = "127.0.0.1"', f'host = "{relay}"')
    if bounce:
        config = config.replace('password_env = "MAILER_SMTP_PASSWORD"',
                                f'password_env = "MAILER_SMTP_PASSWORD"\nbounce_address = "{bounce}"')
    config += f'\n[dns]\nnameservers = ["{nameserver}"]\ntimeout_seconds = {timeout}\n'
    if dkim:
        config += f'\n[dkim]\nselector = "mail"\ndomain = "{dkim_domain}"\n'
    project.write("config.toml", config)
    project.write("campaigns/offer.toml", CAMPAIGN.replace("jeanne@acme.example", f"jeanne@{from_domain}"))


def check(project: Project) -> tuple[int, str]:
    result = project.run("check", str(project.campaign), "--no-smtp", env={"MAILER_DKIM_KEY": PEM})
    return result.exit_code, result.output


# --------------------------------------------------------------------------- check

def test_a_ready_domain_passes(project: Project, dns_server: str) -> None:
    configure(project, dns_server, from_domain="ready.example", bounce="bounces@ready.example")
    code, output = check(project)
    assert code == 0, output
    assert "PROBLEM" not in output and "warning" not in output
    assert "covers the relay 127.0.0.1" in output
    assert "2048-bit key matches the private key; a signed sample verifies" in output
    assert "v=DMARC1; p=reject; rua=mailto:dmarc@ready.example" in output
    assert "SPF and DKIM aligned with the From domain" in output
    assert "Verdict: ready for bulk sending." in output


def test_relay_coverage_through_mx_and_redirect_and_warnings(project: Project, dns_server: str) -> None:
    # the relay is the From domain's MX host, allowed by `mx`, reached through redirect=
    configure(project, dns_server, from_domain="redirect.example", relay="mx.ready.example")
    code, output = check(project)
    assert code == 0, output
    assert ("ok       SPF       redirect.example: v=spf1 redirect=ready.example (2 of 10 DNS lookups; covers the "
            "relay mx.ready.example (127.0.0.2))") in output
    assert "warning  DMARC     redirect.example: p=none: monitoring only" in output
    assert "warning  DMARC     redirect.example: no rua=: you receive no aggregate reports" in output
    assert "Verdict: ready for bulk sending (2 warnings above)." in output
    # a relay outside SPF is said (its provider may send from other addresses), without failing the check
    configure(project, dns_server, from_domain="ready.example", relay="other-relay.example")
    code, output = check(project)
    assert code == 0, output
    assert "warning  SPF       ready.example: the relay other-relay.example (192.0.2.10) is not covered (SPF fail)" \
        in output


def test_missing_dmarc_is_not_ready(project: Project, dns_server: str) -> None:
    configure(project, dns_server, from_domain="nodmarc.example")
    code, output = check(project)
    assert code == 5, output
    assert "PROBLEM  DMARC     nodmarc.example: no DMARC record at _dmarc.nodmarc.example" in output
    assert 'fix: publish a TXT record at _dmarc.nodmarc.example such as "v=DMARC1; p=quarantine;' in output
    assert "Verdict: NOT ready for bulk sending: 1 problem above" in output


def test_two_spf_records_are_an_error(project: Project, dns_server: str) -> None:
    configure(project, dns_server, from_domain="twospf.example")
    code, output = check(project)
    assert code == 5, output
    assert "PROBLEM  SPF       twospf.example: 2 SPF records" in output
    assert "fix: merge them into a single v=spf1 record" in output


def test_more_than_ten_lookups_through_includes(project: Project, dns_server: str) -> None:
    configure(project, dns_server, from_domain="toomany.example")
    code, output = check(project)
    assert code == 5, output
    assert "11 DNS lookups" in output and "more than 10 makes SPF fail" in output


def test_an_include_loop_is_found_and_stops(project: Project, dns_server: str) -> None:
    configure(project, dns_server, from_domain="loop.example")
    code, output = check(project)
    assert code == 5, output
    assert "loop: loop.example → loop2.example → loop.example" in output


def test_a_dkim_key_that_does_not_match_the_private_key(project: Project, dns_server: str) -> None:
    configure(project, dns_server, from_domain="badkey.example")
    code, output = check(project)
    assert code == 5, output
    assert "the key published at mail._domainkey.badkey.example does not match the private key" in output


def test_dkim_signed_for_another_domain_is_misaligned(project: Project, dns_server: str) -> None:
    # brand.example's DMARC is fine, but mail is signed d=esp.example and bounces go to esp.example
    configure(project, dns_server, from_domain="brand.example", dkim_domain="esp.example",
              bounce="bounces@esp.example")
    code, output = check(project)
    assert code == 5, output
    assert "ok       DKIM      esp.example: selector mail" in output  # the signature itself is good
    assert ("PROBLEM  alignment brand.example: neither SPF nor DKIM passes aligned with brand.example: "
            "DKIM d=esp.example (relaxed), SPF for esp.example (relaxed); DMARC fails") in output


def test_relaxed_and_strict_dkim_alignment(project: Project, dns_server: str) -> None:
    # d=mail.strict.example is aligned with strict.example in relaxed mode only; its DMARC says adkim=s.
    # SPF still aligns (the envelope is at strict.example), so the domain is ready, with DKIM unaligned.
    configure(project, dns_server, from_domain="strict.example", dkim_domain="mail.strict.example")
    code, output = check(project)
    assert code == 0, output
    assert "ok       alignment strict.example: SPF aligned with the From domain" in output
    assert aligned("mail.strict.example", "strict.example", "r")
    assert not aligned("mail.strict.example", "strict.example", "s")
    if Path("/usr/share/publicsuffix/public_suffix_list.dat").is_file():  # Debian's publicsuffix package
        assert organisational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organisational_domain("a.b.example.com") == "example.com"


def test_spf_that_authorises_nobody_or_everybody(project: Project, dns_server: str) -> None:
    configure(project, dns_server, from_domain="nobody.example")
    code, output = check(project)
    assert code == 5, output
    assert "'v=spf1 -all' authorises no server: nobody may send mail as nobody.example" in output
    configure(project, dns_server, from_domain="plusall.example")
    code, output = check(project)
    assert code == 5, output
    assert "'+all' lets anyone send mail as this domain" in output


def test_no_dkim_and_no_mx_are_said_with_their_fix(project: Project, dns_server: str) -> None:
    configure(project, dns_server, from_domain="noreply.example", dkim=False)
    code, output = check(project)
    assert code == 5, output
    assert "messages are not signed: Gmail and Yahoo require DKIM of bulk senders" in output
    assert ("PROBLEM  MX        noreply.example: noreply.example has neither an MX nor an A/AAAA record: replies "
            "to the From address cannot arrive") in output


def test_a_resolver_that_does_not_answer_is_exit_6(project: Project, silent_resolver: str) -> None:
    configure(project, silent_resolver, from_domain="ready.example", timeout=0.5)
    started = time.monotonic()
    code, output = check(project)
    assert code == 6, output
    assert time.monotonic() - started < 5
    assert f"DNS did not answer ready.example TXT within 0.5 s ({silent_resolver})" in output
    assert "--no-dns" in output


def test_no_dns_skips_the_preflight(project: Project, silent_resolver: str) -> None:
    configure(project, silent_resolver, from_domain="ready.example", timeout=0.5)
    result = project.run("check", str(project.campaign), "--no-smtp", "--no-dns", env={"MAILER_DKIM_KEY": PEM})
    assert result.exit_code == 0, result.output
    assert "DNS preflight" not in result.output


def test_spf_syntax() -> None:
    assert parse_spf("v=spf1 ip4:192.0.2.0/24 a/24 mx:mx.example//64 include:x.example ~all").errors == ()
    bad = parse_spf("v=spf1 ip4:300.1.1.1 include: foo:bar -all")
    assert len(bad.errors) == 3


def test_nameserver_forms() -> None:
    assert parse_nameserver("9.9.9.9") == ("9.9.9.9", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("2620:fe::fe") == ("2620:fe::fe", 53)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    for bad in ("127.0.0.1:0", "127.0.0.1:x", "[::1]5353", "resolver.example"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)


def test_a_bad_nameserver_is_a_config_error(project: Project) -> None:
    project.write("config.toml", project.base_config + '\n[dns]\nnameservers = ["dns.example"]\n')
    result = project.run("check", str(project.campaign), "--no-dns")
    assert result.exit_code == 2
    assert "'dns.example' is not an IP address" in result.output


# --------------------------------------------------------------------------- the no-mx rule

def test_no_mx_blocks_recipients_whose_domain_takes_no_mail(project: Project, dns_server: str) -> None:
    project.write("config.toml", project.base_config + f'\n[dns]\nnameservers = ["{dns_server}"]\n'
                  'timeout_seconds = 0.5\n')
    project.write("campaigns/offer.toml", CAMPAIGN + "\n[send]\ncheck_mx = true\n")
    row = ",First,Last,Co,CTO,software,b2b,Salon VivaTech 2026,2026-06-01\n"
    project.write("contacts.csv", HEADER + "".join(f"{a}{row}" for a in (
        "claire@client.example", "paul@telco.example", "gone@nxdomain.example", "null@nullmx.example",
        "txt@txtonly.example", "late@slow.example")))
    result = project.send()
    assert result.exit_code == 0, result.output
    assert counts(result.output)["no-mx"] == 3
    sent = {raw.split(b"\nTo: ", 1)[1].split(b"\r\n", 1)[0].decode().split("<")[1].rstrip(">")
            for raw in project.messages()}
    assert sent == {"claire@client.example", "paul@telco.example", "late@slow.example"}
    blocked = dict(project.sql("SELECT address_key, detail FROM send_log WHERE rule = 'no-mx'"))
    assert blocked == {
        "gone@nxdomain.example": "the domain nxdomain.example does not exist",
        "null@nullmx.example": "nullmx.example publishes a null MX: it accepts no mail",
        "txt@txtonly.example": "txtonly.example has neither an MX nor an A/AAAA record",
    }
    assert ("Note: no-mx: DNS did not answer in time for 1 recipient domain (slow.example): their recipients "
            "were not blocked") in result.output


def test_no_mx_is_off_by_default(project: Project) -> None:
    project.write("config.toml", project.base_config + '\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    result = project.send()  # no DNS is asked: 127.0.0.1:9 would time out
    assert result.exit_code == 0, result.output
    assert "no-mx" not in result.output
