"""Batches and their per-line checkpoint on SQLite and PostgreSQL.

The API's cancel and a batch worker's progress race on these rows, and a
resumed worker trusts `batch_results` to skip what is done, so the guards
(status transitions, one result per custom_id) are pinned on both databases.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from sqlalchemy import delete

from conveyor.db import batch_store
from conveyor.db.batch import Batch
from conveyor.db.batch_store import BatchNotCancellable, LineResult
from conveyor.db.database import Database
from conveyor.db.pagination import UnknownCursor

CHAT = "/v1/chat/completions"


def new_batch(db: Database, project_id: str | None = "proj_a", **fields: Any) -> str:
    with db.session() as session:
        batch = batch_store.create_batch(
            session,
            project_id=project_id,
            api_key_id="key_a" if project_id else None,
            input_file_id="file-in",
            endpoint=CHAT,
            completion_window="24h",
            metadata={"k": "v"},
        )
        for name, value in fields.items():
            setattr(batch, name, value)
        return batch.id


def result(line: int, custom_id: str, ok: bool = True, **tokens: int) -> LineResult:
    return LineResult(
        line=line,
        custom_id=custom_id,
        succeeded=ok,
        payload={"custom_id": custom_id, "line": line, "ok": ok, "text": "é"},
        **tokens,
    )


def counts(db: Database, batch_id: str) -> tuple[int, int]:
    with db.session() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        return batch.completed, batch.failed


def status(db: Database, batch_id: str) -> str | None:
    with db.session() as session:
        return batch_store.status_of(session, batch_id)


def test_create_fills_in_the_openai_fields(db: Database) -> None:
    before = int(time.time())
    batch_id = new_batch(db)
    with db.session() as session:
        batch = batch_store.get_batch(session, batch_id, project_id="proj_a")
        assert batch is not None
        assert batch.id.startswith("batch_")
        assert (batch.status, batch.endpoint, batch.input_file_id) == (
            "validating",
            CHAT,
            "file-in",
        )
        assert (batch.total, batch.completed, batch.failed) == (0, 0, 0)
        assert before <= batch.created_at <= int(time.time())
        assert batch.expires_at == batch.created_at + 24 * 3600
        assert batch.metadata_ == {"k": "v"} and batch.api_key_id == "key_a"
        assert batch.model is None and batch.output_file_id is None


def test_get_is_scoped_to_the_project(db: Database) -> None:
    mine = new_batch(db, "proj_a")
    nobodys = new_batch(db, None)
    with db.session() as session:
        assert batch_store.get_batch(session, mine, project_id="proj_b") is None
        assert batch_store.get_batch(session, mine, project_id=None) is None
        assert batch_store.get_batch(session, nobodys, project_id=None) is not None
        assert batch_store.get_batch(session, nobodys, project_id="proj_a") is None
        assert batch_store.get_batch(session, "batch_missing", project_id="proj_a") is None


def test_list_is_newest_first_per_project_with_cursor(db: Database) -> None:
    ids = [new_batch(db, "proj_a", created_at=1000 + i) for i in range(5)]
    # Same second: the id breaks the tie, so paging never skips or repeats one, and ids
    # begin with their time, so the later one lists first (conveyor/db/ids.py).
    twins = [new_batch(db, "proj_a", created_at=2000) for _ in range(2)]
    new_batch(db, "proj_b")
    unowned = new_batch(db, None)
    expected = [*reversed(twins), *reversed(ids)]
    with db.session() as session:
        seen: list[str] = []
        after = None
        while True:
            page = batch_store.list_batches(session, project_id="proj_a", after=after, limit=3)
            seen += [b.id for b in page.items]
            if not page.has_more:
                break
            after = page.items[-1].id
        assert seen == expected
        everything = batch_store.list_batches(session, project_id="proj_a", after=None, limit=100)
        assert [b.id for b in everything.items] == expected and not everything.has_more
        none_page = batch_store.list_batches(session, project_id=None, after=None, limit=100)
        assert [b.id for b in none_page.items] == [unowned]
        with pytest.raises(UnknownCursor):
            batch_store.list_batches(session, project_id="proj_b", after=ids[0], limit=3)


@pytest.mark.parametrize("start", ["validating", "in_progress"])
def test_cancel_of_a_running_batch_marks_it_cancelling(db: Database, start: str) -> None:
    batch_id = new_batch(db, status=start)
    with db.session() as session:
        batch = batch_store.get_batch(session, batch_id, project_id="proj_a")
        assert batch is not None
        batch_store.request_cancel(session, batch)
    with db.session() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        assert batch.status == "cancelling"
        assert batch.cancelling_at is not None and batch.cancelling_at >= batch.created_at
        stamp = batch.cancelling_at
        # Cancelling again (or a cancelled batch) is a no-op, not an error.
        assert batch_store.request_cancel(session, batch).status == "cancelling"
        assert batch.cancelling_at == stamp


@pytest.mark.parametrize("terminal", ["finalizing", "completed", "failed", "expired"])
def test_a_finished_batch_is_not_cancellable(db: Database, terminal: str) -> None:
    batch_id = new_batch(db, status=terminal)
    with db.session() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        with pytest.raises(BatchNotCancellable, match=terminal):
            batch_store.request_cancel(session, batch)
    cancelled = new_batch(db, status="cancelled")
    with db.session() as session:
        batch = session.get(Batch, cancelled)
        assert batch is not None
        assert batch_store.request_cancel(session, batch).status == "cancelled"


def test_cancel_loses_to_a_worker_that_moved_the_batch_on(db: Database) -> None:
    """The API read `in_progress`, then the worker finalized before the cancel was written:
    the cancel must not drag a finished batch back to `cancelling` (the worker would then
    'cancel' a completed batch). The docstring promises a guarded UPDATE for this race."""
    batch_id = new_batch(db, status="in_progress")
    with db.session() as api:
        stale = api.get(Batch, batch_id)
        assert stale is not None and stale.status == "in_progress"
        with db.session() as worker:
            assert batch_store.transition(worker, batch_id, from_=("in_progress",), to="completed")
        with pytest.raises(BatchNotCancellable):
            batch_store.request_cancel(api, stale)
    assert status(db, batch_id) == "completed"


def test_transitions_are_guarded_and_stamp_their_time(db: Database) -> None:
    batch_id = new_batch(db)
    with db.session() as session:
        assert not batch_store.transition(session, batch_id, from_=("in_progress",), to="failed")
        assert batch_store.transition(
            session, batch_id, from_=("validating",), to="in_progress", total=3, model="m"
        )
        assert not batch_store.transition(session, batch_id, from_=("validating",), to="failed")
        assert not batch_store.transition(
            session, "batch_missing", from_=("validating",), to="failed"
        )
    with db.session() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        assert (batch.status, batch.total, batch.model) == ("in_progress", 3, "m")
        assert batch.in_progress_at is not None and batch.failed_at is None
        assert batch_store.status_of(session, batch_id) == "in_progress"
        assert batch_store.status_of(session, "batch_missing") is None
    errors = {"object": "list", "data": [{"code": "x", "line": 1}]}
    with db.session() as session:
        assert batch_store.transition(
            session, batch_id, from_=("in_progress", "cancelling"), to="failed", errors=errors
        )
    with db.session() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None and batch.errors == errors and batch.failed_at is not None


def test_active_batch_ids_are_the_unfinished_ones(db: Database) -> None:
    active = {new_batch(db, status=s) for s in batch_store.ACTIVE}
    for terminal in batch_store.TERMINAL:
        new_batch(db, status=terminal)
    with db.session() as session:
        assert set(batch_store.active_batch_ids(session)) == active


def test_record_result_counts_each_custom_id_once(db: Database) -> None:
    """A line recorded twice (a resumed or duplicated runner) is stored and counted once."""
    batch_id = new_batch(db, status="in_progress")
    with db.session() as session:
        assert batch_store.record_result(session, batch_id, result(1, "a"))
        assert batch_store.record_result(session, batch_id, result(2, "b", ok=False))
    with db.session() as session:
        # In a later transaction too, and with a different outcome: the first one stands.
        assert not batch_store.record_result(session, batch_id, result(1, "a", ok=False))
        assert not batch_store.record_result(session, batch_id, result(2, "b"))
        # The transaction is still usable after a refused duplicate.
        assert batch_store.record_result(session, batch_id, result(3, "c"))
    assert counts(db, batch_id) == (2, 1)
    with db.session() as session:
        assert batch_store.recorded_custom_ids(session, batch_id) == {"a", "b", "c"}
        assert list(batch_store.iter_results(session, batch_id, succeeded=False)) == [
            json.dumps(result(2, "b", ok=False).payload, ensure_ascii=False)
        ]


def test_results_of_batches_are_separate(db: Database) -> None:
    one, two = new_batch(db, status="in_progress"), new_batch(db, status="in_progress")
    with db.session() as session:
        assert batch_store.record_result(session, one, result(1, "same"))
        assert batch_store.record_result(session, two, result(1, "same", ok=False))
        assert batch_store.recorded_custom_ids(session, one) == {"same"}
    assert counts(db, one) == (1, 0) and counts(db, two) == (0, 1)


def test_iter_results_in_input_line_order(db: Database) -> None:
    batch_id = new_batch(db, status="in_progress")
    order = [5, 1, 4, 2, 3, 7, 6]  # the order lines happen to finish in
    with db.session() as session:
        for line in order:
            batch_store.record_result(session, batch_id, result(line, f"id{line}", ok=line != 4))
    with db.session() as session:
        good = [json.loads(r) for r in batch_store.iter_results(session, batch_id, succeeded=True)]
        bad = [json.loads(r) for r in batch_store.iter_results(session, batch_id, succeeded=False)]
    assert [r["line"] for r in good] == [1, 2, 3, 5, 6, 7]
    assert [r["custom_id"] for r in bad] == ["id4"]
    assert good[0]["text"] == "é"


def test_usage_totals_sum_the_recorded_lines(db: Database) -> None:
    batch_id = new_batch(db, status="in_progress")
    empty = {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }
    with db.session() as session:
        assert batch_store.usage_totals(session, batch_id) == empty
        batch_store.record_result(
            session, batch_id, result(1, "a", prompt_tokens=10, completion_tokens=3)
        )
        batch_store.record_result(
            session,
            batch_id,
            result(2, "b", prompt_tokens=7, completion_tokens=5, cached_tokens=4),
        )
        batch_store.record_result(session, batch_id, result(3, "c", ok=False))
        # A duplicate adds nothing.
        batch_store.record_result(session, batch_id, result(1, "a", prompt_tokens=99))
    with db.session() as session:
        assert batch_store.usage_totals(session, batch_id) == {
            "input_tokens": 17,
            "input_tokens_details": {"cached_tokens": 4},
            "output_tokens": 8,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 25,
        }


def test_drop_results_clears_only_that_batch_and_keeps_the_counts(db: Database) -> None:
    one, two = new_batch(db, status="in_progress"), new_batch(db, status="in_progress")
    with db.session() as session:
        batch_store.record_result(session, one, result(1, "a"))
        batch_store.record_result(session, one, result(2, "b", ok=False))
        batch_store.record_result(session, two, result(1, "a"))
    with db.session() as session:
        batch_store.drop_results(session, one)
    with db.session() as session:
        assert batch_store.recorded_custom_ids(session, one) == set()
        assert list(batch_store.iter_results(session, one, succeeded=True)) == []
        assert batch_store.recorded_custom_ids(session, two) == {"a"}
    assert counts(db, one) == (1, 1)


def test_deleting_a_batch_deletes_its_results(db: Database) -> None:
    """The checkpoint rows hang off the batch (ON DELETE CASCADE)."""
    batch_id = new_batch(db, status="in_progress")
    with db.session() as session:
        batch_store.record_result(session, batch_id, result(1, "a"))
    with db.session() as session:
        session.execute(delete(Batch).where(Batch.id == batch_id))
    with db.session() as session:
        assert batch_store.recorded_custom_ids(session, batch_id) == set()
