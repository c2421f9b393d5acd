"""A project's files lock: a second upload's storage check waits for the first's file."""

from __future__ import annotations

import threading

from conveyor.db import file_store
from conveyor.db.database import Database, is_sqlite
from conveyor.db.project_lock import lock_project_files

HELD_S = 0.5  # how long the first transaction holds the lock while the second waits


def _hold_lock_with_a_file(
    db: Database, project_id: str, locked: threading.Event, release: threading.Event
) -> None:
    with db.session() as session:
        lock_project_files(session, project_id)
        file_store.create_file(session, project_id, "a.jsonl", "batch", 60, "obj-a")
        locked.set()
        release.wait(timeout=30)


def _bytes_seen_under_the_lock(
    db: Database, project_id: str, acquired: threading.Event, seen: list[int]
) -> None:
    with db.session() as session:
        lock_project_files(session, project_id)
        acquired.set()
        seen.append(file_store.stored_bytes(session, project_id))


def _second_while_first_holds(
    db: Database, second_project: str, wait_s: float
) -> tuple[bool, list[int]]:
    """proj_a's lock held with a 60-byte file; whether `second_project`'s lock was taken
    within `wait_s`, and the bytes it then saw (after the first committed)."""
    locked, release, acquired = threading.Event(), threading.Event(), threading.Event()
    seen: list[int] = []
    first = threading.Thread(target=_hold_lock_with_a_file, args=(db, "proj_a", locked, release))
    first.start()
    assert locked.wait(timeout=30)
    second = threading.Thread(
        target=_bytes_seen_under_the_lock, args=(db, second_project, acquired, seen)
    )
    second.start()
    try:
        acquired_early = acquired.wait(timeout=wait_s)
    finally:
        release.set()
        first.join(timeout=30)
        second.join(timeout=30)
    return acquired_early, seen


def test_the_second_upload_waits_and_counts_the_first_ones_file(db: Database) -> None:
    acquired_early, seen = _second_while_first_holds(db, "proj_a", HELD_S)
    assert not acquired_early, "the lock let a second writer in"
    assert seen == [60]  # read after the first committed, its file included


def test_other_projects_wait_only_on_sqlite(db: Database) -> None:
    # SQLite has one writer at a time for the whole database; PostgreSQL locks per project.
    acquired_early, seen = _second_while_first_holds(db, "proj_b", HELD_S * 4)
    assert acquired_early != is_sqlite(db.url)
    assert seen == [0]
