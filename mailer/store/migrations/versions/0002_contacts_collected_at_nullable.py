"""contacts.collected_at may be empty: an unknown collection date.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Every row keeps its date; only the NOT NULL constraint goes. On SQLite the table is
rebuilt (batch mode: copy, drop, rename, indexes again), inside the upgrade's
transaction and with foreign keys off, as `mailer.store.migrate` runs it.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.alter_column("collected_at", existing_type=sa.Date(), nullable=True)


def downgrade() -> None:
    # Contacts without a date get the day they were first recorded.
    contacts = sa.table("contacts", sa.column("collected_at", sa.Date()), sa.column("created_at", sa.DateTime()))
    op.execute(contacts.update().where(contacts.c.collected_at.is_(None))
               .values(collected_at=sa.func.date(contacts.c.created_at)))
    with op.batch_alter_table("contacts") as batch:
        batch.alter_column("collected_at", existing_type=sa.Date(), nullable=False)
