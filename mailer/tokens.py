"""Signed unsubscribe tokens.

A token carries the campaign id, the locale of the page to show and the keyed
hash of the address — never the address — and an HMAC-SHA256 over all three.
Because it holds the hash and not a contact id, an opt-out still works after the
contact was erased.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

from .locales import available

VERSION = "1"
#: the version field of a test message's token (`mailer send --test-to`): it verifies, and
#: records nothing when used
TEST_VERSION = "t1"
_SHAPE = re.compile(r"^[A-Za-z0-9_\-.]{40,400}$")


@dataclass(frozen=True)
class Keys:
    """Sub-keys derived from the organisation's secret, one per purpose."""

    address: bytes
    token: bytes

    @classmethod
    def derive(cls, secret: bytes) -> Keys:
        return cls(
            address=hmac.new(secret, b"mailer/address-hash/v1", hashlib.sha256).digest(),
            token=hmac.new(secret, b"mailer/unsubscribe-token/v1", hashlib.sha256).digest(),
        )


@dataclass(frozen=True)
class UnsubscribeToken:
    campaign_id: str
    locale: str
    address_hash: str  # hex, as kept on the suppression list
    test: bool = False  # from a test message: using it records nothing


class InvalidToken(ValueError):
    """The token is malformed, altered or forged."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Decode, accepting only the one text `_b64` gives: base64 ignores the unused low bits of the
    last character, so without this check several spellings of one token all verify."""
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token") from None
    if not hmac.compare_digest(_b64(data).encode("ascii"), text.encode("ascii")):
        raise InvalidToken("malformed token")
    return data


def sign(keys: Keys, campaign_id: str, locale: str, address_hash: str, *, test: bool = False) -> str:
    if locale not in available():
        raise ValueError(f"no locale {locale!r}: a token's locale is one of {', '.join(available())} (mailer/locales/)")
    body = ".".join((TEST_VERSION if test else VERSION, _b64(campaign_id.encode("utf-8")), locale,
                     _b64(bytes.fromhex(address_hash))))
    mac = hmac.new(keys.token, body.encode("ascii"), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def verify(keys: Keys, token: str) -> UnsubscribeToken:
    """Return what the token says, or raise InvalidToken. Constant-time comparison."""
    if not _SHAPE.match(token):
        raise InvalidToken("malformed token")
    body, _, mac_text = token.rpartition(".")
    given = _unb64(mac_text)
    expected = hmac.new(keys.token, body.encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(given, expected):
        raise InvalidToken("bad signature")
    parts = body.split(".")
    if len(parts) != 4 or parts[0] not in (VERSION, TEST_VERSION) or parts[2] not in available():
        raise InvalidToken("unknown token format")
    try:
        campaign_id = _unb64(parts[1]).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidToken("malformed token") from None
    digest = _unb64(parts[3])
    if len(digest) != 32:
        raise InvalidToken("malformed token")
    return UnsubscribeToken(campaign_id=campaign_id, locale=parts[2], address_hash=digest.hex(),
                            test=parts[0] == TEST_VERSION)
