"""One exception tree. The CLI maps each class to an exit code in one place.

Every error carries a sentence that names the file, line, recipient or host,
and, when we know it, a hint saying what to do next.
"""
from __future__ import annotations


class MailerError(Exception):
    """Base of every error mailer raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InputError(MailerError):
    """Bad input from the user: TOML, CSV, template, command-line values (exit 2)."""

    exit_code = 2


class ConfigError(InputError):
    """One or more problems in config.toml or a campaign file; all of them at once."""

    def __init__(self, problems: list[str], *, hint: str | None = None) -> None:
        self.problems = problems
        message = problems[0] if len(problems) == 1 else (
            f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)
        )
        super().__init__(message, hint=hint)


class CsvError(InputError):
    """A contacts CSV has bad rows; nothing was imported."""

    def __init__(self, problems: list[str], *, hint: str | None = None) -> None:
        self.problems = problems
        shown = problems[:20]
        more = len(problems) - len(shown)
        message = "\n".join(shown) + (f"\n  … and {more} more" if more > 0 else "")
        super().__init__(message, hint=hint)


class InvalidRows(CsvError):
    """Some rows of a contacts CSV are invalid: nothing was imported (all or nothing)."""

    def __init__(self, problems: list[str], *, good_rows: int) -> None:
        self.good_rows = good_rows  # what would import if the bad rows were skipped
        super().__init__(problems, hint=f"fix these rows (nothing was imported), or skip the invalid rows to "
                                        f"import the {good_rows} good ones")


class TemplateError(InputError):
    """A template does not compile or fails while rendering."""


class ComplianceRefusal(MailerError):
    """The campaign as a whole may not be sent (exit 3)."""

    exit_code = 3

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "the campaign is refused:\n" + "\n".join(f"  - {p}" for p in problems)
        )


class TransportError(MailerError):
    """The transport could not be opened or used (SMTP server down, outbox not writable)."""


class StoreError(MailerError):
    """The database could not be opened or written."""


class DatabaseMissing(StoreError):
    """The configured database does not exist (or holds nothing of mailer's): only an explicit
    create makes one, so a lost or mistyped database never looks like a new, empty one."""


class DatabaseGone(StoreError):
    """The SQLite file a run opened was removed or replaced while it was sending: the run
    stopped, since what it would record there nobody would read."""

    def __init__(self, message: str, *, hint: str | None = None, unrecorded: int = 0,
                 rescued: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.unrecorded = unrecorded  # messages handed to the transport not recorded at the path
        self.rescued = rescued        # the copy of the run's database, when one could be made


class SpoolUnreadable(StoreError, OSError):
    """The opt-out spool exists but cannot be read (a folder, no permission, an I/O error). Also an
    OSError, so that the server and a running send, which go on without the spool, still do."""


class NotFound(InputError):
    """A named thing (list, campaign, contact) does not exist."""


class ListNotFound(NotFound):
    """No contact list has this name."""

    def __init__(self, list_name: str) -> None:
        self.list_name = list_name
        super().__init__(f"there is no contact list named {list_name!r}", hint="import contacts into it first")
