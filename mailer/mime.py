"""Building the message bytes directly, once per message.

The standard library's EmailMessage re-parses every header it is given, which
made MIME building the slowest step of a send. Our inputs are already
sanitised (no control characters, validated ASCII addresses), so we write the
RFC 5322 / MIME structure ourselves with the standard library's encoders:
`formataddr` and `Header` for RFC 2047 words, `b2a_qp` for quoted-printable.
The tests parse every message back with the `email` package.

A body can be given as pieces: the pieces that are the same in every message of
a run (`Fixed`: the footer's markup) are encoded once, the others per message,
and the encoded pieces are joined with soft line breaks.
"""
from __future__ import annotations

import binascii
import functools
import secrets
from collections.abc import Sequence
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
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    # Soft breaks follow the data's line ends, and are bare LF when it has none.
    encoded = binascii.b2a_qp(text.replace("\n", "\r\n").encode("utf-8"), istext=True)
    if b"=\n" in encoded:
        encoded = encoded.replace(b"=\n", b"=\r\n")
    # b2a_qp can end a line with an encoded space or tab ("=20") a little too long for RFC 2045.
    if b"=20\r\n" in encoded or b"=09\r\n" in encoded or encoded.endswith((b"=20", b"=09")):
        lines = encoded.split(b"\r\n")
        if max(map(len, lines)) > 76:
            encoded = b"\r\n".join(map(_fold, lines))
    return encoded


def _fold(line: bytes) -> bytes:
    """An encoded line cut into lines of at most 76 characters with soft breaks, escapes kept whole."""
    out = []
    while len(line) > 76:
        cut = 75
        if line[cut - 1:cut] == b"=":
            cut -= 1
        elif line[cut - 2:cut - 1] == b"=":
            cut -= 2
        out.append(line[:cut] + b"=")
        line = line[cut:]
    out.append(line)
    return b"\r\n".join(out)


class Fixed(str):
    """A piece of a body that every message of the run shares: encoded once."""

    __slots__ = ()


_fixed_quoted_printable = functools.lru_cache(maxsize=256)(quoted_printable)


def quoted_printable_pieces(pieces: Sequence[str]) -> bytes:
    """quoted_printable("".join(pieces)), from pieces encoded apart and joined by soft line breaks.

    A soft break ("=" at the end of a line) decodes to nothing. b2a_qp may end a
    piece with a line of 76 characters, the most allowed: its last character (or
    =XX escape) then moves to a line of its own, so that the "=" still fits.
    """
    encoded = []
    previous = ""
    for piece in pieces:
        if not piece:
            continue
        if previous.endswith("\r") and piece.startswith("\n"):  # one line end split in two
            return quoted_printable("".join(pieces))
        encoded.append(_fixed_quoted_printable(piece) if type(piece) is Fixed else quoted_printable(piece))
        previous = piece
    for index, data in enumerate(encoded[:-1]):
        if len(data) - (data.rfind(b"\n") + 1) >= 76:
            unit = 3 if data[-3:-2] == b"=" else 1
            encoded[index] = data[:-unit] + b"=\r\n" + data[-unit:]
    return b"=\r\n".join(encoded)


Body = str | Sequence[str]


def _part(subtype: str, body: Body) -> bytes:
    data = quoted_printable(body) if isinstance(body, str) else quoted_printable_pieces(body)
    return (f"Content-Type: text/{subtype}; charset=\"utf-8\"{CRLF}"
            f"Content-Transfer-Encoding: quoted-printable{CRLF}{CRLF}").encode("ascii") + data


def build_message(headers: list[tuple[str, str]], text: Body, html: Body | None) -> bytes:
    """Headers (already encoded, no CR/LF inside) plus a text part and an optional HTML part
    (each a string, or a sequence of pieces)."""
    head = "".join(f"{name}: {value}{CRLF}" for name, value in headers) + f"MIME-Version: 1.0{CRLF}"
    if html is None:
        part = _part("plain", text)
        return head.encode("ascii") + part + (b"" if part.endswith(b"\r\n") else b"\r\n")
    boundary = f"=_mailer_{secrets.token_hex(12)}"
    return b"".join((
        (head + f"Content-Type: multipart/alternative; boundary=\"{boundary}\"{CRLF}{CRLF}"
         f"--{boundary}{CRLF}").encode("ascii"),
        _part("plain", text),
        f"{CRLF}--{boundary}{CRLF}".encode("ascii"),
        _part("html", html),
        f"{CRLF}--{boundary}--{CRLF}".encode("ascii"),
    ))
