"""Building the message bytes directly, once per message.

The standard library's EmailMessage re-parses every header it is given, which
made MIME building the slowest step of a send. Our inputs are already
sanitised (no control characters, validated ASCII addresses), so we write the
RFC 5322 / MIME structure ourselves: RFC 2047 words (base64) for header text a
client would otherwise show differently, folding to 78 characters, and `b2a_qp`
for quoted-printable. The tests parse every message back with the `email` package.

A body can be given as pieces: the pieces that are the same in every message of
a run (`Fixed`: the footer's markup) are encoded once, the others per message,
and the encoded pieces are joined with soft line breaks.
"""
from __future__ import annotations

import binascii
import functools
import re
import secrets
from collections.abc import Sequence

CRLF = "\r\n"


#: RFC 5322: a line of a message is at most 998 octets and SHOULD be at most 78.
LINE_LIMIT = 78
_WORD = "=?utf-8?b?{}?="
_WORD_BYTES = 45  # RFC 2047: an encoded word is at most 75 characters (12 + the base64 of 45 bytes)
# formataddr's test for a display name that must be a quoted string.
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')


def encode_words(value: str, name: str = "Subject") -> str:
    """An unstructured header value (the Subject) as written after `name: `, folded to 78 characters.

    A value a mail client would show differently from how it was typed is
    RFC 2047-encoded: text that is not ASCII, and text containing "=?", which a
    client would decode as an encoded word of its own (a CSV's first name
    `=?utf-8?b?...?=` could otherwise put a Bcc line in what the reader sees).
    Long ASCII text is folded at its spaces; a word too long to fold at is encoded
    too, since encoded words can be cut anywhere.
    """
    if value.isascii() and "=?" not in value:
        if len(name) + 2 + len(value) <= LINE_LIMIT:
            return value  # the common case, kept cheap
        folded = _fold_at_spaces(value, len(name) + 2)
        if folded is not None:
            return folded
    return (CRLF + " ").join(_encoded_words(value, len(name) + 2))


def mailbox(name: str, address: str, header: str = "To") -> str:
    """`Name <address>` as written after `header: `: the name quoted or encoded as needed, folded.

    Like encode_words, a name that is not ASCII or contains "=?" is encoded
    (email.utils.formataddr passes an ASCII "=?...?=" name through as it is).
    """
    if not name:
        return address
    used = len(header) + 2
    if name.isascii() and "=?" not in name:
        phrase = name
        if _SPECIALS.search(name):
            phrase = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if used + len(phrase) + len(address) + 3 <= LINE_LIMIT:
            return f"{phrase} <{address}>"  # the common case, kept cheap
        if used + len(phrase) <= LINE_LIMIT:
            return f"{phrase}{CRLF} <{address}>"
    words = _encoded_words(name, used)
    last = len(words[-1]) + (used if len(words) == 1 else 1)
    joint = " " if last + len(address) + 3 <= LINE_LIMIT else CRLF + " "
    return (CRLF + " ").join(words) + f"{joint}<{address}>"


def _fold_at_spaces(value: str, used: int) -> str | None:
    """ASCII text with a line break before some of its spaces, each line at most 78 characters
    (unfolding removes only the breaks); None when a word is too long for a line of its own."""
    lines: list[str] = []
    line: str | None = None
    width = LINE_LIMIT - used
    for word in value.split(" "):
        if line is None:
            line = word
        elif word and line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line, width = word, LINE_LIMIT - 1
        else:
            line += " " + word
        if len(line) > width:
            return None
    lines.append(line or "")
    return (CRLF + " ").join(lines)


def _encoded_words(value: str, used: int) -> list[str]:
    """`value` as base64 encoded words (RFC 2047), each fitting on a line of 78 characters:
    the first after `used` characters, the others after one space. Characters are never cut."""
    words: list[str] = []
    room = min((LINE_LIMIT - used - 12) // 4 * 3, _WORD_BYTES)  # bytes whose base64 fits on the line
    chunk: list[bytes] = []
    size = 0
    for char in value:
        data = char.encode("utf-8", "replace")
        if size + len(data) > room and chunk:
            words.append(_WORD.format(binascii.b2a_base64(b"".join(chunk), newline=False).decode("ascii")))
            chunk, size, room = [], 0, _WORD_BYTES
        chunk.append(data)
        size += len(data)
    words.append(_WORD.format(binascii.b2a_base64(b"".join(chunk), newline=False).decode("ascii")))
    return words


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
    """Headers (already encoded and folded: a CRLF only before a space) plus a text part and an optional HTML part
    (each a string, or a sequence of pieces)."""
    head = "".join(f"{name}: {value}{CRLF}" for name, value in headers) + f"MIME-Version: 1.0{CRLF}"
    if html is None:
        part = _part("plain", text)
        return head.encode("ascii") + part + (b"" if part.endswith(b"\r\n") else b"\r\n")
    boundary = f"=_mailer_{secrets.token_hex(12)}"
    return b"".join((
        (head + f"Content-Type: multipart/alternative;{CRLF} boundary=\"{boundary}\"{CRLF}{CRLF}"
         f"--{boundary}{CRLF}").encode("ascii"),
        _part("plain", text),
        f"{CRLF}--{boundary}{CRLF}".encode("ascii"),
        _part("html", html),
        f"{CRLF}--{boundary}--{CRLF}".encode("ascii"),
    ))
