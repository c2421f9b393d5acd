"""File rows on SQLite and PostgreSQL: a file's place in a list, seen from its id.

A list resumed `after` a file that is gone (deleted, or another project's) is continued
by the time in that id, so a file's `created_at` must be its id's second; and the id is
made when the row is written, so that `created_at` (and the expiry counted from it) is
when the file came to exist, not when its bytes began to arrive.
"""

from __future__ import annotations

import time

import pytest

from conveyor.db import file_store
from conveyor.db.database import Database
from conveyor.db.file_store import FILE_ID_PREFIX, STORAGE_KEY_PREFIX
from conveyor.db.ids import created_second


def test_created_at_is_the_second_in_the_id_made_as_the_row_is_written(db: Database) -> None:
    # Bytes whose upload began three seconds ago.
    began_ms = (time.time_ns() // 1_000_000_000 - 3) * 1000 + 999
    key = f"{STORAGE_KEY_PREFIX}{began_ms:012x}{'0' * 12}"
    with db.session() as session:
        before = int(time.time())
        stored = file_store.create_file(
            session, "proj_a", "in.jsonl", "batch", 5, key, expires_after=3600
        )
        assert stored.storage_key == key != stored.id
        assert stored.created_at == created_second(stored.id, FILE_ID_PREFIX)
        assert stored.created_at >= before
        assert stored.expires_at == stored.created_at + 3600


def test_absent_ids_of_the_files_millisecond_page_past_it(db: Database) -> None:
    with db.session() as session:
        file_id = file_store.create_file(session, "proj_a", "in.jsonl", "batch", 5, "k").id
    stamp = file_id[len(FILE_ID_PREFIX) : len(FILE_ID_PREFIX) + 12]
    later = f"{FILE_ID_PREFIX}{stamp}ffffffffffff"
    earlier = f"{FILE_ID_PREFIX}{stamp}000000000000"
    with db.session() as session:

        def listed(after: str, order: str) -> list[str]:
            page = file_store.list_files(session, "proj_a", after=after, order=order)  # type: ignore[arg-type]
            return [f.id for f in page.items]

        assert listed(later, "asc") == []
        assert listed(earlier, "asc") == [file_id]
        assert listed(earlier, "desc") == []
        assert listed(later, "desc") == [file_id]


def test_an_id_new_file_id_did_not_make_is_refused(db: Database) -> None:
    with db.session() as session, pytest.raises(ValueError, match="not an id"):
        file_store.create_file(session, "proj_a", "x", "batch", 1, "k", file_id="file-abc")
