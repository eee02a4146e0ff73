"""A PostgreSQL restart in the middle of a send (issue 13): the run reconnects and goes on, for
`[database] reconnect_seconds`, and mails everyone exactly once; a server that stays away
stops the run with one sentence, and the next run finishes without mailing anyone twice.

Each test runs its own throwaway PostgreSQL instance on a free port (the shared one on 5432
must not be restarted)."""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy
from conftest import HEADER, Project, when_outbox_holds

# the newest PostgreSQL server installed (.ci/run installs Debian's)
BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name),
          default=Path("/usr/lib/postgresql/15/bin"))
RECIPIENTS = 400
#: rendering in a worker process, as large sends do: it reads the database too
WORKER = {"MAILER_RENDER_WORKERS": "1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Instance:
    folder: Path
    port: int
    as_postgres: list[str]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://mailer@127.0.0.1:{self.port}/mailer"

    def ctl(self, *args: str) -> None:
        subprocess.run([*self.as_postgres, str(BIN / "pg_ctl"), "-D", str(self.folder / "data"), "-w", "-t", "30",
                        "-l", str(self.folder / "log"), *args], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self.ctl("-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self.ctl("-m", "fast", "stop")

    def restart(self) -> None:
        self.ctl("-m", "fast", "restart")


@pytest.fixture(scope="module")
def server() -> Iterator[Instance]:
    """One throwaway server for the module (initdb takes seconds); each test gets a new database."""
    assert (BIN / "initdb").exists(), f"needs the PostgreSQL server binaries in {BIN} (.ci/run installs them)"
    as_postgres: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="mailer-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        account = pwd.getpwnam("postgres")  # Debian's postgresql package creates it
        os.chown(folder, account.pw_uid, account.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    found = Instance(folder, _free_port(), as_postgres)
    try:
        subprocess.run([*as_postgres, str(BIN / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "mailer",
                        "--no-sync"], check=True, capture_output=True, timeout=60)
        found.start()
        yield found
    finally:
        subprocess.run([*as_postgres, str(BIN / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def instance(server: Instance) -> Iterator[Instance]:
    """The module's server, running, with an empty database `mailer`."""
    if subprocess.run([str(BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(server.port)],
                      capture_output=True).returncode != 0:
        server.start()
    admin = sqlalchemy.create_engine(sqlalchemy.engine.make_url(server.url).set(database="postgres"),
                                     isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql("DROP DATABASE IF EXISTS mailer WITH (FORCE)")
        conn.exec_driver_sql("CREATE DATABASE mailer")
    admin.dispose()
    yield server


def use(project: Project, instance: Instance, reconnect_seconds: float) -> None:
    project.write("config.toml", project.base_config.replace(
        'url = "sqlite:///mailer.db"', f'url = "{instance.url}"\nreconnect_seconds = {reconnect_seconds}'))
    rows = "".join(f"p{i}@c{i % 50}.example,P{i},L{i},C{i % 50},CTO,software,b2b,Salon VivaTech 2026,2026-06-01\n"
                   for i in range(RECIPIENTS))
    project.csv.write_text(HEADER + rows, encoding="utf-8")
    assert project.run("db", "init").exit_code == 0


def recipients(project: Project) -> list[str]:
    found = []
    for message in project.messages():
        for line in message.splitlines():
            if line.startswith(b"To: "):
                found.append(line[4:].decode())
                break
    return found


def states(instance: Instance) -> dict[str, int]:
    engine = sqlalchemy.create_engine(instance.url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        found = dict(conn.exec_driver_sql("SELECT state, count(*) FROM send_log GROUP BY state").all())
    engine.dispose()
    return found


def test_a_send_goes_on_through_a_postgresql_restart_and_mails_everyone_once(project: Project,
                                                                             instance: Instance) -> None:
    use(project, instance, reconnect_seconds=30)
    restarted: list[int] = []

    def restart() -> None:
        restarted.append(len(os.listdir(project.outbox)))
        instance.restart()

    watcher = when_outbox_holds(project, 100, restart)
    result = project.run("send", str(project.campaign), "--yes", env=WORKER)
    watcher.join()
    assert restarted and restarted[0] < RECIPIENTS, "the server was not restarted during the send"
    assert result.exit_code == 0, result.output
    sent = recipients(project)
    assert len(sent) == RECIPIENTS and len(set(sent)) == RECIPIENTS
    assert states(instance) == {"sent": RECIPIENTS}


def test_a_postgresql_that_stays_away_stops_the_send_in_one_sentence_and_the_rerun_mails_nobody_twice(
        project: Project, instance: Instance) -> None:
    use(project, instance, reconnect_seconds=1)
    watcher = when_outbox_holds(project, 100, instance.stop)
    result = project.send()
    watcher.join()
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and f"PostgreSQL at 127.0.0.1:{instance.port}" in errors[0], result.output
    assert "then rerun" in errors[0] and "[SQL" not in result.output and "@c1.example" not in result.output
    assert len(project.messages()) < RECIPIENTS
    instance.start()
    again = project.send()
    assert again.exit_code == 0, again.output
    sent = recipients(project)
    assert len(sent) == RECIPIENTS and len(set(sent)) == RECIPIENTS
    assert states(instance) == {"sent": RECIPIENTS}
