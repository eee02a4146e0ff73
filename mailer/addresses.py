"""Email addresses: normalisation, role (generic) addresses, keyed hashes."""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from email.utils import parseaddr
from functools import lru_cache
from ipaddress import ip_address

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


def is_generic(key: str, extra_locals: frozenset[str] = frozenset()) -> bool:
    """True for role addresses such as contact@ or sales@ (never firstname.lastname@)."""
    local = key.rpartition("@")[0].split("+", 1)[0]
    return local in GENERIC_LOCALS or local in extra_locals


def address_hash(secret: bytes, key: str) -> str:
    """Keyed hash of a normalised address: what the suppression list and erasures keep.

    Keyed (HMAC) rather than a plain hash, so that the list cannot be reversed by
    hashing a directory of known addresses without the organisation's secret.
    """
    return hmac.new(secret, b"address:" + key.encode("utf-8"), hashlib.sha256).hexdigest()


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: where cleartext SMTP and http links are acceptable."""
    if host == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_from_header(value: str) -> tuple[str, str]:
    """Split `Name <addr@domain>` into (name, address); raise ValueError with a fix."""
    if any(ch in value for ch in "\r\n"):
        raise ValueError("must be on one line")
    name, address = parseaddr(value)
    if not address or "@" not in address:
        raise ValueError(f"{value!r} is not an address; write it as \"Name <name@example.com>\"")
    try:
        result = validate_email(address, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{address!r} is not a valid address: {exc}") from None
    return name, result.ascii_email or result.normalized
