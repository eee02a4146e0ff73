"""How the CLI shows things: progress bars, the gate's counts, a message, a run's summary."""
from __future__ import annotations

import contextlib
import email
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from email import policy
from typing import Any

import click

from ..campaign import RunSummary
from ..gate import RULE_IDS
from ..planning import Plan


class Steps:
    """Progress bars for the long steps before sending (CSV import, gate, rendering checks), one
    after the other on stderr: in a terminal, and for steps of 5,000 items or more (100,000
    contacts take about 6 s to import and decide, 13 s to render and check)."""

    SHOWN_FROM = 5000

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._bar: Any = None

    def __call__(self, label: str, total: int | None) -> Callable[[int], None]:
        self._close()
        if not self.enabled or total is None or total < self.SHOWN_FROM:
            return lambda n: None
        self._bar = click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True,
                                      update_min_steps=max(1, total // 500))
        self._bar.__enter__()
        update: Callable[[int], None] = self._bar.update
        return update

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()


class SendingBar:
    """The bar while sending: counts per outcome and the rate, for sends of 50 messages or more.
    Redrawn every 0.2% or so: redrawing for each of thousands of messages a second cost CPU."""

    def __init__(self) -> None:
        self.results: Counter[str] = Counter()
        self._bar: Any = None
        self._stack = contextlib.ExitStack()

    def start(self, total: int) -> None:
        started = time.monotonic()
        if total >= 50:
            self._bar = self._stack.enter_context(click.progressbar(
                length=total, label="Sending", file=sys.stderr, show_pos=True,
                update_min_steps=max(1, total // 500), item_show_func=lambda _: _rate(self.results, started)))

    def __call__(self, state: str) -> None:
        self.results[state] += 1
        if self._bar is not None:
            self._bar.update(1, state)

    @contextlib.contextmanager
    def shown(self) -> Iterator[SendingBar]:
        with self._stack:
            yield self


def _rate(results: Counter[str], started: float) -> str:
    """sent=… failed=… deferred=… and the rate so far, after the bar."""
    done = sum(results.values())
    rate = done / max(time.monotonic() - started, 1e-6)
    return " ".join([*(f"{k}={v}" for k, v in sorted(results.items())), f"{rate:,.0f} msg/s"])


def print_counts(plan: Plan) -> None:
    counts = plan.counts
    total = sum(counts.values())
    click.echo(f"Campaign {plan.campaign.id}: {total} candidates")
    click.echo(f"  {'allowed':<20} {counts.get('allowed', 0):>7}")
    for rule in RULE_IDS:
        if counts.get(rule):
            click.echo(f"  {rule:<20} {counts[rule]:>7}")
    if plan.uncertain_recovered:
        click.secho(f"  {plan.uncertain_recovered} deliveries were interrupted by a crash and are marked uncertain "
                    "(not resent; use --retry-uncertain to resend them).", fg="yellow")


def readable(data: bytes) -> str:
    """A message as a reviewer reads it: decoded headers, then the decoded text part."""
    message = email.message_from_bytes(data, policy=policy.default)
    lines = [f"{name}: {value}" for name, value in message.items() if name.lower() != "dkim-signature"]
    body = message.get_body(("plain",))
    text = body.get_content() if body is not None else ""
    return "\n".join(lines) + "\n\n" + text.replace("\r\n", "\n")


def print_summary(summary: RunSummary) -> None:
    counts = summary.outcomes
    click.echo(f"Summary of this run ({summary.sender}):" if summary.sender else "Summary of this run:")
    for state in ("sent", "deferred", "failed", "uncertain", "suppressed"):
        if counts.get(state):
            click.echo(f"  {state:<12} {counts[state]:>7}")
    if summary.footer_blocked:
        click.echo(f"  {'footer-missing':<12} {summary.footer_blocked:>7}")
    if not any(counts.values()) and not summary.footer_blocked:
        click.echo("  nothing delivered")
    for address, reason in summary.failures[:20]:
        click.echo(f"  failed: {address}: {reason}")
    if counts.get("deferred"):
        click.echo("Deferred messages are retried by the next run of the same command. The server's answers:")
        for answer, times in summary.deferrals.most_common(3):
            click.echo(f"  {times:>7} x {answer}")
    if summary.throttling is not None:
        for line in summary.throttling.lines():
            click.echo(line)
    click.echo(f"See: mailer status {summary.campaign_id}")
