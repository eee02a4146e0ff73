"""`mailer status` after a send was killed: the dead run is not shown as running, and the rows it
left in flight are counted uncertain (status itself writes nothing: the next send records it)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import SECRET, Project, counts
from smtp_server import RecordingHandler, SmtpServer
from test_send_smtp import many, states, use_smtp

BOTH_DATABASES = True  # also run on PostgreSQL when MAILER_TEST_POSTGRES_URL is set


def wait_for(condition, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_status_after_a_kill_shows_the_run_stopped_and_its_rows_in_flight_uncertain(project: Project) -> None:
    addresses = many(project, 12)
    handler = RecordingHandler(delay=30)  # every message waits at DATA: its row stays `sending`
    with SmtpServer(handler) as server:
        use_smtp(project, server.port, max_connections=2)
        env = dict(os.environ, MAILER_SECRET=SECRET, MAILER_CONFIG="", MAILER_RENDER_WORKERS="0")
        send = subprocess.Popen([sys.executable, "-m", "mailer", "--config", str(project.config), "send",
                                 str(project.campaign), "--yes"], cwd=project.root, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: "sending" in states(project).values())
            live = project.run("status", str(project.campaign))
            assert live.exit_code == 0, live.output
            assert counts(live.output).get("sending"), live.output  # alive: its rows are in flight
            assert ", running" in live.output
        finally:
            send.send_signal(signal.SIGKILL)
            send.wait(timeout=10)
        in_flight = [a for a, s in states(project).items() if s == "sending"]
        assert in_flight

        after = project.run("status", str(project.campaign), "--show", "uncertain")
        assert after.exit_code == 0, after.output
        found = counts(after.output)
        assert found.get("uncertain") == len(in_flight) and "sending" not in found, after.output
        assert "stopped without finishing (its process is gone)" in after.output
        assert ", running" not in after.output
        assert all(address in after.output for address in in_flight)
        assert [a for a, s in states(project).items() if s == "sending"] == in_flight  # status wrote nothing

        handler.delay = 0
        rerun = project.send()
    assert rerun.exit_code == 4, rerun.output  # finished, with the uncertain ones waiting for a decision
    assert {a for a, s in states(project).items() if s == "uncertain"} == set(in_flight)
    assert {a for a, s in states(project).items() if s == "sent"} == set(addresses) - set(in_flight)
    assert "Last run:" in project.run("status", str(project.campaign)).output
