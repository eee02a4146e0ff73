"""Suppressed domains in the form every comparison uses: IDNA, lower case, no trailing dot.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Entries such as "@Bücher.example" or "@client.example." were kept as typed and never
matched an address (whose domain is compared in IDNA form). Each is rewritten to its
normal form; one that then repeats an existing entry is dropped (the older stays).
Address entries are keyed hashes and stay as they are (lookups still match them).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mailer.addresses import normalise_domain

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_sup = sa.table("suppressions", sa.column("id", sa.Integer()), sa.column("scope", sa.String()),
                sa.column("value", sa.String()))


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(_sup.c.id, _sup.c.value).where(_sup.c.scope == "domain").order_by(_sup.c.id)).all()
    taken = {value for _, value in rows}
    for row_id, value in rows:
        normal = normalise_domain(value)
        if normal == value:
            continue
        if normal in taken:
            conn.execute(sa.delete(_sup).where(_sup.c.id == row_id))
        else:
            conn.execute(sa.update(_sup).where(_sup.c.id == row_id).values(value=normal))
            taken.add(normal)


def downgrade() -> None:
    pass  # the normal form matches what the old code matched, and more
