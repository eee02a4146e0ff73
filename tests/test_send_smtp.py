"""Real SMTP delivery against an in-process aiosmtpd server: faults, retries, bounces, TLS, crashes."""
from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme
from conftest import HEADER, SECRET, Project, counts, in_a_terminal
from smtp_server import RecordingHandler, Relay, SmtpServer, free_port, password_authenticator

from mailer import open_workspace

BOTH_DATABASES = True  # also run on PostgreSQL when MAILER_TEST_POSTGRES_URL is set

CLAIRE, PAUL = "claire@client.example", "paul@telco.example"


def use_smtp(project: Project, port: int, **settings: object) -> None:
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') if not isinstance(v, (int, float)) else f"{k} = {v}\n"
                    for k, v in settings.items())
    project.write("config.toml", project.base_config.replace('type = "maildir"', 'type = "smtp"')
                  .replace("port = 2525", f"port = {port}\nretry_base_seconds = 0.01\nmax_attempts = 3\n" + extra))


def many(project: Project, n: int) -> list[str]:
    addresses = [f"person{i}@company{i % 7}.example" for i in range(n)]
    project.csv.write_text(HEADER + "".join(
        f"{a},P{i},L{i},Co,CTO,software,b2b,Salon VivaTech 2026,2026-06-01\n" for i, a in enumerate(addresses)))
    return addresses


def states(project: Project) -> dict[str, str]:
    return dict(project.sql("select address_key, state from send_log"))


@pytest.fixture(params=[True, False], ids=["pipelining", "one-command-at-a-time"])
def pipelining(request: pytest.FixtureRequest) -> bool:
    """Whether the server advertises PIPELINING: mailer then sends MAIL, RCPT and DATA in one go."""
    return request.param


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_delivers_each_allowed_recipient_once_over_reused_connections(project: Project, pipelining: bool,
                                                                      event_loop: str) -> None:
    handler = RecordingHandler(pipelining=pipelining)
    addresses = many(project, 40)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=4)
        result = project.run("send", str(project.campaign), "--yes", env={"MAILER_EVENT_LOOP": event_loop})
    assert result.exit_code == 0, result.output
    assert handler.recipients() == {a: 1 for a in addresses}
    assert handler.connections <= 4
    assert counts(result.output)["sent"] == 40
    assert "Note:" not in result.output
    first = handler.received[0]
    assert first.mail_from == "jeanne@acme.example"
    assert first.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    rows = project.sql("select state, smtp_code, message_id, attempts from send_log where state='sent'")
    assert len(rows) == 40 and all(code == 250 and mid and attempts == 1 for _, code, mid, attempts in rows)


def test_temporary_failures_are_retried_with_backoff(project: Project, pipelining: bool) -> None:
    handler = RecordingHandler(rcpt_faults={CLAIRE: ["451 4.3.0 Try again later"]},
                               data_faults={PAUL: ["452 4.3.1 Insufficient storage"]}, pipelining=pipelining)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port)
        result = project.send()
    assert result.exit_code == 0, result.output
    assert handler.recipients() == {CLAIRE: 1, PAUL: 1}
    assert dict(project.sql("select address_key, attempts from send_log where state='sent'")) == {CLAIRE: 2, PAUL: 2}


def test_a_4xx_refusing_the_sender_is_retried_and_no_bounce_is_recorded(project: Project, pipelining: bool) -> None:
    handler = RecordingHandler(mail_faults=["451 4.3.0 Sender check unavailable", "550 5.1.8 Bad sender domain"],
                               pipelining=pipelining)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=1)
        result = project.send()
    assert result.exit_code == 4, result.output  # the 550 on MAIL fails that delivery
    assert sorted(s for s in states(project).values() if s != "blocked") == ["failed", "sent"]
    # A refused sender says nothing about the recipient: no hard-bounce suppression.
    assert project.sql("select count(*) from suppressions") == [(0,)]
    assert len(handler.received) == 1


def test_mail_rcpt_and_data_leave_together_when_the_server_pipelines(project: Project, pipelining: bool) -> None:
    """In front of the server, a relay holds every reply back from MAIL FROM until DATA has
    arrived: only a client that pipelines gets through (the other one times out and defers)."""
    addresses = many(project, 12)
    handler = RecordingHandler(pipelining=pipelining)
    with SmtpServer(handler) as server:
        probe = Relay(server.port, hold_replies=True)
        try:
            use_smtp(project, probe.port, max_connections=3, timeout_seconds=0.5)
            result = project.send()
        finally:
            probe.close()
    if pipelining:
        assert result.exit_code == 0, result.output
        assert handler.recipients() == {a: 1 for a in addresses}
        assert probe.transactions == 12
        assert {attempts for (attempts,) in project.sql("select attempts from send_log")} == {1}
    else:
        assert handler.recipients() == {}
        assert set(states(project).values()) == {"planned"}  # every connection stalls: the run stops after one round
        assert result.exit_code == 1 and "answered no MAIL command within 0.5 s" in result.output, result.output


def test_replies_split_across_packets_and_lines_are_read_whole(project: Project, pipelining: bool) -> None:
    addresses = many(project, 6)
    handler = RecordingHandler(rcpt_faults={addresses[0]: ["550-5.1.1 No such user here\r\n550 5.1.1 See https://x.example/b"]},
                               pipelining=pipelining)
    with SmtpServer(handler) as server:
        relay = Relay(server.port, trickle=True)
        try:
            use_smtp(project, relay.port, max_connections=2)
            result = project.send()
        finally:
            relay.close()
    assert result.exit_code == 4
    assert f"failed: {addresses[0]}: 550 5.1.1 No such user here 5.1.1 See https://x.example/b" in result.output
    assert handler.recipients() == {a: 1 for a in addresses[1:]}
    assert project.sql("select count(*) from suppressions where origin = 'bounce'") == [(1,)]


def test_a_relay_that_limits_connections_gets_no_more_and_no_attempt_is_wasted(project: Project) -> None:
    addresses = many(project, 250)
    handler = RecordingHandler()
    with SmtpServer(handler) as server:
        relay = Relay(server.port, max_connections=2)
        try:
            use_smtp(project, relay.port, max_connections=8)
            result = project.send()
        finally:
            relay.close()
    assert result.exit_code == 0, result.output
    assert handler.recipients() == {a: 1 for a in addresses}
    assert {attempts for (attempts,) in project.sql("select attempts from send_log where state = 'sent'")} == {1}
    assert relay.most_at_once == 2
    assert "refused connections beyond 2 at once; [smtp] max_connections = 2" in result.output
    # The first wave (6 of the 8 connections), then one probe every 100 messages sent.
    assert relay.refused <= 6 + 2, "once refused, mailer should stop opening connections beyond what the relay takes"


def test_a_server_closing_used_connections_costs_no_attempt(project: Project, pipelining: bool) -> None:
    addresses = many(project, 30)
    handler = RecordingHandler(messages_per_connection=4, pipelining=pipelining)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=2)
        result = project.send()
    assert result.exit_code == 0, result.output
    assert handler.recipients() == {a: 1 for a in addresses}
    assert {attempts for (attempts,) in project.sql("select attempts from send_log where state = 'sent'")} == {1}
    assert handler.connections >= 30 // 4


def test_421_closes_the_connection_and_the_next_attempt_reconnects(project: Project, pipelining: bool) -> None:
    handler = RecordingHandler(rcpt_faults={CLAIRE: ["421 4.7.0 Closing connection"]}, pipelining=pipelining)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=1)
        result = project.send()
    assert result.exit_code == 0
    assert handler.recipients() == {CLAIRE: 1, PAUL: 1}
    assert handler.connections >= 2


def test_persistent_4xx_is_deferred_and_a_later_run_retries_it(project: Project, pipelining: bool) -> None:
    handler = RecordingHandler(rcpt_faults={CLAIRE: ["450 4.2.0 Mailbox busy"] * 3}, pipelining=pipelining)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port)
        first = project.send()
        assert first.exit_code == 4  # not finished: an allowed recipient waits
        assert states(project)[CLAIRE] == "deferred"
        assert "retried by the next run" in first.output
        assert "Not finished: 1 allowed recipients were not sent yet (1 deferred, 0 uncertain)" in first.output
        assert "--yes` to retry the deferred" in first.output
        assert "1 x 450 4.2.0 Mailbox busy" in first.output
        assert "rate_per_second" not in first.output
        second = project.send()
    assert second.exit_code == 0
    assert states(project)[CLAIRE] == "sent"
    assert handler.recipients() == {CLAIRE: 1, PAUL: 1}


def test_550_on_the_recipient_fails_and_adds_a_hard_bounce_suppression(project: Project, pipelining: bool) -> None:
    handler = RecordingHandler(rcpt_faults={CLAIRE: ["550 5.1.1 No such user"]}, pipelining=pipelining)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port)
        result = project.send()
        assert result.exit_code == 4
        assert "failed: claire@client.example: 550 5.1.1 No such user" in result.output
        assert project.sql("select origin, campaign_id from suppressions") == [("bounce", "2026-12-cloud-audit")]
        # Another campaign to the same list never tries the bounced address again.
        project.campaign.write_text(project.campaign.read_text().replace("2026-12-cloud-audit", "2027-01-next"))
        next_campaign = project.send()
    assert "suppressed" in counts(next_campaign.output)
    assert handler.attempts[CLAIRE] == 1


def test_a_5xx_refusing_the_message_fails_without_suppressing_the_address(project: Project, pipelining: bool) -> None:
    handler = RecordingHandler(data_faults={PAUL: ["554 5.7.1 Message rejected as spam"]}, pipelining=pipelining)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port)
        result = project.send()
    assert result.exit_code == 4
    assert states(project)[PAUL] == "failed"
    assert project.sql("select count(*) from suppressions") == [(0,)]


def test_connection_dropped_during_data_is_uncertain_and_not_resent(project: Project, pipelining: bool) -> None:
    handler = RecordingHandler(drop_data={CLAIRE}, pipelining=pipelining)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port)
        project.send()
        assert states(project)[CLAIRE] == "uncertain"
        rerun = project.send()
        assert "Nothing to send." in rerun.output
        assert rerun.exit_code == 4 and "(0 deferred, 1 uncertain)" in rerun.output
        assert handler.recipients()[CLAIRE] == 1
        retry = project.send("--retry-uncertain")
    assert retry.exit_code == 0
    assert handler.recipients()[CLAIRE] == 2
    assert states(project)[CLAIRE] == "sent"


def test_connection_dropped_before_the_content_is_retried_and_delivered_once(project: Project,
                                                                            pipelining: bool) -> None:
    handler = RecordingHandler(drop_rcpt={CLAIRE}, pipelining=pipelining)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=1)
        result = project.send()
    assert result.exit_code == 0, result.output
    assert handler.recipients() == {CLAIRE: 1, PAUL: 1}
    assert dict(project.sql("select address_key, attempts from send_log where state = 'sent'"))[CLAIRE] == 2


def test_server_down_at_start_is_exit_1_and_nothing_is_marked_sent(project: Project) -> None:
    use_smtp(project, free_port())
    result = project.send()
    assert result.exit_code == 1
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and "cannot connect to SMTP server 127.0.0.1:" in error_lines[0]
    assert project.sql("select count(*) from send_log where state in ('sent', 'sending')") == [(0,)]


def test_an_opt_out_recorded_by_another_process_stops_later_messages(project: Project, pipelining: bool) -> None:
    addresses = many(project, 20)
    use_smtp(project, 2525, max_connections=1)
    workspace = open_workspace(project.config, {"MAILER_SECRET": SECRET})
    last = addresses[-1]

    def opt_out_during_run(_: object) -> None:
        if len(handler.received) == 3:  # another process (here: another connection) records an opt-out
            workspace.store.suppressions.add(scope="address", value=workspace.hash_address(last), origin="one-click")

    handler = RecordingHandler(on_data=opt_out_during_run, pipelining=pipelining)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=1)
        result = project.send()
    workspace.close()
    assert result.exit_code == 0
    assert last not in handler.recipients()
    assert len(handler.recipients()) == 19
    assert project.sql("select state, rule from send_log where address_key = ?", last) == [("blocked", "suppressed")]


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_starttls_with_certificate_verification_and_auth(project: Project, pipelining: bool, tmp_path: Path,
                                                         event_loop: str) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    handler = RecordingHandler(pipelining=pipelining)
    with SmtpServer(handler, tls_context=server_context, require_starttls=True,
                    authenticator=password_authenticator("acme", "s3cret"), auth_required=True) as server:
        project.write("config.toml", project.base_config.replace('type = "maildir"', 'type = "smtp"')
                      .replace('host = "127.0.0.1"', 'host = "localhost"')
                      .replace("port = 2525", f"port = {server.port}\nca_file = \"{ca_file}\"\nusername = \"acme\"")
                      .replace('security = "none"', 'security = "starttls"'))
        loop = {"MAILER_EVENT_LOOP": event_loop}
        missing = project.run("send", str(project.campaign), "--yes", env=loop)
        assert missing.exit_code == 2 and "export MAILER_SMTP_PASSWORD" in missing.output
        wrong = project.run("send", str(project.campaign), "--yes", env={"MAILER_SMTP_PASSWORD": "nope", **loop})
        assert wrong.exit_code == 1 and "refused the login" in wrong.output
        check = project.run("check", str(project.campaign), "--no-dns", env={"MAILER_SMTP_PASSWORD": "s3cret", **loop})
        assert check.exit_code == 0, check.output
        assert f"SMTP localhost:{server.port}: connected (STARTTLS with a verified certificate), logged in as acme, " \
               f"{'PIPELINING offered' if pipelining else 'no PIPELINING'}" in check.output
        ok = project.run("send", str(project.campaign), "--yes", env={"MAILER_SMTP_PASSWORD": "s3cret", **loop})
        assert ok.exit_code == 0, ok.output
        assert handler.recipients() == {CLAIRE: 1, PAUL: 1}
        # Without the private CA, the server's certificate is not trusted: nothing is sent.
        project.write("config.toml", project.config.read_text().replace(f'ca_file = "{ca_file}"\n', ""))
        project.campaign.write_text(project.campaign.read_text().replace("2026-12-cloud-audit", "2027-01-next"))
        untrusted = project.run("send", str(project.campaign), "--yes", env={"MAILER_SMTP_PASSWORD": "s3cret", **loop})
    assert untrusted.exit_code == 1
    assert "TLS with localhost:" in untrusted.output and "CERTIFICATE_VERIFY_FAILED" in untrusted.output
    assert handler.recipients() == {CLAIRE: 1, PAUL: 1}


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_implicit_tls_delivers_with_certificate_verification(project: Project, tmp_path: Path, event_loop: str) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    handler = RecordingHandler()
    with SmtpServer(handler, ssl_context=server_context) as server:  # TLS from the first byte (port 465 style)
        project.write("config.toml", project.base_config.replace('type = "maildir"', 'type = "smtp"')
                      .replace('host = "127.0.0.1"', 'host = "localhost"')
                      .replace("port = 2525", f"port = {server.port}\nca_file = \"{ca_file}\"")
                      .replace('security = "none"', 'security = "tls"'))
        result = project.run("send", str(project.campaign), "--yes", env={"MAILER_EVENT_LOOP": event_loop})
    assert result.exit_code == 0, result.output
    assert handler.recipients() == {CLAIRE: 1, PAUL: 1}


def test_check_logs_in_to_the_smtp_server_and_says_what_it_offers(project: Project) -> None:
    handler = RecordingHandler()
    with SmtpServer(handler) as server:
        use_smtp(project, server.port)
        check = project.run("check", str(project.campaign), "--no-dns")
        skipped = project.run("check", str(project.campaign), "--no-dns", "--no-smtp")
    assert check.exit_code == 0, check.output
    assert f"SMTP 127.0.0.1:{server.port}: connected (no TLS, loopback), PIPELINING offered (2 round trips per " \
           "message), messages up to 34 MB." in check.output
    assert "SMTP" not in skipped.output
    assert handler.received == []  # nothing sent
    down = project.run("check", str(project.campaign), "--no-dns")  # the server is gone now
    assert down.exit_code == 1
    assert f"cannot connect to SMTP server 127.0.0.1:{server.port}" in down.output


def test_cleartext_smtp_to_a_remote_host_is_refused(project: Project) -> None:
    project.write("config.toml", project.base_config.replace('type = "maildir"', 'type = "smtp"')
                  .replace('host = "127.0.0.1"', 'host = "smtp.example.net"'))
    result = project.send()
    assert result.exit_code == 2
    assert 'security = "none" sends mail in clear text to smtp.example.net' in result.output


def _spawn_send(project: Project, output: int = subprocess.PIPE, **env: str) -> subprocess.Popen[str]:
    env = dict(os.environ, MAILER_SECRET=SECRET, MAILER_RENDER_WORKERS="0", **env)
    return subprocess.Popen([sys.executable, "-m", "mailer", "--config", str(project.config), "send",
                             str(project.campaign), "--yes"], env=env, stdout=output,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(condition, timeout: float = 20.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def test_sigkill_in_the_middle_then_rerun_mails_nobody_twice(project: Project) -> None:
    addresses = many(project, 120)
    handler = RecordingHandler(delay=0.01)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=4)
        process = _spawn_send(project)
        _wait_for(lambda: len(handler.received) >= 30)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        rerun = project.send()
    received = handler.recipients()
    assert max(received.values()) == 1, "somebody received two messages"
    uncertain = {a for a, s in states(project).items() if s == "uncertain"}
    assert rerun.exit_code == (4 if uncertain else 0), rerun.output  # not finished while any is uncertain
    assert len(uncertain) <= 4, "the uncertain window must not exceed the messages in flight"
    for address in addresses:
        if address not in uncertain:
            assert received[address] == 1, address
    assert states(project).keys() == set(addresses)


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(project: Project) -> None:
    addresses = many(project, 80)
    handler = RecordingHandler(delay=0.02)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=2)
        process = _spawn_send(project)
        _wait_for(lambda: len(handler.received) >= 10)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
        assert process.returncode == 0, output
        assert "Stopped. Rerun the same command to resume." in output
        assert "Summary of this run" in output
        assert "sending" not in states(project).values() and "uncertain" not in states(project).values()
        rerun = project.send()
    assert rerun.exit_code == 0
    assert handler.recipients() == {a: 1 for a in addresses}


def test_server_going_away_mid_run_stops_with_exit_1_and_a_rerun_resumes(project: Project) -> None:
    import threading
    addresses = many(project, 60)
    stopping = threading.Event()

    def go_away_after_ten(_: object) -> None:
        if len(handler.received) >= 10 and not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.stop, daemon=True).start()

    handler = RecordingHandler(on_data=go_away_after_ten)
    server = SmtpServer(handler)
    use_smtp(project, server.port, max_connections=2)
    with server:
        result = project.send()
    assert result.exit_code == 1, result.output
    assert "sending stopped: the server stopped answering" in result.output
    assert "rerun the same command to resume" in result.output
    first = handler.recipients()
    assert 10 <= len(first) < 60
    # Same port, a new server: the rerun delivers the rest, nobody twice.
    handler2 = RecordingHandler()
    server2 = SmtpServer(handler2)
    server2.port = server.port
    from aiosmtpd.controller import Controller
    server2.controller = Controller(handler2, hostname="127.0.0.1", port=server.port)
    with server2:
        rerun = project.send()
    second = handler2.recipients()
    assert not set(first) & set(second)
    uncertain = {a for a, s in states(project).items() if s == "uncertain"}
    assert rerun.exit_code == (4 if uncertain else 0), rerun.output
    assert set(first) | set(second) | uncertain == set(addresses)


@pytest.mark.databases("sqlite")  # on PostgreSQL a second sender joins (tests/test_senders.py)
def test_a_second_send_of_a_campaign_being_sent_is_refused(project: Project) -> None:
    """On SQLite one process at a time sends a campaign: a second one is refused, saying so."""
    addresses = many(project, 40)
    handler = RecordingHandler(delay=0.02)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=2)
        first = _spawn_send(project)
        _wait_for(lambda: len(handler.received) >= 3)
        second = project.send()
        assert second.exit_code == 1
        assert "is being sent by another process (host " in second.output
        assert f"pid {first.pid}, sending since " in second.output  # who, and since when
        assert "on SQLite one process at a time sends a campaign" in second.output
        assert "share a PostgreSQL database" in second.output  # what to do to run several
        output, _ = first.communicate(timeout=60)
        assert first.returncode == 0, output
        assert project.send().exit_code == 0  # the lease was released
    assert handler.recipients() == {a: 1 for a in addresses}


def test_two_delivery_engines_on_the_same_rows_mail_nobody_twice(project: Project) -> None:
    """Below the lease, claims alone keep at most once: a row goes to one engine only."""
    import asyncio

    from mailer.planning import decide_campaign, prepare_campaign
    from mailer.sending import deliver_campaign
    from mailer.transport import open_transport

    addresses = many(project, 60)
    handler = RecordingHandler(delay=0.005)
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=3)
        ws = open_workspace(project.config, {"MAILER_SECRET": SECRET})
        prepared = prepare_campaign(ws, project.campaign)
        plan = decide_campaign(ws, prepared, keep_recipients=False)

        async def both() -> list:
            transports = [open_transport(ws.config, {}), open_transport(ws.config, {})]
            for transport in transports:
                await transport.open()
            try:
                return await asyncio.gather(*(deliver_campaign(ws, prepared, plan, t, render_workers=0)
                                              for t in transports))
            finally:
                for transport in transports:
                    await transport.close()

        reports = asyncio.run(both())
        ws.close()
    received = handler.recipients()
    assert max(received.values()) == 1, "somebody received two messages"
    assert set(received) == set(addresses)
    assert sum(r.delivered.counts["taken"] for r in reports) > 0  # they did compete for rows


@pytest.mark.parametrize("render_workers", ["0", "2"])
def test_lines_starting_with_a_dot_arrive_intact(project: Project, render_workers: str) -> None:
    project.write("templates/offer.html.j2", "<pre>\n.hidden line\n.\n..two dots\n</pre>\n<p>Hi {{ contact.first_name }}</p>\n")
    handler = RecordingHandler()
    with SmtpServer(handler) as server:
        use_smtp(project, server.port)
        result = project.run("send", str(project.campaign), "--yes", env={"MAILER_RENDER_WORKERS": render_workers})
    assert result.exit_code == 0, result.output
    assert len(handler.received) == 2
    for received in handler.received:
        html = received.message.get_body(("html",)).get_content().replace("\r\n", "\n")
        assert "\n.hidden line\n.\n..two dots\n" in html
        text = received.message.get_body(("plain",)).get_content().replace("\r\n", "\n")
        assert ".hidden line\n.\n..two dots" in text


@pytest.mark.parametrize("data", [
    b"Subject: x\r\n\r\nbody\r\n", b"Subject: x\r\n\r\n.starts\r\n.\r\n..two\r\nend", b".first\r\n",
    b"lone LF\nlone CR\rmixed\r\n.dot after LF\n.", b"", b"\r\n.\r\n",
])
def test_the_wire_form_is_what_aiosmtplib_would_send(data: bytes) -> None:
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    from mailer.transport.smtp import wire_data
    assert wire_data(data) == PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"


def test_a_large_send_with_the_default_render_workers_mails_everyone_once(project: Project) -> None:
    handler = RecordingHandler()
    addresses = many(project, 1200)  # large enough for render worker processes, started before the plan
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=8)
        result = project.send()
    assert result.exit_code == 0, result.output
    assert handler.recipients() == {a: 1 for a in addresses}
    assert project.sql("select count(*) from send_log where state = 'sent'") == [(1200,)]


def test_random_bytes_get_the_wire_form_aiosmtplib_would_send() -> None:
    import random

    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    from mailer.transport.smtp import wire_data
    rng = random.Random(11)
    for _ in range(3000):
        data = bytes(rng.choice(b"a.\r\n ") for _ in range(rng.randint(0, 40)))
        assert wire_data(data) == PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n", data


def test_the_progress_bar_shows_counts_and_rate_in_a_terminal(project: Project) -> None:
    many(project, 300)
    handler = RecordingHandler()
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=4)
        code, text = in_a_terminal(lambda terminal: _spawn_send(project, terminal, COLUMNS="160"))
    assert code == 0, text[-500:]
    assert "Sending" in text and "300/300" in text
    assert re.search(r"sent=300 [\d,]+ msg/s", text), text[-500:]
    assert len(handler.received) == 300


def test_replies_are_parsed_the_same_however_the_bytes_are_cut() -> None:
    """The session's reply parser, fed random replies (one or several lines each) cut at random
    places, finds exactly the replies that were sent, in order."""
    import asyncio
    import random

    from mailer.transport.smtp import _Session

    class Wire(asyncio.Transport):  # the socket side: records what the session does to it
        def __init__(self) -> None:
            super().__init__()
            self.protocol, self.closed = None, False

        def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
            self.protocol = protocol

        def close(self) -> None:
            self.closed = True

    async def run() -> None:
        rng = random.Random(5)
        for _ in range(300):
            expected, data = [], b""
            for _ in range(rng.randint(1, 6)):
                code = rng.choice([250, 251, 354, 421, 450, 452, 550, 554])
                lines = [f"{rng.randint(2, 5)}.{rng.randint(0, 7)}.{rng.randint(0, 9)} word{rng.randint(0, 99)}"
                         for _ in range(rng.randint(1, 4))]
                data += "".join(f"{code}-{line}\r\n" for line in lines[:-1]).encode() + f"{code} {lines[-1]}\r\n".encode()
                expected.append((code, " ".join(lines)))
            wire = Wire()
            session = _Session(wire, pipelining=True, timeout=5, where="test")
            cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 8))))
            for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
                session.data_received(data[start:end])
            assert await session._read(len(expected)) == expected
            assert session.ready and not wire.closed

    asyncio.run(run())


def test_a_line_that_is_not_an_smtp_reply_breaks_the_session() -> None:
    import asyncio

    from mailer.transport.smtp import _Broken, _Session

    class Wire(asyncio.Transport):
        closed = False

        def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
            pass

        def close(self) -> None:
            self.closed = True

    async def run() -> None:
        wire = Wire()
        session = _Session(wire, pipelining=False, timeout=5, where="test")
        session.data_received(b"HTTP/1.1 400 Bad Request\r\n")
        with pytest.raises(_Broken, match="not an SMTP reply"):
            await session._read(1)
        assert wire.closed and not session.ready

    asyncio.run(run())
