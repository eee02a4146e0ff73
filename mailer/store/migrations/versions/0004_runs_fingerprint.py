"""runs.fingerprint: which version of the campaign file and its templates each run sent.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

A later run whose files differ stops unless told (`send --allow-changes`), and `status`
says which version each recipient got. Runs recorded before have none ("").
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("fingerprint", sa.String(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("fingerprint")
