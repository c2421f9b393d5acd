"""File rows on SQLite and PostgreSQL: the place of a file in a list, seen from its id.

A list resumed `after` a file that is gone (deleted, or another project's) is continued
by the time in that id, so a file's `created_at` must be its id's second even when the
row is written seconds after the id was made (the upload's bytes come in between).
"""

from __future__ import annotations

import secrets
import time

import pytest

from conveyor.db import file_store
from conveyor.db.database import Database
from conveyor.db.file_store import FILE_ID_PREFIX
from conveyor.db.ids import created_second


def id_made_at(unix_ms: int) -> str:
    """An id as `new_file_id` would have made it at `unix_ms`."""
    return f"{FILE_ID_PREFIX}{unix_ms:012x}{secrets.token_hex(6)}"


def test_created_at_is_the_second_in_the_id_not_when_the_row_is_written(
    db: Database,
) -> None:
    # An upload whose id was made in the last millisecond of a second three seconds ago.
    made_ms = (time.time_ns() // 1_000_000_000 - 3) * 1000 + 999
    file_id = id_made_at(made_ms)
    with db.session() as session:
        stored = file_store.create_file(
            session, "proj_a", "in.jsonl", "batch", 5, file_id, file_id=file_id
        )
        assert stored.created_at == made_ms // 1000 == created_second(file_id, FILE_ID_PREFIX)


def test_an_absent_id_of_the_same_millisecond_pages_past_the_file(db: Database) -> None:
    made_ms = (time.time_ns() // 1_000_000_000 - 3) * 1000 + 999
    file_id = id_made_at(made_ms)
    with db.session() as session:
        file_store.create_file(session, "proj_a", "in.jsonl", "batch", 5, file_id, file_id=file_id)
    later = f"{FILE_ID_PREFIX}{made_ms:012x}ffffffffffff"
    earlier = f"{FILE_ID_PREFIX}{made_ms:012x}000000000000"
    with db.session() as session:

        def listed(**kwargs: object) -> list[str]:
            page = file_store.list_files(session, "proj_a", **kwargs)  # type: ignore[arg-type]
            return [f.id for f in page.items]

        assert listed(after=later, order="asc") == []
        assert listed(after=earlier, order="asc") == [file_id]
        assert listed(after=earlier, order="desc") == []
        assert listed(after=later, order="desc") == [file_id]


def test_an_id_new_file_id_did_not_make_is_refused(db: Database) -> None:
    with db.session() as session, pytest.raises(ValueError, match="not an id"):
        file_store.create_file(session, "proj_a", "x", "batch", 1, "k", file_id="file-abc")
