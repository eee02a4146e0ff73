"""Signed unsubscribe tokens: round trip, tampering, no address inside."""
from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from mailer.addresses import address_hash
from mailer.tokens import InvalidToken, Keys, sign, verify

KEYS = Keys.derive(b"secret-one")


def token_for(address: str = "jeanne@client.example", campaign: str = "2026-12-x", locale: str = "fr") -> str:
    return sign(KEYS, campaign, locale, address_hash(KEYS.address, address))


def test_round_trip() -> None:
    token = token_for()
    parsed = verify(KEYS, token)
    assert parsed.campaign_id == "2026-12-x" and parsed.locale == "fr"
    assert parsed.address_hash == address_hash(KEYS.address, "jeanne@client.example")


def test_the_address_is_not_in_the_token() -> None:
    token = token_for()
    version, campaign, locale, digest, mac = token.split(".")
    decoded = b"".join(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in (campaign, digest, mac))
    assert b"jeanne" not in decoded and "jeanne" not in token


@pytest.mark.parametrize("mutate", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),              # signature altered
    lambda t: t.replace(".fr.", ".en."),                            # locale altered
    lambda t: ".".join([t.split(".")[0], "b3RoZXI", *t.split(".")[2:]]),  # campaign altered
    lambda t: t.rsplit(".", 1)[0],                                  # signature removed
    lambda t: "garbage",
    lambda t: "",
    lambda t: t + "/../../etc",
])
def test_altered_or_garbage_tokens_are_refused(mutate) -> None:
    with pytest.raises(InvalidToken):
        verify(KEYS, mutate(token_for()))


def test_a_token_from_another_secret_is_refused() -> None:
    other = Keys.derive(b"secret-two")
    with pytest.raises(InvalidToken):
        verify(other, token_for())


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def respellings(token: str, field: int) -> list[str]:
    """The token with the last character of one base64 field swapped for every other character
    that decodes to the same bytes (the unused low bits differ)."""
    parts = token.split(".")
    text = parts[field]
    found = []
    for letter in ALPHABET.replace(text[-1], ""):
        candidate = text[:-1] + letter
        if unb64(candidate) == unb64(text):
            found.append(".".join([*parts[:field], candidate, *parts[field + 1:]]))
    return found


def signed(body: str) -> str:
    """`body` with a valid signature, as only the secret's holder can make."""
    mac = hmac.new(KEYS.token, body.encode("ascii"), hashlib.sha256).digest()
    return f"{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


@pytest.mark.parametrize("field", [1, 3, 4], ids=["campaign", "address-hash", "signature"])
def test_only_the_canonical_base64_spelling_verifies(field: int) -> None:
    # a 10-byte campaign id (4 unused bits at the end), a 32-byte hash and MAC (2 unused bits)
    token = token_for(campaign="2026-12-xy")
    alternatives = respellings(token, field)
    if field != 4:  # re-signed: only the spelling is wrong, not the signature
        alternatives = [signed(t.rsplit(".", 1)[0]) for t in alternatives]
    assert len(alternatives) == (15 if field == 1 else 3)
    assert verify(KEYS, token).campaign_id == "2026-12-xy"
    for alternative in alternatives:
        with pytest.raises(InvalidToken, match="malformed token"):
            verify(KEYS, alternative)


def test_suppress_mailto_refuses_a_respelled_token(project) -> None:
    import email
    import re
    from email import policy
    assert project.send().exit_code == 0
    header = email.message_from_bytes(project.messages()[0], policy=policy.default)["List-Unsubscribe"]
    token = re.search(r"subject=unsubscribe-([^>]+)>", header).group(1)
    inbox = project.root / "inbox"
    inbox.mkdir()
    for index, alternative in enumerate(respellings(token, 4)):
        (inbox / f"{index}.eml").write_bytes(f"Subject: unsubscribe-{alternative}\r\n\r\n".encode())
    result = project.run("suppress", "mailto", str(inbox))
    assert result.exit_code == 0
    assert "0 added, 0 already on the list, 3 messages without a valid token." in result.output
    assert result.output.count(": malformed token") == 3
    assert project.sql("select count(*) from suppressions") == [(0,)]
