"""Reading suppression files: one address or @domain per line, or a CSV with an email column."""
from __future__ import annotations

import csv
import io
from pathlib import Path

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
