"""The opt-out spool against garbage a crash, a disk or a hand left in it (hostile test, issue 13)."""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from mailer.spool import OptOutSpool, SpooledOptOut


def test_a_deeply_nested_line_is_a_line_that_holds_no_entry_not_a_crash_of_every_command(tmp_path: Path) -> None:
    spool = OptOutSpool(tmp_path / "mailer.db.optout-spool")
    good = SpooledOptOut("tok.en", "one-click", "", datetime(2026, 12, 1, tzinfo=UTC))
    spool.append(good)
    with open(spool.path, "ab") as handle:
        handle.write(b"[" * 200_000 + b"\n")
    spool.append(SpooledOptOut("tok.other", "one-click", "", datetime(2026, 12, 1, tzinfo=UTC)))
    assert SpooledOptOut.parse(b"[" * 200_000 + b"\n") is None
    assert spool.pending() == 2
    assert spool.drain(lambda entries: entries) == 2
    assert not spool.path.exists()


def test_a_spool_that_cannot_be_read_is_one_sentence_naming_it_and_sends_nothing(tmp_path: Path) -> None:
    import pytest

    from mailer.errors import SpoolUnreadable, StoreError

    path = tmp_path / "mailer.db.optout-spool"
    path.mkdir()  # what a restore or a hand can leave there
    spool = OptOutSpool(path)
    with pytest.raises(SpoolUnreadable) as caught:
        spool.pending()
    assert isinstance(caught.value, StoreError) and isinstance(caught.value, OSError)
    assert caught.value.exit_code == 1
    assert str(caught.value) == f"the opt-out spool {path} cannot be read (Is a directory)"


def test_the_spool_is_not_written_through_a_symlink(tmp_path: Path) -> None:
    """A symlink at the spool's path sent the tokens to wherever it pointed (a file others may read,
    kept 0644): now appending refuses (the server answers 503, not 200) and reading says so."""
    import os

    import pytest

    from mailer.errors import SpoolUnreadable

    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_bytes(b"")
    path = tmp_path / "mailer.db.optout-spool"
    os.symlink(elsewhere, path)
    spool = OptOutSpool(path)
    with pytest.raises(OSError):
        spool.append(SpooledOptOut("tok.en", "one-click", "", datetime(2026, 12, 1, tzinfo=UTC)))
    assert elsewhere.read_bytes() == b""
    with pytest.raises(SpoolUnreadable):
        spool.pending()


def test_a_line_that_holds_no_entry_is_kept_aside_not_deleted(tmp_path: Path) -> None:
    """A line of another format version (a newer mailer wrote it) or with one damaged byte still
    holds a person's signed token: the next writer deleted it silently, and the opt-out the server
    had answered 200 was lost. It is moved to PATH.unreadable (owner-only) for the operator."""
    import os
    import stat

    path = tmp_path / "mailer.db.optout-spool"
    newer = b'{"v":2,"token":"tok.en","origin":"one-click","reason":"","at":"2026-12-01T05:00:00+00:00"}\n'
    damaged = b'{"v":1,"token":"tok.other","origin":"one-click","reason":"","at":"2026-12-01T05:00:00+00:0\x010"}\n'
    path.write_bytes(newer + damaged)
    spool = OptOutSpool(path)
    assert spool.drain(lambda entries: entries) == 0
    aside = tmp_path / "mailer.db.optout-spool.unreadable"
    assert sorted(aside.read_bytes().splitlines(keepends=True)) == sorted([newer, damaged])
    assert stat.S_IMODE(os.stat(aside).st_mode) == 0o600
    assert not path.exists()
