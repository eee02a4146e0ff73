"""Rendering details: the derived text part, MIME encoding round trips."""
from __future__ import annotations

import email
import re
from email import policy
from email.header import decode_header, make_header
from pathlib import Path

import inscriptis
import pytest
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from mailer.mime import Fixed, build_message, encode_words, mailbox
from mailer.render import _TEXT_CONFIG, derive_text_template

SAMPLE = Path(__file__).resolve().parents[1] / "mailer" / "sample" / "templates" / "cloud-audit.html.j2"


def environments() -> tuple[SandboxedEnvironment, SandboxedEnvironment]:
    html = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)
    text = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    return html, text


CONTACTS = [
    {"first_name": "Claire", "job_title": "DSI", "company": "Client & Fils <SA>"},
    {"first_name": "", "job_title": "", "company": ""},
]


@pytest.mark.parametrize("source", [
    SAMPLE.read_text("utf-8"),
    "<h1>Hi {{ contact.first_name }}</h1><ul>{% for x in ['a', 'b'] %}<li>{{ x }} {{ contact.company }}</li>"
    "{% endfor %}</ul><p>See <a href='https://acme.example/{{ contact.job_title }}'>our offer</a>.</p>",
    "<table><tr><td>{{ contact.first_name }}</td><td>{% if contact.company %}{{ contact.company }}{% else %}"
    "vous{% endif %}</td></tr></table>",
])
@pytest.mark.parametrize("values", CONTACTS)
def test_the_derived_text_template_gives_the_text_of_each_rendered_message(source: str, values: dict) -> None:
    html_env, text_env = environments()
    context = {"contact": values, "campaign": {"id": "c"}, "organization": {}}
    derived = derive_text_template(text_env, source)
    assert derived is not None
    per_message = inscriptis.get_text(html_env.from_string(source).render(context), _TEXT_CONFIG)
    once = text_env.from_string(derived).render(context)
    assert once.split() == per_message.split()


@pytest.mark.parametrize("source", [
    "{% include 'other.html' %}",
    "<p>{{ contact.bio|safe }}</p>",
    "<title>{% if contact.first_name %}x{% endif %}</title><p>hi</p>",
    "<p title=\"{% if contact.first_name %}x{% endif %}\">hi</p>",
])
def test_templates_it_cannot_follow_fall_back_to_per_message_conversion(source: str) -> None:
    assert derive_text_template(environments()[1], source) is None


def test_mime_round_trip_with_non_ascii_and_special_characters() -> None:
    subject = "Claire, votre audit cloud offert — très « spécial » " + "x" * 120
    raw = build_message([
        ("From", mailbox("Acme, \"Sales\"", "sales@acme.example")),
        ("To", mailbox("Zoé Ünïcode", "zoe@client.example")),
        ("Subject", encode_words(subject)),
        ("List-Unsubscribe", "<https://mail.acme.fr/u/" + "A" * 200 + ">"),
    ], "Bonjour Zoé,\n\n" + "é" * 300 + "\n.\nFrom here\n", "<p>Bonjour Zoé</p>" + "<p>x</p>" * 200)
    message = email.message_from_bytes(raw, policy=policy.default)
    assert message["Subject"] == subject
    assert message["From"].addresses[0].display_name == 'Acme, "Sales"'
    assert message["To"].addresses[0].display_name == "Zoé Ünïcode"
    assert message["List-Unsubscribe"] == "<https://mail.acme.fr/u/" + "A" * 200 + ">"
    text = message.get_body(("plain",)).get_content()
    assert text.replace("\r\n", "\n") == "Bonjour Zoé,\n\n" + "é" * 300 + "\n.\nFrom here\n"
    assert message.get_body(("html",)).get_content().startswith("<p>Bonjour Zoé</p>")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert b"\n" not in raw.replace(b"\r\n", b"")


PIECES = [
    ["<p>Bonjour Zoé</p>\n", Fixed("<div style='x'>" + "é=" * 60), "Salon « Viva » ", Fixed("</div>\n"), ""],
    ["trailing space ", Fixed("\tand tab\t"), "\n", Fixed(".\n"), ".", Fixed("From x\n")],
    ["line end split\r", Fixed("\nin two"), "x" * 200, Fixed("y" * 75), "z"],
    [Fixed("only fixed")],
    ["a" * 75, Fixed("b" * 76), "c\r\nd\re\n"],
    ["a" * 73 + "=", Fixed("a" * 74 + " b"), "a" * 70 + "é", "end"],
]


@pytest.mark.parametrize("pieces", PIECES)
def test_a_body_encoded_in_pieces_decodes_to_the_whole_body(pieces: list[str]) -> None:
    whole = "".join(pieces)
    raw = build_message([("Subject", "x")], pieces, pieces)
    message = email.message_from_bytes(raw, policy=policy.default)
    expected = whole.replace("\r\n", "\n").replace("\r", "\n")
    assert message.get_body(("plain",)).get_content().replace("\r\n", "\n") == expected
    assert message.get_body(("html",)).get_content().replace("\r\n", "\n") == expected
    for part in message.iter_parts():
        encoded = part.get_payload(decode=False)
        assert max(len(line) for line in encoded.splitlines()) <= 76
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")


def test_random_bodies_in_random_pieces_decode_to_the_whole_body() -> None:
    import random
    rng = random.Random(7)
    alphabet = "ab =.\t\r\n\u00e9\u20ac\U0001f600-"
    for _ in range(1500):
        pieces = ["".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 74, 75, 76, 77, 150])))
                  for _ in range(rng.randint(1, 6))]
        pieces = [Fixed(p) if rng.random() < 0.5 else p for p in pieces]
        raw = build_message([("Subject", "x")], pieces, None)
        message = email.message_from_bytes(raw, policy=policy.default)
        whole = "".join(pieces).replace("\r\n", "\n").replace("\r", "\n")
        whole += "\n" if whole and not whole.endswith("\n") else ""  # a body ends with a line end
        assert message.get_content().replace("\r\n", "\n") == whole, pieces
        assert max(len(line) for line in message.get_payload(decode=False).splitlines() or [""]) <= 76


EVIL = "=?utf-8?b?WA0KQmNjOiBld0BldmlsLmV4YW1wbGUNCg==?="  # decodes to "X\r\nBcc: ew@evil.example\r\n"
ODD_TEXT = [
    EVIL, f"{EVIL}, votre audit", "a=?b and c?=d", "x" * 5000, "é" * 3000, "word " * 600 + "end",
    'O\'Brien "the boss" \\ Durand, SA; <ceo@evil.example> @home', "Zoé 😀 👩‍👩‍👧", "שלום עולם مرحبا بك",
    "Claire Durand", "J. Martin", "a" * 70, "a " * 60 + "b", "Claire  Durand (two spaces)",
]


def shown_name(raw: bytes, header: str) -> str:
    """The display name a mail client shows for `header`, decoded as RFC 2047 says.

    Python 3.11's policy.default keeps the space between two adjacent encoded words of a
    display name (cpython gh-128110), which RFC 2047 says to ignore: decode those with
    email.header, which follows the RFC.
    """
    value = re.search(rb"\r\n" + header.encode() + rb": (.*?)\r\n(?! )", b"\r\n" + raw, re.S)
    assert value is not None
    unfolded = value.group(1).replace(b"\r\n", b"").decode("ascii")
    if "=?" not in unfolded:
        parsed = email.message_from_bytes(raw, policy=policy.default)[header]
        return parsed.addresses[0].display_name
    return str(make_header(decode_header(unfolded.rpartition(" <")[0])))


def header_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


@pytest.mark.parametrize("text", ODD_TEXT)
def test_header_text_displays_as_typed_and_is_folded(text: str) -> None:
    raw = build_message([
        ("From", mailbox(text, "sales@acme.example", "From")),
        ("To", mailbox(text, "zoe@client.example", "To")),
        ("Subject", encode_words(text, "Subject")),
    ], "Bonjour\n", None)
    message = email.message_from_bytes(raw, policy=policy.default)
    assert message["Subject"] == text
    assert [a.addr_spec for a in message["To"].addresses] == ["zoe@client.example"]
    assert [a.addr_spec for a in message["From"].addresses] == ["sales@acme.example"]
    assert shown_name(raw, "To") == text and shown_name(raw, "From") == text
    assert "Bcc" not in message and not message.defects
    assert all(len(line) <= 78 for line in header_lines(raw)), max(map(len, header_lines(raw)))
