"""Files holding personal data or secrets are created owner-only (files 0600, folders 0700),
whatever the umask; an existing one open to others is named once per command with its `chmod`."""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SECRET, Project

import mailer
from mailer.cli import cli


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), env={"MAILER_SECRET": "", "MAILER_CONFIG": ""},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_init_send_and_preview_create_owner_only_files(tmp_path: Path, permissive_umask: None) -> None:
    demo = tmp_path / "demo"
    run("init", str(demo))
    config, campaign = str(demo / "config.toml"), str(demo / "campaigns" / "cloud-audit.toml")
    run("--config", config, "preview", campaign, "--out", str(demo / "previews" / "december"))
    sent = run("--config", config, "send", campaign, "--yes")
    assert "open to other users" not in sent
    outbox, previews = demo / "outbox", demo / "previews"
    messages = [p for p in (outbox / "new").iterdir()]
    written = [p for p in (previews / "december").iterdir()]
    assert messages and {p.suffix for p in written} == {".eml", ".html"}
    assert {path.name: mode(path) for path in [outbox, *(outbox / sub for sub in ("tmp", "new", "cur")), previews,
                                               previews / "december"]} == {
        "outbox": 0o700, "tmp": 0o700, "new": 0o700, "cur": 0o700, "previews": 0o700, "december": 0o700}
    assert {mode(p) for p in [demo / "mailer.db", *messages, *written]} == {0o600}
    # The secret was generated and kept in the database: while it is open, its WAL files too.
    with mailer.open_workspace(config, {}) as ws:
        assert ws.secret_generated is False and ws.store.suppressions.entries() == []
        sidecars = [demo / "mailer.db-wal", demo / "mailer.db-shm"]
        assert all(p.exists() for p in sidecars) and {mode(p) for p in sidecars} == {0o600}


def test_files_open_to_others_are_named_once_with_the_fix(project: Project, permissive_umask: None) -> None:
    assert project.send().exit_code == 0  # creates the database and the outbox (owner-only)
    project.db.chmod(0o644)
    (project.root / "outbox").chmod(0o755)
    (project.root / "preview").mkdir(mode=0o755)
    result = project.send()
    assert result.exit_code == 0
    outbox = project.root / "outbox"
    assert result.stderr.count("open to other users") == 2, result.stderr
    assert (f"Note: {project.db} is open to other users (mode 0644) and holds personal data: "
            f"run `chmod 600 {project.db}`.") in result.stderr
    assert (f"Note: {outbox} is open to other users (mode 0755) and holds personal data: "
            f"run `chmod -R go-rwx {outbox}`.") in result.stderr
    preview = project.run("preview", str(project.campaign), "--out", str(project.root / "preview"))
    assert preview.exit_code == 0
    assert f"run `chmod -R go-rwx {project.root / 'preview'}`" in preview.stderr
    assert preview.stderr.count("open to other users") == 3  # database, outbox, preview folder
    # Warned, not changed: the owner decides.
    assert mode(project.db) == 0o644 and mode(outbox) == 0o755
    os.chmod(project.db, 0o600)
    outbox.chmod(0o700)
    assert "open to other users" not in project.run("status", str(project.campaign)).output


def test_the_library_creates_a_new_database_owner_only(tmp_path: Path, permissive_umask: None) -> None:
    config = tmp_path / "config.toml"
    config.write_text((Path(mailer.__file__).parent / "sample" / "config.toml").read_text())
    with mailer.open_workspace(config, {"MAILER_SECRET": SECRET}, create=True):
        assert mode(tmp_path / "mailer.db") == 0o600
