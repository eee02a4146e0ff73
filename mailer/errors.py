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

    def __init__(self, problems: list[str], *, hint: str | None = None, good_rows: int = 0) -> None:
        self.problems = problems
        self.good_rows = good_rows  # rows that would import if the bad ones were skipped
        shown = problems[:20]
        more = len(problems) - len(shown)
        message = "\n".join(shown) + (f"\n  … and {more} more" if more > 0 else "")
        super().__init__(message, hint=hint)


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


class NotFound(InputError):
    """A named thing (list, campaign, contact) does not exist."""
