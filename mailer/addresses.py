"""Email addresses: normalisation, role (generic) addresses, keyed hashes."""
from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import parseaddr
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from urllib.parse import unquote

import idna
from email_validator import EmailNotValidError, validate_email

# Role addresses reach a function, not a person: CNIL treats them as outside the
# consent and objection rules (they still get the footer and the opt-out).
GENERIC_LOCALS: frozenset[str] = frozenset({
    "accueil", "admin", "administration", "bonjour", "billing", "booking", "bureau",
    "commercial", "communication", "compta", "comptabilite", "contact", "contacts",
    "direction", "enquiries", "enquiry", "events", "evenements", "facturation", "finance",
    "general", "hello", "help", "hr", "info", "infos", "information", "informations",
    "inquiries", "jobs", "marketing", "office", "partenariats", "partners", "presse",
    "press", "reception", "recrutement", "rh", "sales", "secretariat", "service",
    "services", "standard", "support", "team", "ventes", "welcome",
})


@dataclass(frozen=True, slots=True)
class NormalisedAddress:
    """`key` is what rows are upserted and compared on; `send_to` is what we deliver to."""

    key: str
    send_to: str
    valid: bool
    reason: str = ""

    @property
    def local(self) -> str:
        return self.key.rpartition("@")[0]

    @property
    def domain(self) -> str:
        return self.key.rpartition("@")[2]


def normalise(raw: str) -> NormalisedAddress:
    """Normalise an address; an invalid one keeps its raw form (lower-cased as key).

    The domain is lower-cased (and IDNA-normalised); the local part is compared
    case-insensitively, so the key lower-cases it too, while `send_to` keeps the
    case the person gave us.
    """
    given = raw.strip()
    fast = _dot_atom_at_known_domain(given)
    if fast is not None:
        return NormalisedAddress(key=fast.lower(), send_to=fast, valid=True)
    return validated(given)


def validated(given: str) -> NormalisedAddress:
    """normalise() by email-validator alone, for an address already stripped."""
    try:
        result = validate_email(given, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        return NormalisedAddress(key=given.lower(), send_to=given, valid=False, reason=str(exc))
    send_to = result.ascii_email or result.normalized
    return NormalisedAddress(key=send_to.lower(), send_to=send_to, valid=True)


# An unquoted ASCII local part (RFC 5322 dot-atom): the common case, which email-validator
# accepts as it is. Anything else (quotes, non-ASCII, odd dots) goes to email-validator.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")


@lru_cache(maxsize=65536)
def _domain(domain: str) -> str | None:
    """The normalised domain email-validator gives for addresses at `domain`, or None when invalid."""
    try:
        result = validate_email("postmaster@" + domain, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError:
        return None
    return (result.ascii_email or result.normalized).rpartition("@")[2]


def _dot_atom_at_known_domain(address: str) -> str | None:
    """What email-validator would return for a dot-atom local part at a valid domain, else None.

    Validating every address spent most of its time on the domain (IDNA, Unicode
    tables), which a list repeats thousands of times: the domain's verdict is
    cached and the local part checked against the dot-atom grammar. The tests
    compare this with email-validator on fuzzed addresses.
    """
    local, at, domain = address.rpartition("@")
    if not at or len(local) > 64 or len(address) > 254 or not _DOT_ATOM.match(local):
        return None
    normalised = _domain(domain)
    if normalised is None or len(local) + 1 + len(normalised) > 254:
        return None
    return f"{local}@{normalised}"


# Mailbox providers for consumers: an address there belongs to a person, whatever its local
# part (info@gmail.com is someone's mailbox, not an organisation's reception desk).
# `[compliance] consumer_domains` extends the list.
CONSUMER_DOMAINS: frozenset[str] = frozenset({
    # international
    "gmail.com", "googlemail.com", "outlook.com", "outlook.fr", "hotmail.com", "hotmail.fr", "hotmail.co.uk",
    "hotmail.de", "hotmail.it", "hotmail.es", "hotmail.be", "live.com", "live.fr", "live.co.uk", "live.be",
    "live.de", "msn.com", "windowslive.com", "yahoo.com", "yahoo.fr", "yahoo.co.uk", "yahoo.de", "yahoo.es",
    "yahoo.it", "ymail.com", "rocketmail.com", "icloud.com", "me.com", "mac.com", "aol.com", "aol.fr",
    "protonmail.com", "proton.me", "pm.me", "tutanota.com", "tuta.io", "zoho.com", "mail.com", "gmx.com",
    "gmx.net", "gmx.de", "gmx.fr", "gmx.at", "gmx.ch", "web.de", "t-online.de", "freenet.de", "posteo.de",
    "mailbox.org", "yandex.com", "yandex.ru", "mail.ru", "qq.com", "163.com", "126.com", "fastmail.com",
    "hey.com", "duck.com",
    # France, Belgium, Switzerland
    "orange.fr", "wanadoo.fr", "free.fr", "sfr.fr", "neuf.fr", "cegetel.net", "club-internet.fr",
    "laposte.net", "bbox.fr", "numericable.fr", "noos.fr", "aliceadsl.fr", "voila.fr", "skynet.be",
    "telenet.be", "bluewin.ch", "sunrise.ch",
    # elsewhere in Europe
    "libero.it", "virgilio.it", "tiscali.it", "alice.it", "tin.it", "telefonica.net", "terra.es",
    "btinternet.com", "sky.com", "virginmedia.com", "ziggo.nl", "kpnmail.nl", "planet.nl", "seznam.cz",
    "wp.pl", "o2.pl", "onet.pl", "interia.pl", "sapo.pt",
})


#: Providers that give consumers mailboxes under many country domains (outlook.de, yahoo.ca,
#: hotmail.nl, gmx.ch...): the name registered under any public suffix is theirs.
CONSUMER_BRANDS: frozenset[str] = frozenset({
    "gmail", "googlemail", "outlook", "hotmail", "live", "msn", "windowslive", "yahoo", "ymail", "rocketmail",
    "aol", "icloud", "protonmail", "proton", "tutanota", "tutamail", "tuta", "gmx", "yandex", "zoho",
    "mail", "email", "inbox", "fastmail", "posteo", "mailbox", "web", "arcor", "freenet", "t-online", "orange",
    "wanadoo", "laposte", "sfr", "free", "bluewin", "libero", "virgilio", "seznam", "onet", "interia", "wp",
    "rediffmail", "qq", "163", "126", "naver", "daum", "hanmail", "rambler", "ukr", "abv", "sapo", "terra",
    "bigpond", "optusnet", "shaw", "rogers", "sympatico", "comcast", "verizon", "att", "sbcglobal",
    "bellsouth", "cox", "charter", "earthlink", "juno", "netzero", "btinternet", "virginmedia", "sky",
    "talktalk", "ntlworld", "blueyonder", "telenet", "skynet", "ziggo", "kpnmail", "planet", "home", "chello",
})
#: Second-level labels under which a country registers names (example.co.uk, example.com.br).
_SECOND_LEVELS = frozenset({"co", "com", "net", "org", "ne", "or", "ac", "gov", "edu", "gen", "ltd", "plc"})


def registered_name(domain: str) -> str:
    """The label a domain's owner registered: "outlook" for mail.outlook.de or outlook.co.uk.

    An approximation of the public suffix list good enough for mailbox providers: the label
    before the top-level domain, or before a country's second level such as co.uk or com.br.
    """
    labels = domain.rstrip(".").split(".")
    if len(labels) >= 3 and labels[-2] in _SECOND_LEVELS and len(labels[-1]) == 2:
        return labels[-3]
    return labels[-2] if len(labels) >= 2 else ""


@dataclass(frozen=True)
class RoleAddresses:
    """Which addresses are an organisation's role addresses (contact@, sales@...), outside the
    consent, source, retention and relevance rules.

    Only for `b2b` contacts, only at an organisation's own domain (never at a consumer
    mailbox provider), and only when the local part is the role word itself: `info+x@` or
    `contact.jane@` may reach a person.
    """

    extra_locals: frozenset[str] = frozenset()
    extra_consumer_domains: frozenset[str] = frozenset()

    @classmethod
    def build(cls, locals_: Iterable[str] = (), consumer_domains: Iterable[str] = ()) -> RoleAddresses:
        return cls(frozenset(v.strip().lower() for v in locals_ if v.strip()),
                   frozenset(d for d in map(normalise_domain, consumer_domains) if d))

    def is_role_word(self, key: str) -> bool:
        local = key.rpartition("@")[0]
        return local in GENERIC_LOCALS or local in self.extra_locals

    def consumer_provider(self, domain: str) -> bool:
        return any(d in CONSUMER_DOMAINS or d in self.extra_consumer_domains for d in domain_and_parents(domain)) \
            or registered_name(domain) in CONSUMER_BRANDS

    def exempt(self, key: str, kind: str) -> bool:
        """True when the address is an organisation's role address (see the class)."""
        return kind == "b2b" and self.is_role_word(key) and not self.consumer_provider(key.rpartition("@")[2])


# --------------------------------------------------------------------------- domains and mailboxes

def normalise_domain(value: str) -> str:
    """A domain as compared everywhere: IDNA (A-label) form, lower case, no trailing dot, no "@".

    "@Bücher.Example." -> "xn--bcher-kva.example". A value that is not a valid domain is
    returned lower-cased and stripped, so that it still compares equal to itself.
    """
    return valid_domain(value) or value.strip().lstrip("@").rstrip(".").lower()


def valid_domain(value: str) -> str | None:
    """normalise_domain(value) when it is a domain mail can go to, else None ("@.x", "@*.x")."""
    domain = value.strip().lstrip("@").rstrip(".").lower()
    return _domain(domain) if domain else None


def domain_and_parents(domain: str) -> list[str]:
    """"a.b.example.com" -> ["a.b.example.com", "b.example.com", "example.com", "com"]."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})


def canonical_mailbox(key: str) -> str:
    """The mailbox an address reaches, whatever its spelling: what an address suppression covers.

    The `+tag` is dropped on every domain (the tag is the person's own sub-address),
    and at gmail.com/googlemail.com the dots too, with the domain made gmail.com.
    `key` is a normalised key (lower case, IDNA domain).
    """
    local, at, domain = key.rpartition("@")
    if not at or ("+" not in local and domain not in GMAIL_DOMAINS):
        return key
    local = local.split("+", 1)[0] or local
    if domain in GMAIL_DOMAINS:
        local, domain = local.replace(".", "") or local, "gmail.com"
    return f"{local}@{domain}"


def address_hash(secret: bytes, key: str) -> str:
    """Keyed hash of an address's text: what the suppression list and erasures keep.

    Keyed (HMAC) rather than a plain hash, so that the list cannot be reversed by
    hashing a directory of known addresses without the organisation's secret.
    What is hashed is the canonical mailbox (`mailbox_hash`); entries made before 0.2
    hold the hash of the normalised key, which `lookup_hashes` still matches.
    """
    return hmac.new(secret, b"address:" + key.encode("utf-8"), hashlib.sha256).hexdigest()


def mailbox_hash(secret: bytes, key: str) -> str:
    """The keyed hash an address is suppressed and erased under: its canonical mailbox's."""
    return address_hash(secret, canonical_mailbox(key))


def lookup_hashes(secret: bytes, key: str) -> tuple[str, ...]:
    """Every hash an entry about this address may have been stored under: the canonical
    mailbox's first, the normalised key's own last (entries made before the mailbox was
    canonical; erased send-log rows, which must stay apart per spelling). One when they agree."""
    canonical = canonical_mailbox(key)
    if canonical == key:
        return (address_hash(secret, key),)
    return (address_hash(secret, canonical), address_hash(secret, key))


# Names that never reach the public internet (RFC 2606, 6761, 6762, 7686, 8375, 9476, common practice).
_PRIVATE_SUFFIXES = ("localhost", "local", "internal", "intranet", "lan", "home", "corp", "home.arpa",
                     "localdomain", "invalid", "test", "example", "onion", "alt", "arpa")


def public_host_problem(host: str) -> str | None:
    """Why a recipient on the internet could not reach `host`, or None when it is a public name.

    `host` is read as a browser reads it (WHATWG URL: percent-decoding, full-width and other
    compatibility forms, IPv4 in 1 to 4 parts, decimal, octal or hex). Refused: localhost and
    other reserved or private names, names without a dot, and IP addresses (IPv4 embedded in
    IPv6 included) that are loopback, private, link-local or otherwise not global.
    """
    host = unicodedata.normalize("NFKC", unquote(host)).strip("[]").rstrip(".").lower()
    if not host:
        return "no host name"
    ip = _browser_ip(host)
    if ip is not None:
        return None if ip.is_global else f"{host} is a loopback or private address"
    if "." not in host:
        return f"{host} is not a public name"
    if any(host == s or host.endswith("." + s) for s in _PRIVATE_SUFFIXES):
        return f"{host} is a local or reserved name"
    return None


# IPv6 prefixes whose last 32 bits are an IPv4 address a packet may end up at.
_EMBEDDING_IPV4 = tuple(ip_network(n) for n in ("::/96", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96",
                                                "64:ff9b:1::/48", "2002::/16"))


def _browser_ip(host: str) -> IPv4Address | IPv6Address | None:
    """The address a browser connects to for this host, when it is an IP address; for IPv6 with an
    IPv4 address inside (mapped, translated, NAT64, 6to4), that IPv4 address."""
    if ":" in host:
        try:
            ip6 = IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return None
        if int(ip6) <= 1:  # :: and ::1, not IPv4-compatible addresses
            return ip6
        for network in _EMBEDDING_IPV4:
            if ip6 in network:
                if network.prefixlen == 16:  # 6to4: 2002:AABB:CCDD::/48
                    return IPv4Address((int(ip6) >> 80) & 0xFFFFFFFF)
                return IPv4Address(int(ip6) & 0xFFFFFFFF)
        return ip6
    parts = host.split(".")
    if parts and parts[-1] == "":
        parts.pop()
    if not parts or not _IPV4_PART.match(parts[-1]) or len(parts) > 4:
        return None
    numbers = []
    for part in parts:
        if not _IPV4_PART.match(part):
            return None
        numbers.append(int(part, 16) if part[:2] in ("0x", "0X") else int(part, 8) if len(part) > 1 and
                       part[0] == "0" else int(part or "0"))
    value = 0
    for number in numbers[:-1]:
        if number > 255:
            return None
        value = value * 256 + number
    last = numbers[-1]
    if last >= 256 ** (5 - len(numbers)):
        return None
    return IPv4Address(value * 256 ** (5 - len(numbers)) + last)


_IPV4_PART = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)\Z")


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: where cleartext SMTP and http links are acceptable."""
    if host == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_from_header(value: str) -> tuple[str, str]:
    """Split `Name <addr@domain>` into (name, address); raise ValueError with a fix.

    A domain whose labels mix scripts (a Cyrillic "а" in "acme") is refused: it is another
    domain that looks like ours (`mixed_script_problem`)."""
    if any(ch in value for ch in "\r\n"):
        raise ValueError("must be on one line")
    name, address = parseaddr(value)
    if not address or "@" not in address:
        raise ValueError(f"{value!r} is not an address; write it as \"Name <name@example.com>\"")
    try:
        result = validate_email(address, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{address!r} is not a valid address: {exc}") from None
    problem = mixed_script_problem(result.domain)
    if problem is not None:
        raise ValueError(f"{address!r}: {problem}")
    return name, result.ascii_email or result.normalized


# Scripts a label may combine (UTS #39 "highly restrictive"): Japanese, Chinese, Korean writing.
_SCRIPT_MIXES = (frozenset({"Latin", "Han", "Hiragana", "Katakana"}), frozenset({"Latin", "Han", "Bopomofo"}),
                 frozenset({"Latin", "Han", "Hangul"}))
_SCRIPT_WORDS = {"CJK": "Han", "HANGUL": "Hangul", "HIRAGANA": "Hiragana", "KATAKANA": "Katakana",
                 "BOPOMOFO": "Bopomofo"}


def _script(ch: str) -> tuple[str, str] | None:
    """(script, character name) of a letter or of a mark proper to a script; None for what every
    script shares (digits, the hyphen, combining accents). Read from the character's Unicode name,
    whose first word is its script for letters ("CYRILLIC SMALL LETTER A", "CJK UNIFIED IDEOGRAPH-…")."""
    category = unicodedata.category(ch)
    if category[0] not in "LM":
        return None
    name = unicodedata.name(ch, "")
    words = name.split()
    if not words or words[0] in ("COMBINING", "MODIFIER", "KATAKANA-HIRAGANA"):
        return None
    word = words[1] if words[0] in ("HALFWIDTH", "FULLWIDTH") and len(words) > 1 else words[0]
    return _SCRIPT_WORDS.get(word, word.capitalize()), name


def mixed_script_problem(domain: str) -> str | None:
    """Why `domain` (Unicode or xn-- form) looks like another one, or None: a label mixing scripts,
    such as "аcme" with a Cyrillic "а", which IDNA encodes to xn--cme-5cd without a word. Each
    label must be of one script, digits, hyphens and accents aside ("bücher" is Latin); Han may go
    with Hiragana, Katakana, Bopomofo or Hangul as Japanese, Chinese and Korean are written."""
    for label in domain.strip().rstrip(".").split("."):
        if label[:4].lower() == "xn--":
            try:
                label = idna.decode(label)
            except (idna.IDNAError, UnicodeError):
                continue  # not a domain: the address check says so
        scripts: dict[str, str] = {}
        for ch in label:
            found = _script(ch)
            if found is not None:
                scripts.setdefault(found[0], f"{ch!r} is {found[1]}")
        if len(scripts) > 1 and not any(scripts.keys() <= allowed for allowed in _SCRIPT_MIXES):
            said = "; ".join(scripts.values())
            return (f"the domain label {label!r} mixes {' and '.join(scripts)} letters ({said}): it only looks "
                    f"like the name you meant (it is sent as {_ascii(domain)}); type the domain again in one script "
                    "(a letter copied from elsewhere is the usual cause)")
    return None


def _ascii(domain: str) -> str:
    try:
        return idna.encode(domain.strip().rstrip("."), uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return domain
