"""Replicas sharing one SQLite data dir start together: every one of them migrates the
fresh file, and none dies of the other's `CREATE TABLE` ("table already exists")."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from conveyor.db import migrate

STARTING_TOGETHER = 3
# Each replica, a process of its own as `conveyor api` is, waits until a common moment
# past its imports, then migrates.
REPLICA = """
import sys, time
from conveyor.db import migrate
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
migrate.prepare_schema(sys.argv[1])
"""


def test_replicas_starting_together_on_one_sqlite_file_all_come_up(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'conveyor.db'}"
    start = time.time() + 5
    replicas = [
        subprocess.Popen([sys.executable, "-c", REPLICA, url, str(start)], stderr=subprocess.PIPE)
        for _ in range(STARTING_TOGETHER)
    ]
    errors = [replica.communicate(timeout=120)[1].decode() for replica in replicas]
    assert [r.returncode for r in replicas] == [0] * STARTING_TOGETHER, errors
    assert migrate.current_revision(url) == migrate.head_revision()


def test_a_first_start_makes_the_data_dir_it_locks_in(tmp_path: Path) -> None:
    """The lock file was opened before the database made its folder: a traceback on a
    fresh machine's first start."""
    url = f"sqlite:///{tmp_path / 'not' / 'yet' / 'conveyor.db'}"
    migrate.prepare_schema(url)
    assert migrate.current_revision(url) == migrate.head_revision()


def test_an_in_memory_database_needs_no_lock() -> None:
    migrate.prepare_schema("sqlite://")
