"""write_request_logs on SQLite and PostgreSQL: rows land as the API produced them, and each
key's last_used_at only ever moves forward, whatever order replicas' batches arrive in."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from api.auth import Principal
from api.request_record import RequestRecord
from conveyor.db.api_key import ApiKey
from conveyor.db.database import Database
from conveyor.db.key_store import create_key
from conveyor.db.project_store import create_project
from conveyor.db.request_log import RequestLog
from conveyor.db.request_log_writer import write_request_logs

T0 = 1_767_225_600  # 2026-01-01 UTC


@pytest.fixture
def keys(db: Database) -> tuple[str, str, str]:
    """(project id, key id, second key id)."""
    with db.session() as session:
        project = create_project(session, "acme")
        first = create_key(session, project, "a", rpm=None, tpm=None).key.id
        second = create_key(session, project, "b", rpm=None, tpm=None).key.id
    return project.id, first, second


def log_row(
    created_at: int, api_key_id: str | None, project_id: str | None = None, **fields: Any
) -> dict[str, Any]:
    """A row exactly as the usage middleware queues it (RequestRecord.log_row)."""
    record = RequestRecord(
        endpoint="/v1/chat/completions",
        created_at=created_at + 0.75,
        principal=Principal(project_id=project_id, api_key_id=api_key_id),
        request_id=f"chatcmpl-{created_at}-{api_key_id}",
        model="m",
        status_code=200,
        prompt_tokens=11,
        completion_tokens=7,
        prompt_text='[{"role":"user","content":"hi"}]',
    )
    for name, value in fields.items():
        setattr(record, name, value)
    return record.log_row(log_prompts=True)


def last_used(db: Database) -> dict[str, int | None]:
    with db.session() as session:
        return {key.id: key.last_used_at for key in session.scalars(select(ApiKey))}


def stored(db: Database) -> list[RequestLog]:
    with db.session() as session:
        return list(session.scalars(select(RequestLog).order_by(RequestLog.id)))


def test_rows_are_inserted_as_the_api_made_them(db: Database, keys: tuple[str, str, str]) -> None:
    """The writer takes the exact dicts RequestRecord.log_row makes (a column drift breaks it)."""
    project_id, key, _ = keys
    rows = [log_row(T0, key, project_id), log_row(T0 + 1, None, status_code=401)]
    write_request_logs(db, rows)
    first, anonymous = stored(db)
    assert first.request_id == rows[0]["request_id"]
    assert (first.project_id, first.api_key_id) == (project_id, key)
    assert (first.model, first.endpoint, first.status_code) == ("m", "/v1/chat/completions", 200)
    assert (first.prompt_tokens, first.completion_tokens, first.cached_tokens) == (11, 7, 0)
    assert first.created_at == T0 and first.prompt == rows[0]["prompt"]
    assert first.latency is not None and first.latency >= 0
    assert (anonymous.api_key_id, anonymous.project_id, anonymous.status_code) == (None, None, 401)


def test_last_used_at_is_the_newest_row_per_key(db: Database, keys: tuple[str, str, str]) -> None:
    """One batch, rows out of order: each key gets its own maximum; unused keys stay None."""
    project_id, key, other = keys
    write_request_logs(
        db,
        [
            log_row(T0 + 5, key, project_id),
            log_row(T0 + 9, key, project_id),
            log_row(T0 + 7, key, project_id),
            # Logs outlive their keys: a row for a deleted key is kept and updates nothing.
            log_row(T0 + 8, "key_deleted", project_id),
            log_row(T0 + 100, None),
        ],
    )
    assert last_used(db) == {key: T0 + 9, other: None}
    assert len(stored(db)) == 5


def test_last_used_at_never_moves_backwards(db: Database, keys: tuple[str, str, str]) -> None:
    """A replica's late batch (older rows) must not rewind a newer stamp from another one."""
    project_id, key, other = keys
    write_request_logs(db, [log_row(T0 + 50, key, project_id), log_row(T0 + 10, other, project_id)])
    write_request_logs(db, [log_row(T0 + 20, key, project_id), log_row(T0 + 30, other, project_id)])
    assert last_used(db) == {key: T0 + 50, other: T0 + 30}
    write_request_logs(db, [log_row(T0 + 50, key, project_id)])
    write_request_logs(db, [log_row(T0 + 60, key, project_id)])
    assert last_used(db) == {key: T0 + 60, other: T0 + 30}
    assert len(stored(db)) == 6


def test_uses_without_a_row_stamp_their_keys(db: Database, keys: tuple[str, str, str]) -> None:
    """Files and batches calls log no row; their keys' uses still move last_used_at,
    forward only, with or without rows in the same write."""
    project_id, key, other = keys
    write_request_logs(db, [], {key: T0 + 5})
    assert last_used(db) == {key: T0 + 5, other: None}
    write_request_logs(db, [log_row(T0 + 3, other, project_id)], {key: T0 + 2, other: T0 + 9})
    assert last_used(db) == {key: T0 + 5, other: T0 + 9}
    assert len(stored(db)) == 1


def test_client_chosen_text_cannot_poison_a_batch(db: Database) -> None:
    """A model name too long for its column, or holding NUL, is what a 404'd request logs.

    PostgreSQL refuses both (SQLite takes them), and a refused row fails its whole
    batch on every retry, so every later log would be stuck behind it.
    """
    rows = [log_row(T0, None), log_row(T0, None, model="x" * 500), log_row(T0, None, model="a\0b")]
    write_request_logs(db, rows)
    models = [row.model for row in stored(db)]
    assert models == ["m", "x" * 200, "ab"]


def test_a_refused_row_is_dropped_and_the_rest_are_written(db: Database) -> None:
    """A row the database refuses for any reason costs that row only, not its batch."""
    refused = log_row(T0 + 1, None)
    refused["endpoint"] = None  # NOT NULL: refused on both databases
    write_request_logs(db, [log_row(T0, None), refused, log_row(T0 + 2, None)])
    assert [row.created_at for row in stored(db)] == [T0, T0 + 2]


def test_an_unreachable_database_raises_so_the_buffer_keeps_the_rows(tmp_path: Any) -> None:
    unreachable = Database("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(OperationalError):
        write_request_logs(unreachable, [log_row(T0, None)])
    unreachable.close()
