"""Building the message bytes directly, once per message.

The standard library's EmailMessage re-parses every header it is given, which
made MIME building the slowest step of a send. Our inputs are already
sanitised (no control characters, validated ASCII addresses), so we write the
RFC 5322 / MIME structure ourselves with the standard library's encoders:
`formataddr` and `Header` for RFC 2047 words, `b2a_qp` for quoted-printable.
The tests parse every message back with the `email` package.
"""
from __future__ import annotations

import binascii
import secrets
from email.header import Header
from email.utils import formataddr

CRLF = "\r\n"


def encode_words(value: str) -> str:
    """A header value, RFC 2047-encoded (and folded) only when it is not plain ASCII."""
    if value.isascii() and len(value) < 900:
        return value
    return Header(value, "utf-8").encode(linesep=CRLF)


def mailbox(name: str, address: str) -> str:
    """`Name <address>` with the name quoted or encoded as needed."""
    return formataddr((name, address), charset="utf-8")


def quoted_printable(text: str) -> bytes:
    """Quoted-printable with CRLF line ends (b2a_qp keeps the CRLFs it is given)."""
    crlf = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
    # Soft breaks follow the data's line ends, and are bare LF when it has none.
    return binascii.b2a_qp(crlf.encode("utf-8"), istext=True).replace(b"=\n", b"=\r\n")


def _part(subtype: str, body: str) -> bytes:
    return (f"Content-Type: text/{subtype}; charset=\"utf-8\"{CRLF}"
            f"Content-Transfer-Encoding: quoted-printable{CRLF}{CRLF}").encode("ascii") + quoted_printable(body)


def build_message(headers: list[tuple[str, str]], text: str, html: str | None) -> bytes:
    """Headers (already encoded, no CR/LF inside) plus a text part and an optional HTML part."""
    head = "".join(f"{name}: {value}{CRLF}" for name, value in headers) + f"MIME-Version: 1.0{CRLF}"
    if html is None:
        return head.encode("ascii") + _part("plain", text) + b"\r\n"
    boundary = f"=_mailer_{secrets.token_hex(12)}"
    return b"".join((
        (head + f"Content-Type: multipart/alternative; boundary=\"{boundary}\"{CRLF}{CRLF}"
         f"--{boundary}{CRLF}").encode("ascii"),
        _part("plain", text),
        f"{CRLF}--{boundary}{CRLF}".encode("ascii"),
        _part("html", html),
        f"{CRLF}--{boundary}--{CRLF}".encode("ascii"),
    ))
