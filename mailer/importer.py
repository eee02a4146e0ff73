"""Contacts CSV -> the database: validated, all or nothing, erased people kept out."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path

from .contacts import ContactData, ContactsCsv
from .errors import InvalidRows
from .store import ImportResult, utcnow
from .workspace import Workspace

#: A long step's progress: called with the step's label and its expected length (None if
#: unknown), returns the function to call with each advance (a number of items).
Progress = Callable[[str, int | None], Callable[[int], None]]


def no_progress(label: str, total: int | None) -> Callable[[int], None]:
    return lambda n: None


@dataclass
class ImportOutcome:
    path: Path
    result: ImportResult
    rows: int = 0
    skipped: list[str] = field(default_factory=list)
    repeated: list[ContactData] = field(default_factory=list)  # rows whose address came earlier in the file
    erased_skipped: int = 0
    undated: int = 0   # rows kept with no collection date (the gate blocks them: retention-expired)
    encoding: str = "utf-8"  # what the file was read in (contacts.ENCODINGS)


#: rows written per transaction: short enough that another writer (an opt-out, `suppress add`)
#: waits a fraction of a second for the database, long enough to keep an import fast
IMPORT_BATCH = 2000


def import_contacts(ws: Workspace, path: Path, list_name: str, *, skip_invalid: bool = False,
                    now: datetime | None = None, progress: Progress | None = None,
                    collected_at: date | None = None, batch: int = IMPORT_BATCH, encoding: str | None = None,
                    date_format: str = "DD/MM/YYYY") -> ImportOutcome:
    """Validate a contacts CSV and upsert it into a list: all or nothing, unless skip_invalid.

    `collected_at` is the collection date of the rows that give none; without it such
    rows have no known date, and the gate treats them as past retention.

    The whole file is validated first (a bad row anywhere: InvalidRows, nothing written),
    then read again and written `batch` rows per transaction, so that other writers (an
    opt-out, `suppress add`, a send) get in between however long the file; memory stays
    flat either way. An import interrupted while writing has written whole batches:
    rerunning it gives the same result (rows are upserted).
    """
    now = now or utcnow()
    progress = progress or no_progress
    problems, good_rows = validate_contacts(path, now, progress, collected_at, encoding=encoding,
                                            date_format=date_format)
    if problems and not skip_invalid:
        raise InvalidRows(problems, good_rows=good_rows)
    reader, outcome, records = _read(ws, path, now, progress, f"Importing {path.name}", collected_at,
                                     encoding=encoding, date_format=date_format)
    outcome.result = ws.store.contacts.upsert(records, list_name, reader.present, now=now, batch=batch)
    outcome.skipped = list(reader.problems)
    return outcome


def validate_contacts(path: Path, now: datetime, progress: Progress = no_progress,
                      collected_at: date | None = None, *, encoding: str | None = None,
                      date_format: str = "DD/MM/YYYY") -> tuple[list[str], int]:
    """Every problem of a contacts CSV (FILE:LINE: what is wrong) and the number of good rows,
    reading it once without writing; CsvError for a file that cannot be read as a whole."""
    reader = ContactsCsv(path, today=now.date(), collected_at=collected_at, encoding=encoding,
                         date_format=date_format)
    advance = progress(f"Checking {path.name}", data_lines(path))
    good = 0
    for good, _ in enumerate(reader.validated(), start=1):
        if good % 5000 == 0:
            advance(5000)
    advance(good % 5000)
    return reader.problems, good


def read_as_imported(ws: Workspace, path: Path, *, now: datetime | None = None,
                     progress: Progress | None = None, collected_at: date | None = None,
                     encoding: str | None = None, date_format: str = "DD/MM/YYYY"
                     ) -> tuple[ImportOutcome, list[ContactData]]:
    """What `import_contacts` would make of the file's contacts, without writing anything: each
    row merged with the stored contact of its address (all or nothing, as an import)."""
    now = now or utcnow()
    reader, outcome, records = _read(ws, path, now, progress or no_progress, f"Reading {path.name}", collected_at,
                                     encoding=encoding, date_format=date_format)
    merged = list(ws.store.contacts.as_upserted(records, reader.present, now=now))
    if reader.problems:
        raise InvalidRows(reader.problems, good_rows=outcome.rows)
    return outcome, merged


def _read(ws: Workspace, path: Path, now: datetime, progress: Progress, label: str,
          collected_at: date | None = None, *, encoding: str | None = None,
          date_format: str = "DD/MM/YYYY") -> tuple[ContactsCsv, ImportOutcome, Iterator[ContactData]]:
    """The file's valid rows, streamed, without the people erased (counted in the outcome, as
    are the rows repeating an address)."""
    reader = ContactsCsv(path, today=now.date(), collected_at=collected_at, encoding=encoding,
                         date_format=date_format)
    outcome = ImportOutcome(path, ImportResult(), encoding=reader.encoding)
    seen: set[str] = set()
    advance = progress(label, data_lines(path))

    def records() -> Iterator[ContactData]:
        chunk: list[ContactData] = []
        for record in reader:
            chunk.append(record)
            if len(chunk) >= 500:
                yield from keep(chunk)
                advance(len(chunk))
                chunk = []
        yield from keep(chunk)
        advance(len(chunk))

    anyone_erased = ws.store.people.has_erasures()
    spelt: dict[str, str] = {}  # address key -> its first row's spelling, where that differs from the key

    def keep(chunk: list[ContactData]) -> Iterator[ContactData]:
        kept, erased = _without_erased(ws, chunk, now) if anyone_erased else (chunk, 0)
        outcome.erased_skipped += erased
        for record in kept:
            outcome.rows += 1
            if record.collected_at is None:
                outcome.undated += 1
            key = record.address.key
            if key in seen:
                outcome.repeated.append(record)
                first = spelt.get(key, key)
                if record.address.send_to != first:  # the first row's spelling is the one mailed (and kept)
                    record = replace(record, address=replace(record.address, send_to=first))
            else:
                seen.add(key)
                if record.address.send_to != key:
                    spelt[key] = record.address.send_to
            yield record

    return reader, outcome, records()


def data_lines(path: Path) -> int | None:
    """The lines of a CSV after its header (rows, unless some hold quoted line breaks)."""
    try:
        with open(path, "rb") as handle:
            return max(0, sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b"")) - 1)
    except OSError:
        return None


def _without_erased(ws: Workspace, records: list[ContactData], now: datetime) -> tuple[list[ContactData], int]:
    """Drop the people who asked to be forgotten, and stale data of people erased at retention.

    A retention erasure does not stop a *new* collection: a row whose dates are
    more recent than the erasure comes back.
    """
    hashes = {r.address.key: ws.lookup_hashes(r.address.key) for r in records}
    erased = ws.store.people.erasures(list({h for found in hashes.values() for h in found}))
    if not erased:
        return records, 0
    kept = []
    for record in records:
        found = [erased[h] for h in hashes[record.address.key] if h in erased]
        if found:
            if any(reason == "request" for reason, _ in found):
                continue
            # Erased at retention: back only when collected again since (a known, later date).
            last = max(when for _, when in found).date()
            if record.collected_at is None or record.collected_at <= last:
                continue
        kept.append(record)
    return kept, len(records) - len(kept)
