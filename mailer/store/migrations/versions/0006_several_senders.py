"""Several senders on one campaign: who sends each row, who is alive, and a shared rate.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

- runs.sender ("host:pid"), runs.heartbeat_at (renewed while it runs) and runs.plan_run_id
  (the run whose plan it sends): a run is a sender; one whose beat stopped is dead, and only
  its rows in flight become uncertain.
- send_log.claimed_by: the run that took the row (reserved, claimed, sent): `status` shows each
  sender's share, and a dead sender's rows are told from a live one's.
- campaigns.next_send_at: the first free sending slot, so that the campaign's rate holds for all
  its senders together.
- The index over (campaign_id, state) gets id too: the next planned rows, in plan order, come
  from it (PostgreSQL sorted every planned row of the campaign for each batch without it).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("sender", sa.String(), nullable=False, server_default=""))
        batch.add_column(sa.Column("heartbeat_at", TIMESTAMP, nullable=True))
        batch.add_column(sa.Column("plan_run_id", sa.Integer(), nullable=True))
    with op.batch_alter_table("send_log") as batch:
        batch.add_column(sa.Column("claimed_by", sa.Integer(), nullable=True))
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("next_send_at", TIMESTAMP, nullable=True))
    op.drop_index("ix_send_log_campaign_state", table_name="send_log")
    op.create_index("ix_send_log_campaign_state", "send_log", ["campaign_id", "state", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_send_log_campaign_state", table_name="send_log")
    op.create_index("ix_send_log_campaign_state", "send_log", ["campaign_id", "state"], unique=False)
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("next_send_at")
    with op.batch_alter_table("send_log") as batch:
        batch.drop_column("claimed_by")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("plan_run_id")
        batch.drop_column("heartbeat_at")
        batch.drop_column("sender")
