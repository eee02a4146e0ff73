"""The schema's history, as alembic revisions: `versions/NNNN_what.py`, one per change.

`mailer.store.migrate` runs them (no alembic.ini: the configuration is built in code),
on `mailer db upgrade` and automatically when a `Store` opens an older database.

To change the schema: edit `mailer/store/tables.py`, then write the next revision
(`revision = "0003"`, `down_revision = "0002"`), by hand or drafted by alembic
against a database at the current head:

    python -c "from alembic import command; from mailer.store.migrate import alembic_config; \
        command.revision(alembic_config('sqlite:///draft.db'), 'what changes', autogenerate=True, rev_id='0003')"

A revision must work on SQLite (tables are rebuilt in batch mode: `op.batch_alter_table`)
and on PostgreSQL; tests/test_migrations.py upgrades a 0.1.0 database on both and checks
that the migrated schema and the tables of `tables.py` do not differ.
"""
