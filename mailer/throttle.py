"""Slowing the whole run down when the relay says it sends too fast.

A relay that limits a sender answers with a 4xx that names the limit: Amazon SES "454
Throttling failure: Maximum sending rate exceeded", Gmail "421 4.7.28 … an unusual rate of
unsolicited mail … temporarily rate limited", Microsoft 365 "451 4.7.500 Server busy. Please
try again later", Exchange "421 4.4.2 Message submission rate for this client has exceeded the
configured limit", Postfix "450 4.7.1 Error: too much mail from …", Yahoo "421 4.7.0 [TSS04]
Messages from … temporarily deferred due to unexpected volume or user complaints".
Retrying each refused message with its own backoff at the same pace only meets the limit
again, message after message. `Throttle` instead slows every connection at once:
multiplicative decrease (half the rate the relay took, half the connections), then additive
increase while its answers are good, never above the configured rate and connections (TCP's
congestion control, AIMD). A throttled message costs no attempt: it goes back to `planned`
and is claimed again at the slower pace.

A relay that throttles forever must not keep a run going: `patience_seconds` after a
throttling answer without one message accepted since, the run stops trying, and what is left is deferred with the
relay's answer for the next run. A message throttled more than `PER_MESSAGE` times is
retried like any 4xx (its attempts count), so no run can loop on one message either.
"""
from __future__ import annotations

import asyncio
import math
import re
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

#: The reply codes a relay limits with: 421 (and the connection closes, RFC 5321), 450, 451,
#: 452 and 454 (SES).
CODES = frozenset({421, 450, 451, 452, 454})

# What a limit on the sender says, in the wordings providers document.
_LIMIT = re.compile(
    r"throttl"                                      # SES "Throttling failure", "throttled"
    r"|rate[ -]?limit"                              # Gmail 4.7.28, Microsoft 4.7.650 "rate limited"
    r"|rate exceeded|sending rate|submission rate"  # SES, "421 4.7.0 rate exceeded", Exchange 4.4.2
    r"|unusual rate"                                # Gmail 421 4.7.0 / 4.7.28
    r"|too much mail"                               # Postfix smtpd_client_message_rate_limit
    r"|too many (?:messages|mails?|e-?mails|requests|connections|recipients from)"  # Postfix anvil and kin
    r"|slow down|server busy"                       # Microsoft 451 4.7.500, Gmail 421 4.4.5
    r"|temporarily deferred due to"                 # Yahoo [TSS04], [TS01], [TS02]
    r"|relay limit"                                 # Gmail SMTP relay "Peak SMTP relay limit exceeded"
    r"|limits for how many messages",               # Outlook.com RP-001
    re.IGNORECASE)

# Limits that are not the sender's: one recipient receiving too fast (Gmail "450 4.2.1 The user
# you are trying to contact is receiving mail at a rate…", Yandex "451 4.5.1 The recipient … has
# exceeded their message rate limit"), or one connection that carried enough ("421 4.7.0 Too many
# messages on this connection": the transport reconnects). Greylisting ("450 4.2.0 Greylisted",
# "451 Please try again later") names no limit at all: those stay per-message retries.
_NOT_THE_SENDER = re.compile(
    r"user you are trying to contact|\b(?:the|this) recipient\b|(?:on|per|in|for) this (?:connection|session)"
    r"|per connection",
    re.IGNORECASE)


def says_throttled(code: int, text: str) -> bool:
    """Whether an SMTP answer says the relay limits how fast this sender sends."""
    return code in CODES and _LIMIT.search(text) is not None and _NOT_THE_SENDER.search(text) is None


#: the slowest pace the run is slowed to: one message every 10 s
FLOOR_RATE = 0.1
#: a message throttled more often than this is retried like any 4xx (its attempts count)
PER_MESSAGE = 10
#: good answers raise the connections by one this often (seconds)
CONNECTION_STEP_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    #: throttled this long without one message accepted, the run stops trying ([smtp]
    #: throttle_patience_seconds); what is left is deferred for the next run
    patience_seconds: float = 120.0


@dataclass(frozen=True, slots=True)
class ThrottleReport:
    """What the relay's limits did to a run."""

    times: int          # throttling answers
    rate: float         # messages/s the relay took from the first throttling answer on (0: none)
    connections: int    # the connections allowed at the end
    most_connections: int
    code: int | None    # the last throttling answer
    text: str
    gave_up: str = ""   # why the run stopped trying (one sentence), else ""

    @property
    def answer(self) -> str:
        """The last throttling answer as the run's summary lists the server's answers."""
        return f"{self.code or ''} {self.text}".strip()[:160]

    def lines(self) -> list[str]:
        """For the run's summary: 'The relay throttled: 37 times; settled at 9.5 messages/s, 2
        connections.', and why the run stopped trying, if it did."""
        plural = "" if self.connections == 1 else "s"
        times = f"The relay throttled: {self.times} time{'' if self.times == 1 else 's'}"
        lines = [f"{times}; settled at {_rate(self.rate)} messages/s, {self.connections} connection{plural}."
                 if self.rate else f"{times}, and took no message after the first throttling answer."]
        if self.gave_up:
            lines.append(f"{self.gave_up[0].upper()}{self.gave_up[1:]}; what was left is deferred for the next run.")
        return lines

    def note(self) -> str | None:
        """The settings that start the next run at the relay's pace, when it took messages."""
        if not self.rate:
            return None
        connections = f" and max_connections = {self.connections}" if self.connections < self.most_connections \
            else ""
        return (f"the relay limits how fast you send: set [smtp] rate_per_second = {_rate(self.rate)} (or the "
                f"campaign's){connections} to start the next run at its pace")


def _rate(rate: float) -> str:
    return f"{rate:.2g}" if rate < 10 else f"{rate:.0f}"


class Throttle:
    """The run's pace while the relay throttles: AIMD on the rate and the connections.

    Until the first throttling answer it adds nothing (`slowed` is False and `wait` is not
    called): the configured rate_per_second alone paces the run.
    """

    def __init__(self, *, rate_per_second: float, connections: int, policy: ThrottlePolicy | None = None,
                 limit_connections: Callable[[int], None] | None = None,
                 on_give_up: Callable[[str], None] | None = None) -> None:
        self.policy = policy or ThrottlePolicy()
        self.ceiling = rate_per_second if rate_per_second > 0 else math.inf
        self.most_connections = self.connections = max(1, connections)
        self.rate = math.inf          # messages/s this controller allows
        self.slowed = False           # a pace of ours applies (callers then await wait())
        self.times = 0
        self.gave_up = ""
        self._limit_connections = limit_connections
        self._on_give_up = on_give_up
        self._accepted: deque[float] = deque()   # when the messages of the last second were accepted
        self._per_message: Counter[int] = Counter()
        self._code: int | None = None
        self._text = ""
        self._step = 0.5                          # messages/s gained per second of good answers
        self._calm_until = 0.0                    # throttling answers before this do not slow further
        self._last_change = 0.0
        self._last_connection_step = 0.0
        self._throttled_since: float | None = None  # throttled, and nothing accepted since
        self._first = 0.0                          # the first throttling answer
        self._accepted_since_first = 0
        self._last_start = -math.inf               # the last message let go at our pace

    # ------------------------------------------------------------------ answers

    def accepted(self) -> None:
        """A message was accepted (called for every one: keep it cheap)."""
        now = time.monotonic()  # not the loop's time: asking for the running loop costs more here
        accepted = self._accepted
        accepted.append(now)
        while accepted[0] < now - 1.0:
            accepted.popleft()
        if not self.times:
            return
        self._throttled_since = None
        self._accepted_since_first += 1
        if self.slowed and now >= self._calm_until:
            self._raise(now)

    def throttled(self, key: int, code: int | None, text: str) -> bool:
        """The relay answered this message with a limit. True: put it back and send it again at
        the slower pace (no attempt counted); False: retry it as any 4xx (it was throttled more
        than PER_MESSAGE times, or the run stops trying)."""
        now = time.monotonic()
        self.times += 1
        self._code, self._text = code, text
        if self.times == 1:
            self._first = now
        if self._throttled_since is None:
            self._throttled_since = now
        elif now - self._throttled_since >= self.policy.patience_seconds:
            self._give_up(now)
            return False
        if now >= self._calm_until:
            self._lower(now)
        self._per_message[key] += 1
        return self._per_message[key] <= PER_MESSAGE

    def _lower(self, now: float) -> None:
        """Half the rate the relay took in the last second (at least one message: it took less
        than that), or half our pace when that is lower; half the connections. Then calm for a
        while: the answers to the messages already in flight say nothing about the new pace."""
        while self._accepted and self._accepted[0] < now - 1.0:
            self._accepted.popleft()
        base = min(self.rate, max(1.0, len(self._accepted)))
        self.rate = min(self.ceiling, max(FLOOR_RATE, base / 2))
        self._step = max(0.5, base / 20)  # back to the rate it throttled at in about 10 s of good answers
        self.slowed = True
        self._set_connections(max(1, self.connections // 2))
        self._calm_until = now + max(1.0, 2.0 / self.rate)
        self._last_change = self._last_connection_step = self._last_start = now

    def _raise(self, now: float) -> None:
        self.rate = min(self.ceiling, self.rate + self._step * (now - self._last_change))
        self._last_change = now
        if now - self._last_connection_step >= CONNECTION_STEP_SECONDS and self.connections < self.most_connections:
            self._last_connection_step = now
            self._set_connections(self.connections + 1)
        if self.rate >= self.ceiling and self.connections >= self.most_connections:
            self.slowed = False  # back to the configured pace

    def _set_connections(self, connections: int) -> None:
        if connections != self.connections:
            self.connections = connections
            if self._limit_connections is not None:
                self._limit_connections(connections)

    def _give_up(self, now: float) -> None:
        if not self.gave_up:
            since = now - (self._throttled_since or now)
            answer = f"{self._code or ''} {self._text}".strip()[:160]
            self.gave_up = (f"the relay throttled for {since:.0f} s without taking a message (the last answer: "
                            f"{answer}), so this run stopped trying ([smtp] throttle_patience_seconds = "
                            f"{self.policy.patience_seconds:g})")
            if self._on_give_up is not None:
                self._on_give_up(self.gave_up)

    # ------------------------------------------------------------------ pace

    async def wait(self, stop: asyncio.Event) -> bool:
        """Wait for the next message's turn at the slowed pace. False when the run stops meanwhile
        (stopped by the caller, or by this throttle's patience running out)."""
        while not stop.is_set():
            now = time.monotonic()
            if self._throttled_since is not None and now - self._throttled_since >= self.policy.patience_seconds:
                self._give_up(now)
                break
            if not self.slowed:
                return True
            interval = 1.0 / self.rate
            turn = self._last_start + interval
            if now >= turn:
                # On time: keep the pace's rhythm; after a pause: start it again from now.
                self._last_start = turn if now - turn < interval else now
                return True
            # At most a second at a time: the pace may rise meanwhile, or the patience run out.
            await _sleep_or_stop(min(turn - now, 1.0), stop)
        return False

    def report(self) -> ThrottleReport | None:
        if not self.times:
            return None
        elapsed = time.monotonic() - self._first
        if not self._accepted_since_first:
            rate = 0.0
        elif elapsed >= 2.0:
            rate = self._accepted_since_first / elapsed
        else:  # too short to measure: the pace it was at
            rate = self.rate
        return ThrottleReport(self.times, rate, self.connections, self.most_connections, self._code, self._text,
                              self.gave_up)


async def _sleep_or_stop(seconds: float, stop: asyncio.Event) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
