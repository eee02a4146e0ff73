"""No process of a send outlives it: render workers, the forkserver and multiprocessing's resource
tracker exit with the sending process, however it ends (SIGKILL included), and so do their
database connections."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HEADER, SECRET, Project

BOTH_DATABASES = True  # also run on PostgreSQL when MAILER_TEST_POSTGRES_URL is set


def many(project: Project, n: int) -> set[str]:
    addresses = [f"person{i}@company{i % 7}.example" for i in range(n)]
    project.csv.write_text(HEADER + "".join(
        f"{a},P{i},L{i},Co,CTO,software,b2b,Salon VivaTech 2026,2026-06-01\n" for i, a in enumerate(addresses)))
    return set(addresses)


def start_send(project: Project) -> subprocess.Popen[bytes]:
    """`mailer send` in a process of its own, rendering in two worker processes. Its output goes
    to a file: a pipe would stay open as long as any leftover process holds it."""
    env = dict(os.environ, MAILER_SECRET=SECRET, MAILER_CONFIG="", MAILER_RENDER_WORKERS="2")
    log = open(project.root / "send.log", "wb")  # the child gets its own copy: closed here below
    try:
        return subprocess.Popen([sys.executable, "-m", "mailer", "--config", str(project.config), "send",
                                 str(project.campaign), "--yes"], cwd=project.root, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    finally:
        log.close()


def processes() -> dict[int, tuple[int, str, str]]:
    """Every process: pid -> (parent pid, start time, state), from /proc/<pid>/stat."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # gone meanwhile
                continue
            fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
            found[int(entry)] = (int(fields[1]), fields[19], fields[0])
    return found


def descendants(pid: int) -> dict[int, tuple[int, str]]:
    """The processes below `pid`: pid -> (parent pid, start time), the start time telling a reused pid apart."""
    table = processes()
    found: dict[int, tuple[int, str]] = {}
    parents = [pid]
    while parents:
        parent = parents.pop()
        for child, (ppid, started, _) in table.items():
            if ppid == parent and child not in found:
                found[child] = (ppid, started)
                parents.append(child)
    return found


def still_running(recorded: dict[int, tuple[int, str]]) -> list[int]:
    """The recorded processes still alive (zombies are dead: nothing left but an exit code)."""
    table = processes()
    return [pid for pid, (_, started) in recorded.items()
            if pid in table and table[pid][1] == started and table[pid][2] != "Z"]


def database_connections(project: Project) -> int:
    """Connections to this test's PostgreSQL database, other than the one asking."""
    [(count,)] = project.sql("select count(*) from pg_stat_activity "
                             "where datname = current_database() and pid <> pg_backend_pid()")
    return int(count)


def wait_for(condition, timeout: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def outbox_count(project: Project) -> int:
    return len(os.listdir(project.outbox)) if project.outbox.exists() else 0


def midway(project: Project, send: subprocess.Popen[bytes]) -> dict[int, tuple[int, str]]:
    """Wait until the send has written some messages, then record its processes: at least one render
    worker (a grandchild, under the forkserver)."""
    wait_for(lambda: send.poll() is not None or outbox_count(project) >= 20)
    assert send.poll() is None, (project.root / "send.log").read_text()
    recorded = descendants(send.pid)
    assert any(parent in recorded for parent, _ in recorded.values()), "no render worker running"
    return recorded


def gone_within(recorded: dict[int, tuple[int, str]], seconds: float) -> list[int]:
    """The recorded processes still running after `seconds` (killed then, so that a failure leaves nothing)."""
    deadline = time.monotonic() + seconds
    while still_running(recorded) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = still_running(recorded)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def test_sigkill_of_a_send_leaves_no_process_or_connection_behind_and_a_rerun_completes(project: Project) -> None:
    addresses = many(project, 2000)
    send = start_send(project)
    recorded = midway(project, send)
    if project.is_postgres:
        assert database_connections(project) >= 2  # the sending process's and a worker's
    send.send_signal(signal.SIGKILL)
    send.wait(timeout=10)
    assert outbox_count(project) < len(addresses), "the send had finished before the kill"
    left = gone_within(recorded, 5)
    assert not left, f"{len(left)} of the send's {len(recorded)} processes outlived it"
    if project.is_postgres:
        wait_for(lambda: database_connections(project) == 0, timeout=5)

    rerun = project.send()
    states = dict(project.sql("select address_key, state from send_log"))
    assert states.keys() == addresses and set(states.values()) <= {"sent", "uncertain"}
    uncertain = {address for address, state in states.items() if state == "uncertain"}
    assert rerun.exit_code == (4 if uncertain else 0), rerun.output  # not finished while any is uncertain
    assert len(uncertain) <= 200, "no more uncertain than one batch of claims"  # the killed run's, as before
    received = [re.search(rb"^To: .*?([\w.]+@[\w.]+)", path.read_bytes(), re.MULTILINE)
                for path in project.outbox.iterdir()]
    assert sorted(match.group(1).decode() for match in received if match) == sorted(addresses - uncertain)


@pytest.mark.parametrize("ending", ["SIGINT", "SIGTERM", "finished"])
def test_a_send_stopped_or_finished_leaves_no_process_or_connection_behind(project: Project, ending: str) -> None:
    many(project, 600)
    send = start_send(project)
    recorded = midway(project, send)
    if ending != "finished":
        send.send_signal(getattr(signal, ending))
    assert send.wait(timeout=120) == 0, (project.root / "send.log").read_text()
    left = gone_within(recorded, 5)
    assert not left, f"{len(left)} of the send's {len(recorded)} processes outlived it"
    output = (project.root / "send.log").read_text()
    assert "Summary of this run" in output
    assert "leaked" not in output  # the resource tracker found nothing left to clean up
    if project.is_postgres:
        wait_for(lambda: database_connections(project) == 0, timeout=5)
