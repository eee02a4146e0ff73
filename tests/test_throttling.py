"""A relay that says "slower" (issue 16): the whole run slows down, settles near the relay's
limit, finishes, and mails nobody twice; a relay that throttles forever ends the run."""
from __future__ import annotations

import asyncio
import re
import signal
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from conftest import Project
from smtp_server import Received, RecordingHandler, Relay, SmtpServer
from test_send_smtp import CLAIRE, PAUL, _spawn_send, _wait_for, many, use_smtp

from mailer.throttle import says_throttled

BOTH_DATABASES = True


@dataclass
class LimitingRelay(RecordingHandler):
    """Accepts at most `per_second` messages in any second (0: none at all); beyond, answers
    `answer`: a 421 at MAIL, closing the connection as RFC 5321 says it does, any other code
    after the content, as Amazon SES does. Records when it accepted each message."""

    per_second: int = 20
    answer: str = "421 4.7.0 rate exceeded"
    accepted_at: list[float] = field(default_factory=list)
    refused: int = 0
    #: connections open (counted by a TCP relay in front) whenever a message was accepted
    open_connections: list[int] = field(default_factory=list)
    front: Relay | None = None

    def _full(self) -> bool:
        """Already `per_second` messages accepted in the last second. The server's handlers run on
        one event loop: between this check and the record of an acceptance nothing else runs."""
        n = self.per_second
        return n == 0 or len(self.accepted_at) >= n and self.accepted_at[-n] > time.monotonic() - 1.0

    def _refuse(self, server) -> str:  # noqa: ANN001
        self.refused += 1
        if self.answer.startswith("421"):  # after the answer has gone
            asyncio.get_running_loop().call_soon(server.transport.close)
        return self.answer

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: ANN001
        if self.answer.startswith("421") and self._full():
            return self._refuse(server)
        return await super().handle_MAIL(server, session, envelope, address, mail_options)

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
        if self._full():
            return self._refuse(server)
        self.accepted_at.append(time.monotonic())
        if self.front is not None:
            self.open_connections.append(self.front.active)
        with self.lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 Message accepted"


def steady(samples: list[float], values: list[int] | None = None) -> tuple[list[int], list[int]]:
    """Messages accepted in each whole second of the run, leaving out its first 3 seconds (finding
    the limit) and its last second (partial); and the `values` recorded in those seconds."""
    start = samples[0]
    seconds = int(samples[-1] - start)
    per_second = Counter(int(t - start) for t in samples)
    kept = range(3, seconds)
    recorded = [v for t, v in zip(samples, values or [], strict=False) if int(t - start) in kept]
    return [per_second.get(s, 0) for s in kept], recorded


@pytest.mark.parametrize("answer", ["421 4.7.0 rate exceeded", "454 Throttling failure: Maximum sending rate exceeded."],
                         ids=["421-rate-exceeded", "454-ses-throttling"])
def test_a_relay_limiting_the_rate_gets_the_run_settled_near_its_limit(project: Project, answer: str) -> None:
    n, most = 20, 6
    addresses = many(project, 300)
    handler = LimitingRelay(per_second=n, answer=answer)
    with SmtpServer(handler) as server:
        front = handler.front = Relay(server.port)
        try:
            use_smtp(project, front.port, max_connections=most)
            result = project.send()
        finally:
            front.close()
    assert result.exit_code == 0, result.output
    assert handler.recipients() == {a: 1 for a in addresses}, "everyone once, nobody twice"
    assert handler.refused > 0
    # A throttled message costs no attempt: every message went on its first.
    assert project.sql("select distinct attempts from send_log where state = 'sent'") == [(1,)]
    per_second, connections = steady(handler.accepted_at, handler.open_connections)
    assert len(per_second) >= 8, per_second
    assert 0.5 * n <= statistics.median(per_second) <= 1.3 * n, per_second
    # Fewer connections than configured while the relay limits the run.
    assert statistics.median(connections) < most, connections
    line = re.search(r"The relay throttled: (\d+) times; settled at ([\d.]+) messages/s, (\d+) connections?\.",
                     result.output)
    assert line is not None, result.output
    assert int(line[1]) == handler.refused  # every throttling answer counted once
    assert 0.5 * n <= float(line[2]) <= 1.3 * n, line[0]
    assert "Note: the relay limits how fast you send: set [smtp] rate_per_second = " in result.output
    if answer.startswith("421"):  # each 421 closed its connection: mailer connected again
        assert handler.connections > handler.refused


def test_a_relay_that_throttles_forever_ends_the_run_and_defers_the_rest(project: Project) -> None:
    addresses = many(project, 40)
    quota = "454 Throttling failure: Daily message quota exceeded."
    handler = LimitingRelay(per_second=0, answer=quota)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=4, throttle_patience_seconds=2)
        result = project.send("--limit", "30")
        assert result.exit_code == 4, result.output  # finished, allowed recipients wait
        assert handler.recipients() == {}
        rows = project.sql("select state, smtp_code, smtp_text, attempts from send_log order by id")
        # The run's 30 are deferred with the relay's answer; the 10 beyond --limit stay planned.
        assert Counter(row[0] for row in rows) == {"deferred": 30, "planned": 10}, rows
        assert {(code, text) for state, code, text, _ in rows if state == "deferred"} == \
            {(454, "Throttling failure: Daily message quota exceeded.")}
        assert re.search(r"The relay throttled: \d+ times, and took no message after the first throttling answer\.",
                         result.output), result.output
        assert "rate_per_second = " not in result.output  # no rate to advise: it took none
        assert re.search(r"The relay throttled for \d+ s without taking a message \(the last answer: 454 Throttling failure: "
                         r"Daily message quota exceeded\.\), so this run stopped trying \(\[smtp\] "
                         r"throttle_patience_seconds = 2\); what was left is deferred for the next run\.",
                         result.output), result.output
        assert "      30 x 454 Throttling failure: Daily message quota exceeded." in result.output
        assert "Not finished: 30 allowed recipients were not sent yet (30 deferred, 0 uncertain)." in result.output
        assert "--yes` to retry the deferred" in result.output
        assert project.run("status", str(project.campaign)).output.count("stopped: the relay throttled") == 1
        # The quota is back: the next run sends everyone, once.
        handler.per_second = 1000
        rerun = project.send()
    assert rerun.exit_code == 0, rerun.output
    assert handler.recipients() == {a: 1 for a in addresses}


def test_killed_while_the_relay_throttles_then_rerun_mails_nobody_twice_and_loses_no_one(project: Project) -> None:
    """Throttled messages wait `planned`, not `sending`: a crash meanwhile leaves them to the next
    run, and only the messages in flight at the crash are uncertain."""
    addresses = many(project, 80)
    handler = LimitingRelay(per_second=20, answer="421 4.7.0 rate exceeded")
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=4)
        process = _spawn_send(project)
        _wait_for(lambda: handler.refused >= 3 and len(handler.accepted_at) >= 25)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        rerun = project.send()
    received = handler.recipients()
    assert max(received.values()) == 1, "somebody received two messages"
    states = dict(project.sql("select address_key, state from send_log"))
    uncertain = {a for a, state in states.items() if state == "uncertain"}
    assert len(uncertain) <= 4, "no more uncertain than messages in flight"
    assert rerun.exit_code == (4 if uncertain else 0), rerun.output
    assert {a for a in addresses if a not in uncertain} <= set(received), "nobody lost"
    assert {state for a, state in states.items() if a not in uncertain} == {"sent"}


def test_a_throttled_message_costs_no_attempt_and_goes_once_the_relay_takes_it(project: Project) -> None:
    throttled = "454 4.7.0 Throttling failure: Maximum sending rate exceeded."
    handler = RecordingHandler(rcpt_faults={CLAIRE: [throttled]})
    with SmtpServer(handler) as server:
        use_smtp(project, server.port)
        # One attempt each: a throttling answer counted as an attempt would leave Claire deferred.
        project.write("config.toml", project.config.read_text().replace("max_attempts = 3", "max_attempts = 1"))
        result = project.send()
    assert result.exit_code == 0, result.output
    assert handler.recipients() == {CLAIRE: 1, PAUL: 1}
    assert dict(project.sql("select address_key, attempts from send_log where state = 'sent'")) == {CLAIRE: 1, PAUL: 1}
    assert "The relay throttled: 1 time; settled at " in result.output
    assert "Note: the relay limits how fast you send: set [smtp] rate_per_second = " in result.output


def test_a_4xx_that_names_no_limit_is_retried_per_message_without_slowing_the_run(project: Project) -> None:
    handler = RecordingHandler(rcpt_faults={CLAIRE: ["450 4.2.0 Recipient address rejected: Greylisted"]})
    with SmtpServer(handler) as server:
        use_smtp(project, server.port)
        result = project.send()
    assert result.exit_code == 0, result.output
    assert dict(project.sql("select address_key, attempts from send_log where state = 'sent'")) == {CLAIRE: 2, PAUL: 1}
    assert "throttled" not in result.output


# Wordings from the providers' documentation and from their answers seen in mail logs.
THROTTLING = [
    (454, "Throttling failure: Maximum sending rate exceeded."),                    # Amazon SES
    (454, "Throttling failure: Daily message quota exceeded."),                     # Amazon SES
    (421, "4.7.28 [203.0.113.42] Our system has detected an unusual rate of unsolicited mail originating "
          "from your IP address. To protect our users from spam, mail sent from your IP address has been "
          "temporarily rate limited. - gsmtp"),                                      # Gmail
    (421, "4.7.0 [203.0.113.42 15] Our system has detected an unusual rate of unsolicited mail originating "
          "from your IP address."),                                                  # Gmail, older
    (450, "4.2.1 Peak SMTP relay limit exceeded for customer. This is a temporary error."),  # Gmail relay
    (421, "4.4.5 Server busy, try again later."),                                    # Gmail
    (451, "4.7.500 Server busy. Please try again later from [203.0.113.10]. (S77714)"),  # Microsoft 365
    (451, "4.7.650 The mail server [203.0.113.10] has been temporarily rate limited due to IP reputation."),
    (421, "4.4.2 Message submission rate for this client has exceeded the configured limit"),  # Exchange
    (421, "RP-001 (SNT0-MC2-F19) Unfortunately, some messages from 203.0.113.10 weren't sent. Please try "
          "again. We have limits for how many messages can be sent per hour and per day."),  # Outlook.com
    (421, "4.7.0 [TSS04] Messages from 203.0.113.10 temporarily deferred due to unexpected volume or user "
          "complaints - 4.16.55.1"),                                                 # Yahoo
    (450, "4.7.1 Error: too much mail from 203.0.113.10"),                           # Postfix
    (450, "4.7.1 Error: too many recipients from 203.0.113.10"),                     # Postfix
    (421, "4.7.0 rate exceeded"),
]
NOT_THROTTLING = [
    (450, "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional "
          "messages from being delivered. Please resend your message at a later time."),  # Gmail, one recipient
    (451, "4.5.1 The recipient <x@yandex.example> has exceeded their message rate limit. Try again later."),
    (421, "4.7.0 Too many messages on this connection"),                             # reconnect, not slow down
    (450, "4.2.0 Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/"),
    (451, "4.3.0 Try again later"),
    (452, "4.2.2 The email account that you tried to reach is over quota."),
    (421, "4.7.0 [TSS09] All messages from 203.0.113.10 will be permanently deferred; Retrying will NOT succeed."),
    (550, "5.7.1 Throttling failure: Daily message quota exceeded."),                # not a 4xx
    (432, "4.3.2 STOREDRV.Deliver; recipient thread limit exceeded"),
]


@pytest.mark.parametrize(("code", "text"), THROTTLING)
def test_answers_that_say_the_relay_limits_the_sender_slow_the_run(code: int, text: str) -> None:
    assert says_throttled(code, text)


@pytest.mark.parametrize(("code", "text"), NOT_THROTTLING)
def test_answers_about_one_recipient_or_connection_do_not_slow_the_run(code: int, text: str) -> None:
    assert not says_throttled(code, text)
