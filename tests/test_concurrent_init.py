"""Several processes creating one new database at once: one creates the schema, the others find it
done (no IntegrityError, no "locked"), on SQLite and on PostgreSQL."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import SECRET, Project

BOTH_DATABASES = True  # also run on PostgreSQL when MAILER_TEST_POSTGRES_URL is set
CREATE_DATABASE = False  # the test makes it


def test_two_db_init_at_once_create_the_schema_once(project: Project) -> None:
    env = dict(os.environ, MAILER_SECRET=SECRET, MAILER_CONFIG="")
    inits = [subprocess.Popen([sys.executable, "-m", "mailer", "--config", str(project.config), "db", "init"],
                              cwd=project.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [init.communicate(timeout=60)[0] for init in inits]
    assert [init.returncode for init in inits] == [0, 0], outputs
    assert sum("Created the database" in output for output in outputs) == 1, outputs
    assert sum("exists already" in output for output in outputs) == 1, outputs
    assert all(len(output.splitlines()) == 1 for output in outputs), outputs  # no traceback, no warning
    assert project.run("status", "x").output.startswith("Error: no send log for campaign 'x'")
