"""The command line: parse, call the library, print, map errors to exit codes.

One module per command group; each command opens the workspace, calls one function of
the public API (`mailer.*`) and prints its result. Nothing here writes SQL or
orchestrates a send.

Exit codes: 0 done; 1 runtime failure; 2 bad input; 3 compliance refusal of the
whole campaign; 4 finished, but some deliveries failed.
"""
from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from .. import __version__
from ..config import find_config_path
from ..errors import DatabaseMissing, InvalidRows, ListNotFound, MailerError
from ..optouts import apply_spooled_optouts
from ..store import describe_failure
from ..workspace import Workspace, open_workspace


class MailerGroup(click.Group):
    """Turns every MailerError into one clear message and its exit code (the one place)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MailerError as exc:
            debug = bool(ctx.meta.get("mailer.debug"))
            if debug:
                traceback.print_exc()
            click.secho(f"Error: {exc.message}", fg="red", err=True)
            hint = _hint(exc)
            if hint:
                click.echo(f"Hint: {hint}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except SQLAlchemyError as exc:  # the database failed while working: which one, and what it said
            if ctx.meta.get("mailer.debug"):
                raise
            env = ctx.find_object(Env)
            url = env._workspace.config.database_url if env is not None and env._workspace is not None else ""
            click.secho(f"Error: {describe_failure(exc, url)}", fg="red", err=True)
            ctx.exit(1)
        except Exception as exc:  # an unexpected bug: say so plainly
            if ctx.meta.get("mailer.debug"):
                raise
            click.secho(f"Error: unexpected {type(exc).__name__}: {exc}", fg="red", err=True)
            click.echo("Hint: rerun with --debug for the traceback, and report it.", err=True)
            ctx.exit(1)


def _hint(exc: MailerError) -> str | None:
    """The library's hint, or, where the next step is a command or an option, the CLI's."""
    if isinstance(exc, InvalidRows):
        return (f"fix these rows (nothing was imported), or rerun with --skip-invalid to import the "
                f"{exc.good_rows} good rows")
    if isinstance(exc, DatabaseMissing):
        return ("create it with `mailer db init` (or `mailer init`); if it should exist, check [database] url in "
                "config.toml: a new database would start with an empty suppression list")
    if isinstance(exc, ListNotFound):
        return f"import contacts into it first: mailer contacts import FILE --list {exc.list_name}"
    return exc.hint


class Env:
    """What commands share: the --config path and the environment (swappable in tests)."""

    def __init__(self, config: str | None, environ: dict[str, str]) -> None:
        self.config_option = config
        self.environ = environ
        self._workspace: Workspace | None = None
        self._spool_applied = False

    @property
    def config_path(self) -> Path:
        """--config, $MAILER_CONFIG, ./config.toml, else the nearest beside the command's campaign file."""
        context = click.get_current_context(silent=True)
        campaign_file = context.params.get("campaign") if context is not None else None
        return find_config_path(self.config_option, self.environ, campaign_file if isinstance(campaign_file, str) else None)

    def workspace(self, *, writing: bool = False) -> Workspace:
        """The workspace, opened once. A command that writes (`writing`) first records the opt-outs
        waiting in the spool (those `mailer serve` could not write when the database was busy)."""
        if self._workspace is None:
            self._workspace = open_workspace(self.config_path, self.environ)
            for note in self._workspace.notes:
                click.echo(f"Note: {note}", err=True)
        if writing and not self._spool_applied:
            self._spool_applied = True
            applied = apply_spooled_optouts(self._workspace)
            spool = self._workspace.spool.path
            if applied.recorded:
                click.echo(f"Note: recorded {applied.recorded} opt-outs that waited in {spool} (the database was "
                           "busy or unreachable when they came).", err=True)
            if applied.unverified:
                click.secho(f"Warning: {applied.unverified} opt-outs in {spool} carry a token this secret does not "
                            "verify (was the unsubscribe secret changed?): they stay there until it is restored.",
                            fg="yellow", err=True)
            aside = self._workspace.spool.aside_path
            if aside.exists():
                click.secho(f"Warning: {aside} holds lines of the opt-out spool this mailer cannot read (another "
                            "version's, or damaged): each may be a person's opt-out; read them, suppress those "
                            "people (mailer suppress add), then remove the file.", fg="yellow", err=True)
        return self._workspace

    def close(self) -> None:
        if self._workspace is not None:
            self._workspace.close()


pass_env = click.make_pass_decorator(Env)


@click.group(cls=MailerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="config.toml to use (default: $MAILER_CONFIG, else ./config.toml, else the nearest one "
                   "beside the campaign file).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="mailer")
@click.pass_context
def cli(ctx: click.Context, config: str | None, debug: bool) -> None:
    """Send email campaigns that cannot break the rules.

    Every recipient passes a compliance gate; every message carries a footer the
    template cannot leave out; everything is recorded.

    \b
    Start with:  mailer init demo && cd demo
                 mailer send campaigns/cloud-audit.toml
    """
    ctx.meta["mailer.debug"] = debug
    env = Env(config, dict(os.environ))
    ctx.obj = env
    ctx.call_on_close(env.close)


def main() -> None:
    cli(prog_name="mailer")


# The command groups register themselves on `cli`.
from . import campaign, contacts, db, people, serve, suppress  # noqa: E402, F401
