"""Contacts CSV: parse and validate, all or nothing, with FILE:LINE errors."""
from __future__ import annotations

import codecs
import csv
import io
import itertools
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from .addresses import NormalisedAddress, normalise
from .errors import CsvError

KINDS = ("b2b", "b2c")
CONSENTS = ("", "opt-in", "customer")
SOURCE_TYPES = ("direct", "partner")

KNOWN_COLUMNS = (
    "email", "first_name", "last_name", "company", "job_title", "industry", "country",
    "kind", "source", "source_type", "collected_at", "consent", "consent_at",
    "consent_proof", "partner_consent", "last_interaction_at", "member",
)
TEXT_COLUMNS = ("first_name", "last_name", "company", "job_title", "industry", "country",
                "source", "consent_proof")
DATE_COLUMNS = ("collected_at", "consent_at", "last_interaction_at")
BOOL_COLUMNS = ("partner_consent", "member")

_TRUE = {"true", "yes", "1", "oui", "y", "x", "vrai"}
_FALSE = {"false", "no", "0", "non", "n", "", "faux"}


@dataclass(slots=True)
class ContactData:
    """One contact, as the gate and the templates see it.

    Built from a CSV row or a database row; `address` is the normalised form.
    """

    address: NormalisedAddress
    kind: str
    first_name: str = ""
    last_name: str = ""
    company: str = ""
    job_title: str = ""
    industry: str = ""
    country: str = ""
    source: str = ""
    source_type: str = "direct"
    collected_at: date | None = None
    consent: str = ""
    consent_at: date | None = None
    consent_proof: str = ""
    partner_consent: bool = False
    last_interaction_at: date | None = None
    member: bool = False
    attrs: dict[str, str] = field(default_factory=dict)
    id: int | None = None
    line: int = 0

    @property
    def email(self) -> str:
        return self.address.send_to


@dataclass
class ParsedCsv:
    path: Path
    columns: tuple[str, ...]
    records: list[ContactData]
    problems: list[str]

    @property
    def present(self) -> frozenset[str]:
        return frozenset(self.columns)


#: the date orders a CSV may use, as --date-format names them (ISO dates are always read)
DATE_FORMATS = ("DD/MM/YYYY", "MM/DD/YYYY", "YYYY-MM-DD")
_SLASHED = re.compile(r"^(\d{1,2})[/.](\d{1,2})[/.](\d{4})$")


def parse_csv_date(value: str, date_format: str = "DD/MM/YYYY") -> date:
    """A date as a CSV writes it: ISO (2026-06-12, or a timestamp) always; 12/06/2026 or
    12.06.2026 in the order `date_format` says (day first by default, as in France)."""
    match = _SLASHED.match(value.strip())
    if match is None or date_format == "YYYY-MM-DD":
        return parse_date(value)
    first, second, year = (int(g) for g in match.groups())
    day, month = (first, second) if date_format == "DD/MM/YYYY" else (second, first)
    return date(year, month, day)


def parse_date(value: str) -> date:
    value = value.strip()
    try:
        return date.fromisoformat(value)
    except ValueError:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).date()


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{value!r} is not true or false")


#: what a CSV may be written in, as `--encoding` names them, and what people call them
ENCODINGS = {"utf-8": "UTF-8", "utf-16": "UTF-16", "utf-16-le": "UTF-16 (little-endian, no BOM)",
             "utf-16-be": "UTF-16 (big-endian, no BOM)", "cp1252": "Windows-1252", "latin-1": "Latin-1"}
_SAMPLE = 1 << 16


def detect_encoding(path: Path) -> str:
    """The encoding of a contacts CSV, one of ENCODINGS: a byte-order mark says UTF-8 or UTF-16, and
    a NUL every other byte UTF-16 without one; else UTF-8 when the first 64 KB read as UTF-8; else
    what charset-normalizer finds likeliest among Windows-1252 (what Excel in France exports) and
    Latin-1."""
    try:
        with open(path, "rb") as handle:
            sample = handle.read(_SAMPLE)
    except OSError:
        return "utf-8"  # _lines says why it cannot be read
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if sample.count(0) * 4 >= len(sample) > 0:  # text with a NUL every other byte: UTF-16 without its mark
        return "utf-16-le" if sample[1::2].count(0) > sample[0::2].count(0) else "utf-16-be"
    try:
        sample.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if exc.start >= len(sample) - 4 and len(sample) == _SAMPLE:
            return "utf-8"  # a character cut by the sample's end
    from charset_normalizer import from_bytes
    best = from_bytes(sample, cp_isolation=["cp1252", "latin_1"]).best()
    return "latin-1" if best is not None and best.encoding == "latin_1" else "cp1252"


def _lines(path: Path, encoding: str = "utf-8") -> Iterator[str]:
    """The file's lines, decoded one at a time (a large file is never all in memory). A line
    ends with LF, CRLF or a lone CR (old Mac files): csv.reader only splits on the first two."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the generator
    except FileNotFoundError:
        raise CsvError([f"{path}: file not found"]) from None
    except OSError as exc:
        raise CsvError([f"{path}: cannot read: {exc.strerror}"]) from None
    if encoding != "utf-8":
        yield from _other_lines(path, handle, encoding)
        return
    with handle:
        number = 0
        for chunk in handle:
            if number == 0:
                chunk = chunk.removeprefix(codecs.BOM_UTF8)
            pieces = _LONE_CR.split(chunk) if b"\r" in chunk[:-2] or chunk[-1:] == b"\r" else [chunk]
            for raw in pieces:
                if not raw:
                    continue
                number += 1
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise CsvError([f"{path}:{number}: not UTF-8 (byte {raw[exc.start]:#x})"],
                                   hint="save the file as UTF-8 (in Excel: 'CSV UTF-8'), or name its encoding "
                                        "with --encoding (cp1252 for Windows-1252, latin-1, utf-16)") from None


def _other_lines(path: Path, handle: Any, encoding: str) -> Iterator[str]:
    """Lines of a file in another encoding than UTF-8 (newline="": LF, CRLF and lone CR end lines)."""
    codec = {"utf-16": "utf-16", "utf-16-le": "utf-16-le", "utf-16-be": "utf-16-be", "cp1252": "cp1252",
             "latin-1": "latin-1"}[encoding]
    with io.TextIOWrapper(handle, encoding=codec, newline="") as text:
        number = 0
        try:
            for number, line in enumerate(text, start=1):  # noqa: B007 - reported below
                yield line
        except UnicodeDecodeError as exc:
            raise CsvError([f"{path}:{number + 1}: not {ENCODINGS[encoding]} (byte {exc.object[exc.start]:#x})"],
                           hint="name the file's encoding with --encoding (utf-8, cp1252, latin-1, utf-16)") from None


_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")


def _delimiter(header_line: str) -> str:
    """The header's separator: a comma, a semicolon (Excel in France) or a tab."""
    return max(",;\t", key=lambda sign: (header_line.count(sign), sign == ","))


class _Replayable:
    """Lines for csv.reader that remembers those of the row being read, so that after a syntax
    error the row costs only its first line: the lines after it are read again as rows of their
    own (a quote never closed otherwise swallows every row down to the end of the file)."""

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self._again: deque[str] = deque()
        self.row: list[str] = []

    def __iter__(self) -> _Replayable:
        return self

    def __next__(self) -> str:
        line = self._again.popleft() if self._again else next(self._lines)
        self.row.append(line)
        return line

    def replay(self, lines: list[str]) -> None:
        self._again.extendleft(reversed(lines))


def _rows(lines: Iterator[str], delimiter: str) -> Iterator[tuple[int, list[str] | _CsvSyntax]]:
    """(line where the row starts, its fields), or a syntax error in place of the fields."""
    source = _Replayable(lines)
    reader = csv.reader(source, delimiter=delimiter, strict=True)
    start = 1
    while True:
        source.row = []
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            read = source.row
            yield start, _CsvSyntax(start, _csv_problem(str(exc), len(read)))
            source.replay(read[1:])
            start += 1
            continue
        yield start, row
        start += len(source.row)


def _csv_problem(said: str, lines: int) -> str:
    """What Python's csv module said, in the words of someone fixing the file."""
    if said.startswith("unexpected end of data"):
        return ("a quoted value starts on this line and is never closed (the file ends inside it); "
                'close its quote, or write a quote inside a value as ""')
    if said.startswith("field larger than field limit"):
        closed = "; is a closing quote missing?" if lines > 1 else ""
        return f"a value longer than {csv.field_size_limit():,} characters (no contact field is that long{closed})"
    if "expected after" in said:
        return 'a quote inside a quoted value must be doubled ("like ""this""")'
    return f"CSV syntax error: {said}"


class _CsvSyntax(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


class ContactsCsv:
    """A contacts CSV read row by row: iterate for the good records; `problems` fills as you go.

    The header is checked on opening (a missing `email` or `kind` column is one
    error at once). `collected_at`, when given, is the collection date of the rows
    that have none (the operator's statement for the whole file). An address with
    bad syntax is *not* a problem here: the gate blocks it, so the marketer sees
    it in `check` and `preview`. A row the CSV syntax cannot read is a problem of its
    line: the rows around it are read.
    """

    def __init__(self, path: Path, *, today: date, collected_at: date | None = None, encoding: str | None = None,
                 date_format: str = "DD/MM/YYYY") -> None:
        self.path = path
        self.today = today
        if collected_at is not None and collected_at > today:
            raise CsvError([f"{path}: the collection date {collected_at.isoformat()} given for the file is in the future"])
        self.collected_at = collected_at
        self.date_format = date_format
        self.problems: list[str] = []
        #: the encoding the file was read in (detected unless given), one of ENCODINGS
        self.encoding = encoding or detect_encoding(path)
        lines = _lines(path, self.encoding)
        first = next(lines, "")
        if not first.strip():
            raise CsvError([f"{path}:1: the file is empty"],
                           hint="the first line must be a header with at least 'email' and 'kind'")
        self.delimiter = _delimiter(first)
        self._rows = _rows(itertools.chain([first], lines), self.delimiter)
        _, header = next(self._rows, (1, []))
        if isinstance(header, _CsvSyntax):
            raise _syntax_error(path, header)
        columns = tuple(h.strip().lower().lstrip("\ufeff") for h in header)
        missing = [c for c in ("email", "kind") if c not in columns]
        if missing:
            raise CsvError(
                [f"{path}:1: no {' or '.join(repr(m) for m in missing)} column (found: {', '.join(columns) or 'nothing'})"],
                hint="the header row must name the columns, e.g. email,first_name,kind,source",
            )
        dupes = sorted({c for c in columns if columns.count(c) > 1 and c})
        if dupes:
            raise CsvError([f"{path}:1: column {', '.join(dupes)} appears twice in the header"])
        if "" in columns:
            raise CsvError([f"{path}:1: column {columns.index('') + 1} has no name in the header"])
        self.columns = columns

    @property
    def present(self) -> frozenset[str]:
        if self.collected_at is not None:
            return frozenset(self.columns) | {"collected_at"}
        return frozenset(self.columns)

    def __iter__(self) -> Iterator[ContactData]:
        for line, row, values in self._checked():
            yield _build(line, row, values, self.collected_at)

    def validated(self) -> Iterator[int]:
        """The line of each good row, `problems` filling as for iteration, without building the
        records (a first pass over a file to import, cheaper than the one that writes)."""
        for line, _, _ in self._checked():
            yield line

    def _checked(self) -> Iterator[tuple[int, dict[str, str], dict[str, Any]]]:
        columns, path = self.columns, self.path
        for line, row in self._rows:
            if isinstance(row, _CsvSyntax):
                self.problems.append(f"{path}:{line}: {row}")
                continue
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                self.problems.append(f"{path}:{line}: {len(row)} fields, but the header has {len(columns)}"
                                     f" (is a value with a '{self.delimiter}' missing its quotes?)")
                continue
            cells = dict(zip(columns, row, strict=True))
            values = _checked_values(path, line, cells, self.today, self.problems, self.date_format)
            if values is not None:
                yield line, cells, values


def _syntax_error(path: Path, exc: _CsvSyntax) -> CsvError:
    return CsvError([f"{path}:{exc.line}: {exc}"],
                    hint="check the quotes on that line: a value with a quote must be written \"like \"\"this\"\"\"")


def parse_contacts_csv(path: Path, *, today: date) -> ParsedCsv:
    """Parse a whole contacts CSV into memory: every good record and every problem."""
    reader = ContactsCsv(path, today=today)
    records = list(reader)
    return ParsedCsv(path=path, columns=reader.columns, records=records, problems=reader.problems)


def _checked_values(path: Path, line: int, row: dict[str, str], today: date,
                    problems: list[str], date_format: str = "DD/MM/YYYY") -> dict[str, Any] | None:
    """The row's known columns, parsed, or None after adding its problems to `problems`."""
    where = f"{path}:{line}"
    before = len(problems)
    email = row["email"].strip()
    if not email:
        problems.append(f"{where}: email is empty")
    if any(ch in email for ch in "\r\n"):
        problems.append(f"{where}: email contains a line break")
    if len(email) > 320:
        problems.append(f"{where}: email is {len(email):,} characters long; no address is longer than 320")
    nul = [name for name, value in row.items() if "\x00" in value]
    if nul:
        problems.append(f"{where}: a NUL character in {', '.join(nul)} (is the file UTF-16, or not a CSV?); "
                        "remove it")
        return None
    kind = row["kind"].strip().lower()
    if kind not in KINDS:
        problems.append(f"{where}: kind {row['kind']!r} must be 'b2b' or 'b2c'")
    values: dict[str, Any] = {}
    for name in TEXT_COLUMNS:
        if name in row:
            values[name] = " ".join(row[name].split())
    consent = row.get("consent", "").strip().lower()
    if consent not in CONSENTS:
        problems.append(f"{where}: consent {row['consent']!r} must be 'opt-in', 'customer' or empty")
    values["consent"] = consent
    source_type = row.get("source_type", "").strip().lower() or "direct"
    if source_type not in SOURCE_TYPES:
        problems.append(f"{where}: source_type {row['source_type']!r} must be 'direct' or 'partner'")
    values["source_type"] = source_type
    for name in DATE_COLUMNS:
        raw = row.get(name, "").strip()
        if raw:
            try:
                values[name] = parse_csv_date(raw, date_format)
            except ValueError:
                problems.append(f"{where}: {name} {raw!r} is not a date (use YYYY-MM-DD, or {date_format} "
                                "as --date-format says)")
                continue
            if values[name] > today:
                problems.append(f"{where}: {name} {raw!r} is in the future")
    for name in BOOL_COLUMNS:
        if name in row:
            try:
                values[name] = parse_bool(row[name])
            except ValueError as exc:
                problems.append(f"{where}: {name}: {exc}")
    if len(problems) > before:
        return None
    values["kind"] = kind
    return values


def _build(line: int, row: dict[str, str], values: dict[str, Any], collected_at: date | None) -> ContactData:
    values.setdefault("collected_at", collected_at)
    attrs = {k: v.strip() for k, v in row.items() if k not in KNOWN_COLUMNS}
    return ContactData(address=normalise(row["email"].strip()), attrs=attrs, line=line, **values)
