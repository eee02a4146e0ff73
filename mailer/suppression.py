"""Reading suppression files (addresses, @domains, CSV) and mailto opt-out messages."""
from __future__ import annotations

import csv
import email
import io
import re
from collections.abc import Iterator
from email import policy
from pathlib import Path
from urllib.parse import unquote

from .errors import CsvError


def read_suppression_file(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CsvError([f"{path}: not UTF-8"], hint="save the file as UTF-8") from None
    lines = text.splitlines()
    first = lines[0].strip().lower() if lines else ""
    if "," in first or ";" in first or first == "email":
        delimiter = ";" if first.count(";") > first.count(",") else ","
        reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        if "email" not in fields:
            raise CsvError([f"{path}:1: no 'email' column (found: {', '.join(fields)})"])
        column = (reader.fieldnames or [])[fields.index("email")]
        values = []
        for row in reader:
            value = (row.get(column) or "").strip()
            if value:
                values.append(value)
        return values
    problems, values = [], []
    for number, line in enumerate(lines, start=1):
        value = line.strip()
        if not value or value.startswith("#"):
            continue
        if "@" not in value or any(c.isspace() for c in value):
            problems.append(f"{path}:{number}: {value!r} is neither an address nor @domain")
            continue
        values.append(value)
    if problems:
        raise CsvError(problems, hint="one address or @domain per line; nothing was imported")
    return values


# ----------------------------------------------------------------------------- mailto opt-outs

_TOKEN_IN_SUBJECT = re.compile(r"unsubscribe-([A-Za-z0-9_\-.]{40,400})")


def message_files(paths: list[Path]) -> Iterator[Path]:
    """Message files given directly, or found in folders (a maildir's new/ and cur/ included)."""
    for path in paths:
        if path.is_dir():
            for candidate in sorted(path.rglob("*")):
                if candidate.is_file() and not candidate.name.startswith("."):
                    yield candidate
        else:
            yield path


def token_from_message(data: bytes) -> str | None:
    """The unsubscribe token in the Subject of a mail sent to the List-Unsubscribe mailto address."""
    message = email.message_from_bytes(data, policy=policy.default)
    subject = str(message.get("Subject", ""))
    match = _TOKEN_IN_SUBJECT.search(unquote(subject))
    return match.group(1) if match else None
