"""The send log's writes, against a real SQLite file: what the engine commits is what stays."""
from __future__ import annotations

from pathlib import Path

import pytest

from mailer.states import SendState
from mailer.store import Store


@pytest.fixture
def store(tmp_path: Path):
    opened = Store.open(f"sqlite:///{tmp_path / 'mailer.db'}", create=True)
    yield opened
    opened.close()


def planned_rows(store: Store, *keys: str) -> dict[str, int]:
    store.sendlog.write_decisions("c1", [{"address_key": k, "contact_id": None, "run_id": None, "state": SendState.PLANNED.value}
                                             for k in keys])
    return {row.address_key: row.id for row in store.sendlog.rows("c1")}


class Claimed:
    def __init__(self, log_id: int) -> None:
        self.log_id, self.address_hash, self.domain = log_id, f"h{log_id}", "x.example"
        self.message_id, self.subject, self.attempts = f"<{log_id}@x>", "s", 0


def test_a_retry_and_its_success_in_one_commit_leave_the_row_sent(store: Store) -> None:
    """A 4xx answer is recorded (still `sending`) and the retry's success follows it; when both
    land in one group commit behind another message's success, the success must stay last."""
    ids = planned_rows(store, "claire@x.example", "paul@x.example")
    writer = store.sendlog.writer()
    try:
        assert writer.commit([Claimed(i) for i in ids.values()], [], []).claimed == set(ids.values())
        claire, paul = ids["claire@x.example"], ids["paul@x.example"]
        writer.commit([], [
            {"id": claire, "state": "sent", "smtp_code": 250, "smtp_text": "ok", "attempts": 1, "sent_at": None},
            {"id": paul, "state": "sending", "smtp_code": 452, "smtp_text": "storage", "attempts": 1},
            {"id": paul, "state": "sent", "smtp_code": 250, "smtp_text": "ok", "attempts": 2, "sent_at": None},
        ], [])
    finally:
        writer.close()
    rows = {r.address_key: (r.state, r.attempts, r.smtp_code) for r in store.sendlog.rows("c1")}
    assert rows == {"claire@x.example": ("sent", 1, 250), "paul@x.example": ("sent", 2, 250)}


def test_an_outcome_the_state_table_forbids_is_refused(store: Store) -> None:
    ids = planned_rows(store, "a@x.example")
    writer = store.sendlog.writer()
    try:
        with pytest.raises(ValueError, match="from sending to blocked"):
            writer.commit([], [{"id": ids["a@x.example"], "state": "blocked"}], [])
    finally:
        writer.close()
