"""Replicas sharing one SQLite data dir start together: every one of them migrates the
fresh file, and none dies of the other's `CREATE TABLE` ("table already exists")."""

from __future__ import annotations

import multiprocessing
from multiprocessing.synchronize import Barrier
from pathlib import Path

from conveyor.db import migrate

STARTING_TOGETHER = 3


def _start(url: str, barrier: Barrier) -> None:
    barrier.wait(timeout=60)  # past the imports, the migrations begin at once
    migrate.prepare_schema(url)


def test_replicas_starting_together_on_one_sqlite_file_all_come_up(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'conveyor.db'}"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(STARTING_TOGETHER)
    replicas = [
        context.Process(target=_start, args=(url, barrier)) for _ in range(STARTING_TOGETHER)
    ]
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.join(timeout=120)
    assert [r.exitcode for r in replicas] == [0] * STARTING_TOGETHER
    assert migrate.current_revision(url) == migrate.head_revision()


def test_a_first_start_makes_the_data_dir_it_locks_in(tmp_path: Path) -> None:
    """The lock file was opened before the database made its folder: a traceback on a
    fresh machine's first start."""
    url = f"sqlite:///{tmp_path / 'not' / 'yet' / 'conveyor.db'}"
    migrate.prepare_schema(url)
    assert migrate.current_revision(url) == migrate.head_revision()


def test_an_in_memory_database_needs_no_lock() -> None:
    migrate.prepare_schema("sqlite://")
