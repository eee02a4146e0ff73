"""Shared fixtures: a real project folder (config, campaign, templates, CSV) and a CLI runner."""
from __future__ import annotations

import os
import pty
import re
import subprocess
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from click.testing import CliRunner, Result

from mailer.cli import cli

SECRET = "test-secret-0123456789"

CONFIG = """\
[organization]
name = "Acme SAS"
postal_address = "12 rue de la Paix, 75002 Paris, France"
privacy_url = "https://acme.example/privacy"
contact_email = "dpo@acme.example"

[database]
url = "sqlite:///mailer.db"

[transport]
type = "maildir"
path = "outbox"

[smtp]
host = "127.0.0.1"
port = 2525
security = "none"
password_env = "MAILER_SMTP_PASSWORD"

[processor]
name = "Acme Mail"
country = "FR"
dpa_signed = true

[unsubscribe]
base_url = "https://mail.acme.fr"
mailto = "unsubscribe@acme.example"
secret_env = "MAILER_SECRET"

[compliance]
retention_years = 3
"""

CAMPAIGN = """\
[campaign]
id = "2026-12-cloud-audit"
kind = "prospecting"
audiences = ["b2b"]
subject = "{{ contact.first_name }}, votre audit cloud offert"
from = "Jeanne Martin <jeanne@acme.example>"
template = "../templates/offer"
locale = "fr"

[recipients]
list = "prospects"
csv = "../contacts.csv"

[relevance]
job_titles = ["CTO", "DSI", "directeur informatique"]
industries = ["software", "telecom"]
"""

HTML = """\
<html><body>
<p>Bonjour {{ contact.first_name }},</p>
<p>Un audit cloud pour {{ contact.company }}.</p>
</body></html>
"""

HEADER = "email,first_name,last_name,company,job_title,industry,kind,source,collected_at\n"
CSV = HEADER + """\
claire@client.example,Claire,Durand,Client SA,CTO,banking,b2b,Salon VivaTech 2026,2026-06-01
paul@telco.example,Paul,Martin,Telco,Directeur Informatique Adjoint,Télécom,b2b,Salon VivaTech 2026,2026-06-01
marc@soft.example,Marc,Petit,Soft,Comptable,food,b2b,Salon VivaTech 2026,2026-06-01
"""


# PostgreSQL server for the modules that set BOTH_DATABASES = True (.ci/run starts one).
POSTGRES_URL = os.environ.get("MAILER_TEST_POSTGRES_URL", "")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database" in metafunc.fixturenames:
        if not getattr(metafunc.module, "BOTH_DATABASES", False):
            metafunc.parametrize("database", ["sqlite"], indirect=True)
            return
        # Without a server the PostgreSQL variants are reported as skipped, with the reason. A test
        # marked @pytest.mark.databases("sqlite") (or "postgresql") has only that variant.
        postgresql = pytest.param("postgresql", marks=pytest.mark.skipif(
            not POSTGRES_URL, reason="no PostgreSQL server: set MAILER_TEST_POSTGRES_URL (.ci/run starts one)"))
        marker = metafunc.definition.get_closest_marker("databases")
        wanted = marker.args if marker is not None else ("sqlite", "postgresql")
        metafunc.parametrize("database", [v for name, v in (("sqlite", "sqlite"), ("postgresql", postgresql))
                                          if name in wanted], indirect=True)


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path):
    """The database URL for one test: a SQLite file, or a fresh PostgreSQL database."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield "sqlite:///mailer.db"
        return
    name = f"mailer_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sqlalchemy.engine.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@dataclass
class Project:
    root: Path
    runner: CliRunner
    database_url: str = "sqlite:///mailer.db"
    _engine: Any = field(default=None, repr=False)

    @property
    def base_config(self) -> str:
        """The fixture's config.toml, pointing at this test's database."""
        return CONFIG.replace('url = "sqlite:///mailer.db"', f'url = "{self.database_url}"')

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def campaign(self) -> Path:
        return self.root / "campaigns" / "offer.toml"

    @property
    def csv(self) -> Path:
        return self.root / "contacts.csv"

    @property
    def db(self) -> Path:
        return self.root / "mailer.db"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox" / "new"

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text) if text.startswith("\n") else text, encoding="utf-8")
        return path

    def run(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        environment = {"MAILER_SECRET": SECRET, "MAILER_CONFIG": ""}
        environment.update(env or {})
        return self.runner.invoke(cli, ["--config", str(self.config), *args], input=input, env=environment,
                                  catch_exceptions=False)

    def send(self, *args: str) -> Result:
        return self.run("send", str(self.campaign), "--yes", *args)

    def messages(self) -> list[bytes]:
        if not self.outbox.exists():
            return []
        return [p.read_bytes() for p in sorted(self.outbox.iterdir())]

    def sql(self, query: str, *params: object) -> list[tuple]:
        """Run SQL on the project's database; dates come back as ISO strings on both databases."""
        if self._engine is None:
            url = f"sqlite:///{self.db}" if not self.is_postgres else self.database_url
            self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        names = iter(range(len(params)))
        statement = sqlalchemy.text(re.sub(r"\?", lambda _: f":p{next(names)}", query))
        with self._engine.begin() as conn:
            result = conn.execute(statement, {f"p{i}": v for i, v in enumerate(params)})
            if not result.returns_rows:
                return []
            return [tuple(_plain(v) for v in row) for row in result]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    return value


@pytest.fixture
def project(tmp_path: Path, database: str, request: pytest.FixtureRequest):
    p = Project(tmp_path, CliRunner(), database)
    p.write("config.toml", p.base_config)
    p.write("campaigns/offer.toml", CAMPAIGN)
    p.write("templates/offer.html.j2", HTML)
    p.write("contacts.csv", CSV)
    if getattr(request.module, "CREATE_DATABASE", True):  # only an explicit init makes a database
        created = p.run("db", "init")
        assert created.exit_code == 0, created.output
    yield p
    if p._engine is not None:
        p._engine.dispose()


def counts(output: str) -> dict[str, int]:
    """The `label   N` lines a command printed, as a dict (last occurrence wins)."""
    import re
    found: dict[str, int] = {}
    for line in output.splitlines():
        match = re.match(r"^\s*([a-z][a-z-]*)\s+(\d+)\s*$", line)
        if match:
            found[match.group(1)] = int(match.group(2))
    return found


def in_a_terminal(start: Callable[[int], subprocess.Popen[bytes] | subprocess.Popen[str]]) -> tuple[int, str]:
    """Run a process with a pseudo-terminal as its output (where progress bars are drawn):
    `start` gets the terminal's file descriptor. Returns the exit code and what it showed."""
    leader, follower = pty.openpty()
    process = start(follower)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    return process.wait(timeout=60), output.decode("utf-8", "replace")


def when_outbox_holds(project: Project, count: int, action: Callable[[], None]) -> threading.Thread:
    """Run `action` from another thread once the send has written `count` messages."""
    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if project.outbox.exists() and len(os.listdir(project.outbox)) >= count:
                action()
                return
            time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread
