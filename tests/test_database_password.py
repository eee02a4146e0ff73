"""A database password is never printed; it can live outside config.toml ([database] password_env)."""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy
from conftest import POSTGRES_URL, SECRET, Project

import mailer

PASSWORD = "Pa55-w0rd-never-shown"
POSTGRES_ADVICE = "check the user and password ([database] url and password_env in config.toml"


def use(project: Project, url: str, extra: str = "") -> None:
    project.write("config.toml", project.base_config.replace('url = "sqlite:///mailer.db"', f'url = "{url}"{extra}'))


def test_an_unreachable_server_is_named_without_its_password(project: Project) -> None:
    use(project, f"postgresql+psycopg://mailer:{PASSWORD}@127.0.0.1:1/mailer")
    result = project.run("suppress", "list")
    assert result.exit_code == 1
    assert PASSWORD not in result.output
    assert result.output.startswith("Error: PostgreSQL at 127.0.0.1:1 is unreachable (Connection refused), so the "
                                    "database 'mailer' cannot be used: start the server or check host and port in "
                                    "[database] url"), result.output
    assert "its folder" not in result.output  # the SQLite advice


@pytest.mark.parametrize("url", [f"postgresql+psycopg://mailer:{PASSWORD}@127.0.0.1:notaport/mailer",
                                 f"postgresql+nodriver://mailer:{PASSWORD}@127.0.0.1/mailer",
                                 f"postgres ql://mailer:{PASSWORD}@127.0.0.1/mailer",
                                 f"postgres ql://mailer:{PASSWORD}@with-an-at@127.0.0.1/mailer"])
def test_a_url_sqlalchemy_cannot_use_is_shown_without_its_password(project: Project, url: str) -> None:
    use(project, url)
    result = project.run("suppress", "list")
    assert result.exit_code == 1
    assert "Error: cannot use database '" in result.output and "mailer:***@" in result.output, result.output
    assert "Pa55" not in result.output and "with-an-at" not in result.output, result.output


def test_a_missing_password_variable_is_named(project: Project) -> None:
    use(project, "postgresql+psycopg://mailer@127.0.0.1/mailer", '\npassword_env = "MAILER_DB_PASSWORD"')
    result = project.run("suppress", "list")
    assert result.exit_code == 2
    assert "[database] password_env names $MAILER_DB_PASSWORD, which is not set" in result.output


if POSTGRES_URL:  # the server .ci/run starts; these need its real authentication

    @pytest.fixture
    def fresh_postgres() -> Iterator[sqlalchemy.engine.URL]:
        """A new, empty PostgreSQL database (its URL, with the real password)."""
        name = f"mailer_test_{uuid.uuid4().hex[:12]}"
        admin = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield sqlalchemy.engine.make_url(POSTGRES_URL).set(database=name)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    def test_a_wrong_password_is_refused_without_being_printed(project: Project,
                                                                fresh_postgres: sqlalchemy.engine.URL) -> None:
        url = fresh_postgres.set(password=PASSWORD)
        use(project, url.render_as_string(hide_password=False))
        result = project.run("suppress", "list")
        assert result.exit_code == 1
        assert PASSWORD not in result.output
        assert f"Error: PostgreSQL at {url.host}:{url.port or 5432} refused the user of [database] url (password " \
               "authentication failed for user" in result.output, result.output
        assert POSTGRES_ADVICE in result.output

    def test_the_password_can_come_from_the_variable_password_env_names(project: Project,
                                                                         fresh_postgres: sqlalchemy.engine.URL) -> None:
        real = str(fresh_postgres.password)
        use(project, fresh_postgres.set(password=None).render_as_string(), '\npassword_env = "MAILER_DB_PASSWORD"')
        assert project.run("db", "init", env={"MAILER_DB_PASSWORD": real}).exit_code == 0
        result = project.run("suppress", "add", "jean@example.com", env={"MAILER_DB_PASSWORD": real})
        assert result.exit_code == 0, result.output
        wrong = project.run("suppress", "list", env={"MAILER_DB_PASSWORD": PASSWORD})
        assert wrong.exit_code == 1 and PASSWORD not in wrong.output and "password authentication failed" in wrong.output
        with mailer.open_workspace(project.config, {"MAILER_SECRET": SECRET, "MAILER_DB_PASSWORD": real}) as ws:
            assert ws.store.suppressions.entries()[0].origin == "manual"
            assert f":{real}@" in ws.config.database_url  # what the render workers open too
            assert "database_url" not in repr(ws) and f":{real}@" not in repr(ws)
        assert f":{real}@" not in project.config.read_text()
