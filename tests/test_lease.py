"""The sending lease: two processes starting a campaign together, one sends; the other is refused
naming the process that holds it (host:pid and until when), never an empty "()"."""
from __future__ import annotations

import os
import socket
import threading
import time

import sqlalchemy
from conftest import SECRET, Project

import mailer
from mailer.lease import take_campaign

BOTH_DATABASES = True  # also run on PostgreSQL when MAILER_TEST_POSTGRES_URL is set

CAMPAIGN_ID = "2026-12-cloud-audit"


def test_a_process_refused_while_another_takes_the_lease_names_it(project: Project) -> None:
    """The race as it happened: the other process takes the lease between our reading it free
    and our writing it (on PostgreSQL, 8 runs in 10 named the holder `()`)."""
    with mailer.open_workspace(project.config, {"MAILER_SECRET": SECRET}) as ws:
        ws.store.campaigns.record(CAMPAIGN_ID, "prospecting", "fr", "prospects")
        url = f"sqlite:///{project.db}" if not project.is_postgres else project.database_url
        other = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        refused: list[BaseException] = []
        with other.connect() as conn:
            transaction = conn.begin()  # the other process, in the middle of taking the lease
            conn.execute(sqlalchemy.text("UPDATE campaigns SET lease_owner = 'sender-7.example:4242', "
                                         "lease_until = :until WHERE id = :id"),
                         {"until": "2099-01-01 00:00:00", "id": CAMPAIGN_ID})

            def ours() -> None:
                try:
                    take_campaign(ws.store, CAMPAIGN_ID)
                except BaseException as exc:  # noqa: BLE001 - examined below
                    refused.append(exc)

            taking = threading.Thread(target=ours)
            taking.start()
            time.sleep(0.5)  # ours reaches the lease and waits for the other's transaction
            assert taking.is_alive()
            transaction.commit()
            taking.join(timeout=30)
        other.dispose()
    assert len(refused) == 1, "both processes took the lease"
    message = str(refused[0])
    assert isinstance(refused[0], mailer.MailerError), message
    assert "is being sent by another process (host sender-7.example, pid 4242" in message
    assert "its lease runs until 00:00:00 UTC" in message


def test_the_lease_of_a_dead_process_on_this_host_is_taken_over(project: Project) -> None:
    with mailer.open_workspace(project.config, {"MAILER_SECRET": SECRET}) as ws:
        ws.store.campaigns.record(CAMPAIGN_ID, "prospecting", "fr", "prospects")
        project.sql("update campaigns set lease_owner = ?, lease_until = ?",
                    f"{socket.gethostname()}:999999999", "2099-01-01 00:00:00")
        assert take_campaign(ws.store, CAMPAIGN_ID)
        owner, until = ws.store.campaigns.lease(CAMPAIGN_ID)
        assert owner.endswith(f":{os.getpid()}") and until is not None
