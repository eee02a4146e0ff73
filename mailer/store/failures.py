"""What went wrong with a database, said to a person: one sentence naming the database and what to do.

Never the SQL or its parameters (they hold addresses and names), never a password.
"""
from __future__ import annotations

import re
from collections.abc import Callable

from sqlalchemy.engine import make_url

from ..errors import StoreError

_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pwd|sslpassword|passfile)=)[^&#]*", re.IGNORECASE)


def redacted(url: str) -> str:
    """A database url as it may be shown: its password, if any, as *** (also one given in the
    query, `?password=`). A url SQLAlchemy cannot read is redacted by pattern (whatever sits
    between `user:` and `@`)."""
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unreadable url is still shown, without its password
        shown = re.sub(r"(://[^/@:]*:).*@", r"\1***@", url)
    return _QUERY_SECRET.sub(r"\1***", shown)


def secrets_in(url: str) -> list[str]:
    """The password of a url, in its authority or its query."""
    found = [m.group(0).split("=", 1)[1] for m in _QUERY_SECRET.finditer(url)]
    try:
        password = make_url(url).password
    except Exception:  # noqa: BLE001 - unreadable: the pattern above is all there is
        password = None
    return [s for s in [*found, str(password) if password else ""] if s]


def without_secrets(exc: BaseException | None, url: str) -> str:
    """An error's text on one line, the url (SQLAlchemy quotes one it cannot parse) shown
    redacted, and the password itself (should a driver quote its connection string) as ***."""
    text = " ".join(str(exc).split()).replace(url, redacted(url))
    for secret in secrets_in(url):
        text = text.replace(secret, "***")
    return text


def database_name(url: str) -> str:
    """How a message names a database: a SQLite file by its path, a server's by host, port and name."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - shown as given, redacted
        return repr(redacted(url))
    if parsed.get_backend_name() == "sqlite":
        return f"the database file {parsed.database}" if parsed.database else repr(redacted(url))
    if parsed.get_backend_name() == "postgresql":
        return f"the PostgreSQL database {parsed.database or '(default)'!r} at {_server(url)}"
    return repr(redacted(url))


def _server(url: str) -> str:
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001
        return "?"
    host = parsed.host or parsed.query.get("host") or "localhost"
    return f"{host}:{parsed.port or 5432}"


def _first_line(exc: BaseException, url: str) -> str:
    said = (str(exc).strip().splitlines() or [""])[0].split("[SQL:", 1)[0].strip()
    for secret in secrets_in(url):
        said = said.replace(secret, "***")
    return said


# SQLite's primary result codes (sqlite3 gives their names: SQLITE_BUSY, SQLITE_IOERR_WRITE, ...)
# and, for an older sqlite3 without them, the words of its messages.
def _locked(name: str) -> str:
    return (f"{name} is locked by another program and stayed locked past the busy timeout: wait for that program "
            "to finish or stop it (or raise [database] busy_timeout_seconds), then rerun")


_SQLITE: list[tuple[str, str, Callable[[str], str]]] = [
    ("SQLITE_BUSY", "database is locked", _locked),
    ("SQLITE_LOCKED", "table is locked", _locked),
    ("SQLITE_FULL", "database or disk is full", lambda name: (
        f"the disk holding {name} is full: free space on it (or move the database to a larger disk), "
        "then rerun")),
    ("SQLITE_NOTADB", "file is not a database", lambda name: (
        f"{name} is not a mailer database, or is damaged beyond reading: restore it from a backup, or point "
        "[database] url in config.toml at the right file")),
    ("SQLITE_CORRUPT", "malformed", lambda name: (
        f"{name} is damaged (SQLite found its content malformed): restore it from a backup; do not keep "
        "sending with it")),
    ("SQLITE_IOERR", "disk i/o error", lambda name: (
        f"reading or writing {name} failed with an I/O error: check the disk (free space, its health, a "
        "network file system that went away), then rerun")),
    ("SQLITE_READONLY", "readonly database", lambda name: (
        f"{name} cannot be written (read-only file, folder or disk for this user): give this user write "
        "access to the file and its folder, then rerun")),
    ("SQLITE_CANTOPEN", "unable to open database file", lambda name: (
        f"{name} cannot be opened: check that it and its folder exist and that this user may read and write "
        "them, then rerun")),
]

# PostgreSQL's SQLSTATEs that say what happened to the server or the connection, and the words
# libpq uses for the same when it has no SQLSTATE to give (failures while connecting).
_SHUTTING_DOWN = {"57P01", "57P02", "57P03"}  # admin shutdown, crash shutdown, cannot connect now
SHUTTING_DOWN_WORDS = ("shutting down", "starting up", "in recovery mode", "terminating connection due to")
LOST_WORDS = ("server closed the connection", "consuming input failed", "connection is lost",
              "the connection is closed", "connection already closed", "connection reset", "ssl syscall error",
              "eof detected", "server conn crashed")
UNREACHABLE_WORDS = ("connection refused", "could not connect", "timeout expired", "no route to host",
                     "name or service not known", "could not translate host name", "network is unreachable",
                     "temporary failure in name resolution", "no such file or directory")


def _reason(said: str) -> str:
    """libpq's own words, without the preamble naming the host it already repeats."""
    return said.rsplit("failed:", 1)[-1].replace("FATAL:", "").strip().rstrip(".") or said


def _postgresql(original: BaseException, said: str, url: str) -> str | None:
    where = _server(url)
    try:
        database = make_url(url).database or ""
    except Exception:  # noqa: BLE001
        database = ""
    state = getattr(original, "sqlstate", None) or ""
    words = said.lower()
    reason = _reason(said)
    if state in ("28P01", "28000") or "authentication failed" in words:
        return (f"PostgreSQL at {where} refused the user of [database] url ({reason}): check the user and password "
                "([database] url and password_env in config.toml, or PGPASSWORD / ~/.pgpass)")
    if state == "3D000" or ("database" in words and "does not exist" in words):
        return (f"the database {database!r} does not exist on PostgreSQL at {where}: create it on the server and "
                "run `mailer db init`, or check [database] url in config.toml")
    if state in _SHUTTING_DOWN or any(w in words for w in SHUTTING_DOWN_WORDS):
        return (f"PostgreSQL at {where} is shutting down or restarting, so the database {database!r} cannot be used: "
                "wait until the server is up again (or raise [database] reconnect_seconds), then rerun")
    if state == "53100":
        return f"the disk of PostgreSQL at {where} is full: free space on the server, then rerun"
    if state == "53300" or "too many" in words:
        return (f"PostgreSQL at {where} accepts no more connections ({reason}): close other clients or raise the "
                "server's max_connections, then rerun")
    if state.startswith("08") or any(w in words for w in LOST_WORDS):
        return (f"the connection to PostgreSQL at {where} was lost and did not come back ({reason}): check that the "
                "server is up and reachable, then rerun")
    if not state and any(w in words for w in UNREACHABLE_WORDS):
        return (f"PostgreSQL at {where} is unreachable ({reason}), so the database {database!r} cannot be used: "
                "start the server or check host and port in [database] url, then rerun")
    return None


def _sqlite(original: BaseException, said: str, url: str) -> str | None:
    code = getattr(original, "sqlite_errorname", "") or ""
    words = said.lower()
    name = database_name(url)
    for prefix, phrase, sentence in _SQLITE:
        if code.startswith(prefix) or (not code and phrase in words):
            return sentence(name)
    return None


def describe_failure(exc: BaseException, url: str) -> str:
    """One sentence on a database error, for a person: which database (password hidden), what
    happened to it in plain words, and what to do. An error it does not recognise is named by
    its driver's first line (no SQL, no parameters, no row values)."""
    original = getattr(exc, "orig", None) or exc
    said = _first_line(original, url)
    module = type(original).__module__
    found = None
    if module.startswith("psycopg") or url.startswith("postgresql"):
        found = _postgresql(original, said, url)
    elif module.startswith("sqlite3") or url.startswith("sqlite"):
        found = _sqlite(original, said, url)
    if found:
        return found
    return (f"the database {redacted(url)!r} failed: {type(original).__name__}: {said}; check that it is reachable "
            "and not full, then rerun (rerun with --debug for the traceback)")


def database_failure(exc: BaseException, url: str) -> StoreError:
    """The StoreError (exit 1) to raise for a database error: `describe_failure`'s sentence."""
    return StoreError(describe_failure(exc, url))
