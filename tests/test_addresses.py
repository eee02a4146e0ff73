"""Address normalisation: the cached fast path answers exactly what email-validator answers."""
from __future__ import annotations

import random
import string

from mailer.addresses import NormalisedAddress, normalise, validated

DOMAINS = [
    "example.com", "EXAMPLE.Com", "ex-ample.co.uk", "xn--bcher-kva.example", "bücher.example", "münchen.DE",
    "a..b", "-a.com", "a-.com", "a.com.", ".com", "com", "localhost", "a.invalid", "test", "x.local", "foo.onion",
    "foo.arpa", "1.2.3.4", "[1.2.3.4]", "[IPv6:::1]", "a" * 63 + ".com", "a" * 64 + ".com", "sub." * 60 + "com",
    "é" * 50 + ".example", ".".join(["bücherü" * 2] * 10) + ".example", "a_b.com", "exa mple.com", "ex\u00e9.com", "a.b", "xn--.com", "x.y\u200b.com", "",
]
ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"


def oracle(raw: str) -> NormalisedAddress:
    """normalise() as email-validator alone answers it."""
    return validated(raw.strip())


def local_part(rng: random.Random) -> str:
    local = "".join(rng.choice(ATEXT + "." * 6) for _ in range(rng.choice([1, 2, 5, 20, 63, 64, 65, 80])))
    roll = rng.random()
    if roll < 0.05:
        return '"quoted local"'
    if roll < 0.08:
        return "é" + local
    if roll < 0.10:
        return local + " "
    if roll < 0.12:
        return local + "@x"
    return local


def test_normalise_matches_email_validator_on_fuzzed_addresses() -> None:
    rng = random.Random(20261129)
    checked = valid = 0
    for _ in range(8_000):
        raw = (" " if rng.random() < 0.1 else "") + local_part(rng) + "@" + rng.choice(DOMAINS)
        assert normalise(raw) == oracle(raw), raw
        checked += 1
        valid += oracle(raw).valid
    assert valid > checked * 0.2 and checked - valid > checked * 0.2  # both outcomes well represented


def test_common_addresses_keep_their_case_to_send_and_are_keyed_lower_case() -> None:
    address = normalise("  Jean.Dupont+news@Client.EXAMPLE ")
    assert address == NormalisedAddress(key="jean.dupont+news@client.example", send_to="Jean.Dupont+news@client.example",
                                        valid=True)
    assert normalise("jean@bücher.example").send_to == "jean@xn--bcher-kva.example"
    assert not normalise("jean@localhost").valid and not normalise("jean..dupont@client.example").valid
