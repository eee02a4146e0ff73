"""The words mailer shows people, one TOML file per locale (`fr.toml`, `en.toml`, …).

The set of locales is the set of `*.toml` files in this folder: adding a language
is adding one file. Every file holds every sentence a person reads, grouped in
tables: `[footer]` (the message footer), `[unsubscribe_page]` (`mailer serve`) and
`[explain]` (the answer to a person's access request).

The files are read once, all together, on first use. A file that lacks a key,
has a key nobody reads, or spells a `{placeholder}` differently from the other
files makes the first use fail with a `LocaleFileError` naming the file and the key:
a missing sentence must not surface later as a broken unsubscribe page.

    >>> from mailer import locales
    >>> locales.available()
    ('en', 'fr')
    >>> locales.strings("fr").footer.unsubscribe
    'se désabonner en un clic'
"""
from __future__ import annotations

import difflib
import functools
import re
import string
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, is_dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from types import MappingProxyType
from typing import Any, TypeVar, get_type_hints

from ..errors import MailerError

__all__ = ["Explain", "Footer", "Locale", "LocaleFileError", "UnsubscribePage", "available", "load", "strings"]

#: a locale's code (the file's stem) goes into tokens and `lang` attributes: "fr", "en", "pt-BR", …
_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


class LocaleFileError(MailerError):
    """A locale file of the package is missing, unreadable or does not have the expected keys."""


@dataclass(frozen=True)
class Footer:
    """The footer appended to every message ({source}, {organization} are filled in)."""

    sender: str
    collected: str
    generic: str
    member: str
    object: str
    unsubscribe: str
    unsubscribe_text: str
    privacy: str
    requests: str


@dataclass(frozen=True)
class UnsubscribePage:
    """The pages of `mailer serve` ({org}, {address}, {privacy}, {contact} are filled in)."""

    title: str
    intro: str
    question: str
    button: str
    why: str
    done_title: str
    done: str
    already: str
    privacy: str
    test: str
    bad_title: str
    bad: str
    unavailable_title: str  # the opt-out could not be kept at all (503): try again
    unavailable: str
    reasons: Mapping[str, str]  # reason id ("" for none) -> label, in the order shown


@dataclass(frozen=True)
class Explain:
    """The answer to a person asking what we hold about them (`mailer explain`)."""

    label_separator: str  # between a label and its value: " : " in French, ": " in English
    months: str           # the twelve month names, space-separated
    first_day: str        # how the first day of a month is written ("1er" in French)
    greeting: str
    intro: str
    who: str
    who_text: str
    nothing: str
    nothing_suppressed: str
    erased: str
    data: str
    yes: str
    no: str
    lists: str
    origin: str
    source: str
    direct: str
    partner: str
    no_source: str
    interactions: str
    basis: str
    basis_prospecting_b2b: str
    basis_consent: str
    consent_details: str
    basis_soft: str
    basis_members: str
    sent: str
    sent_line: str
    none_sent: str
    complained: str  # they reported a message as spam (an ARF complaint): {date}, {campaign}
    decisions: str
    decision_line: str
    retention: str
    retention_years: str
    generic: str
    rights: str
    rights_text: str
    suppressed: str
    closing: str
    fields: Mapping[str, str]  # contact field -> label, in the order shown
    consents: Mapping[str, str]
    kinds: Mapping[str, str]
    what: Mapping[str, str]  # interaction kind -> label
    campaign_kinds: Mapping[str, str]
    states: Mapping[str, str]  # send-log state -> label; {rule} is filled in
    rules: Mapping[str, str]  # gate rule id -> label
    events: Mapping[str, str]  # what the retention period counts from -> label


@dataclass(frozen=True)
class Locale:
    """Every sentence of one language."""

    code: str  # the file's stem: "fr"
    file: str  # the file's name: "fr.toml"
    footer: Footer
    unsubscribe_page: UnsubscribePage
    explain: Explain


_SECTIONS = {"footer": Footer, "unsubscribe_page": UnsubscribePage, "explain": Explain}
_T = TypeVar("_T")


def _table_name(path: tuple[str, ...]) -> str:
    return "[" + ".".join(p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else f'"{p}"' for p in path) + "]"


def _unknown(key: str, table: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{table} has an unknown key '{key}'{hint}"


def _build(cls: type[_T], data: Mapping[str, Any], path: tuple[str, ...], problems: list[str]) -> _T | None:
    """An instance of the dataclass `cls` from a TOML table, or None after adding to `problems`."""
    hints = get_type_hints(cls)
    wanted = [f.name for f in fields(cls) if f.name not in ("code", "file")]  # type: ignore[arg-type]
    table = _table_name(path)
    values: dict[str, Any] = {}
    before = len(problems)
    for key in data:
        if key not in wanted:
            problems.append(_unknown(key, table, wanted))
    for name in wanted:
        if name not in data:
            shown = f"key '{name}'" if hints[name] is str else f"table {_table_name((*path, name))}"
            problems.append(f"{table} lacks the {shown}")
            continue
        value, hint = data[name], hints[name]
        if hint is str:
            if not isinstance(value, str):
                problems.append(f"{table} {name}: must be a string, not {type(value).__name__}")
            values[name] = value
        elif is_dataclass(hint):
            if not isinstance(value, dict):
                problems.append(f"{_table_name((*path, name))} must be a table")
                continue
            values[name] = _build(hint, value, (*path, name), problems)  # type: ignore[arg-type]
        else:  # Mapping[str, str]: a table of labels
            if not isinstance(value, dict):
                problems.append(f"{_table_name((*path, name))} must be a table of strings")
                continue
            for key, label in value.items():
                if not isinstance(label, str):
                    problems.append(f"{_table_name((*path, name))} {key}: must be a string, not {type(label).__name__}")
            values[name] = MappingProxyType(dict(value))
    if len(problems) > before:
        return None
    return cls(**values)


def _strings_of(item: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """(dotted path, text) of every sentence of a locale, label tables included."""
    if is_dataclass(item):
        for f in fields(item):
            if f.name not in ("code", "file"):
                yield from _strings_of(getattr(item, f.name), (*path, f.name))
    elif isinstance(item, Mapping):
        for key, value in item.items():
            yield (*path, key), value
    else:
        yield path, item


def _placeholders(text: str) -> frozenset[str]:
    try:
        return frozenset(name for _, name, _, _ in string.Formatter().parse(text) if name is not None)
    except ValueError:
        return frozenset({"(unbalanced braces)"})


def _compare(locales: Mapping[str, Locale]) -> list[str]:
    """Problems between files: label tables with different keys, placeholders spelt differently."""
    problems: list[str] = []
    texts = {code: dict(_strings_of(locale)) for code, locale in locales.items()}
    every = {path: None for code in sorted(texts) for path in texts[code]}
    for code in sorted(texts):
        file = locales[code].file
        for path in every:
            if path not in texts[code]:
                others = ", ".join(locales[c].file for c in sorted(texts) if path in texts[c])
                problems.append(f"{file}: {_table_name(path[:-1])} lacks the key '{path[-1]}' ({others} has it)")
    for path in every:
        spelt = {code: _placeholders(texts[code][path]) for code in sorted(texts) if path in texts[code]}
        if len(set(spelt.values())) > 1:
            shown = "; ".join(f"{locales[c].file}: {', '.join('{' + p + '}' for p in sorted(names)) or 'none'}"
                              for c, names in spelt.items())
            problems.append(f"{_table_name(path[:-1])} {path[-1]}: the files use different placeholders ({shown})")
    return problems


def load(folder: Traversable) -> dict[str, Locale]:
    """Every locale of a folder, by code; raises LocaleFileError listing every problem of every file."""
    try:
        files = sorted((f for f in folder.iterdir() if f.name.endswith(".toml") and f.is_file()), key=lambda f: f.name)
    except OSError as exc:
        raise LocaleFileError(f"{folder}: cannot list the locale files: {exc}") from None
    if not files:
        raise LocaleFileError(f"{folder}: no locale file (*.toml)")
    locales: dict[str, Locale] = {}
    problems: list[str] = []
    for file in files:
        code = file.name.removesuffix(".toml")
        if not _CODE.match(code):
            problems.append(f"{file.name}: '{code}' is not a locale code (lower-case letters, like fr, en or pt-BR)")
            continue
        try:
            data = tomllib.loads(file.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            problems.append(f"{file.name}: cannot read it: {exc}")
            continue
        found: list[str] = []
        sections: dict[str, Any] = {}
        for key in data:
            if key not in _SECTIONS:
                close = difflib.get_close_matches(key, list(_SECTIONS), n=1)
                found.append(f"has an unknown table [{key}]" + (f" (did you mean [{close[0]}]?)" if close else ""))
        for name, cls in _SECTIONS.items():
            if name not in data:
                found.append(f"lacks the table [{name}]")
                continue
            if not isinstance(data[name], dict):
                found.append(f"[{name}] must be a table")
                continue
            sections[name] = _build(cls, data[name], (name,), found)
        problems += [f"{file.name}: {p}" for p in found]
        if not found:
            locales[code] = Locale(code=code, file=file.name, **sections)
    if not problems:
        problems = _compare(locales)
    if problems:
        head = "a locale file is wrong" if len(problems) == 1 else f"{len(problems)} problems in the locale files"
        raise LocaleFileError(f"{head} ({folder}):\n" + "\n".join(f"  - {p}" for p in problems),
                              hint="every file in mailer/locales/ has exactly the keys of the others")
    return locales


@functools.cache
def _catalog() -> dict[str, Locale]:
    return load(resources.files(__name__))


def available() -> tuple[str, ...]:
    """The locale codes, sorted: one per file in mailer/locales/."""
    return tuple(_catalog())


def strings(locale: str) -> Locale:
    """Every sentence of one locale; KeyError naming the available ones if there is no such file."""
    try:
        return _catalog()[locale]
    except KeyError:
        raise KeyError(f"no locale {locale!r} (mailer/locales/ has {', '.join(available())})") from None


_VOWEL = re.compile(r"[aeiouyàâäéèêëîïôöùûüœæ]", re.IGNORECASE)


def fill(code: str, text: str, **values: str) -> str:
    """text.format(**values), with French elision: "de {org}" before a vowel reads "d'Acme"."""
    if code.split("-")[0] == "fr":
        for name, value in values.items():
            if value[:1] and _VOWEL.match(value[:1]):
                text = re.sub(r"\b([dD])e \{" + name + r"\}", r"\1'{" + name + "}", text)
    return text.format(**values)


def long_date(code: str, day: int, month: int, year: int) -> str:
    """A date as a person writes it in this language: "12 juin 2026", "1er juin 2026", "12 June 2026"."""
    words = strings(code).explain
    return f"{words.first_day if day == 1 else day} {words.months.split()[month - 1]} {year}"


def typeset(code: str, text: str) -> str:
    """A sentence for HTML: in French, a no-break space before ":", ";", "!" and "?" (so the sign
    never starts a line)."""
    if code.split("-")[0] == "fr":
        return re.sub(r" ([:;!?])", "\u00a0\\1", text)
    return text
