"""complaints: recipients who reported a campaign's message as spam (ARF feedback reports).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

`mailer suppress complaints` records one row per (campaign, address hash) besides the
suppression entry: a person who had already unsubscribed (mailbox providers unsubscribe
on a spam report too) still counts in `status`, and `explain` can say they complained.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)  # as in 0001: DATETIME on SQLite, timestamptz on PostgreSQL


def upgrade() -> None:
    op.create_table(
        "complaints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.String(), nullable=False),
        sa.Column("address_hash", sa.String(), nullable=False),
        sa.Column("message_id", sa.String(), nullable=False),
        sa.Column("feedback_type", sa.String(), nullable=False),
        sa.Column("reported_at", TIMESTAMP, nullable=True),
        sa.Column("recorded_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("campaign_id", "address_hash"),
    )
    op.create_index("ix_complaints_campaign_id", "complaints", ["campaign_id"], unique=False)
    op.create_index("ix_complaints_address_hash", "complaints", ["address_hash"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_complaints_address_hash", table_name="complaints")
    op.drop_index("ix_complaints_campaign_id", table_name="complaints")
    op.drop_table("complaints")
