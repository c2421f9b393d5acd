"""Stored responses on SQLite and PostgreSQL: project scoping and the chain behind
previous_response_id."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.db import response_store
from conveyor.db.database import Database
from conveyor.db.ids import new_id


def message(role: str, text: str) -> dict[str, Any]:
    return {"type": "message", "id": new_id("msg_"), "role": role, "content": [{"text": text}]}


def save(db: Database, project: str | None, said: str, heard: str, previous: str | None) -> str:
    body = {
        "id": new_id("resp_"),
        "object": "response",
        "created_at": 1_700_000_000,
        "model": "m",
        "previous_response_id": previous,
        "output": [message("assistant", said)],
    }
    with db.session() as session:
        response_store.save_response(session, project, body, [message("user", heard)])
    return str(body["id"])


def queued_body() -> dict[str, Any]:
    """A background response as its create call stores it."""
    return {
        "id": new_id("resp_"),
        "object": "response",
        "created_at": 1_700_000_000,
        "model": "m",
        "status": "queued",
        "background": True,
        "output": [],
    }


def texts(items: list[dict[str, Any]]) -> list[str]:
    return [item["content"][0]["text"] for item in items]


def test_the_conversation_is_every_turn_oldest_first(db: Database) -> None:
    first = save(db, "proj_a", "a1", "q1", None)
    second = save(db, "proj_a", "a2", "q2", first)
    third = save(db, "proj_a", "a3", "q3", second)
    with db.session() as session:
        assert texts(response_store.conversation(session, third, "proj_a")) == [
            "q1",
            "a1",
            "q2",
            "a2",
            "q3",
            "a3",
        ]
        assert texts(response_store.conversation(session, first, "proj_a")) == ["q1", "a1"]


def test_a_missing_link_names_itself(db: Database) -> None:
    first = save(db, "proj_a", "a1", "q1", None)
    second = save(db, "proj_a", "a2", "q2", first)
    with db.session() as session:
        assert response_store.delete_response(session, first, "proj_a")
    with db.session() as session, pytest.raises(response_store.MissingResponse) as missing:
        response_store.conversation(session, second, "proj_a")
    assert missing.value.args == (first,)


def test_another_projects_response_is_not_found(db: Database) -> None:
    mine = save(db, "proj_a", "a", "q", None)
    unowned = save(db, None, "a", "q", None)
    with db.session() as session:
        assert response_store.get_response(session, mine, "proj_b") is None
        assert response_store.get_response(session, mine, None) is None
        assert response_store.get_response(session, unowned, "proj_a") is None
        assert response_store.get_response(session, unowned, None) is not None
        assert not response_store.delete_response(session, mine, "proj_b")
        with pytest.raises(response_store.MissingResponse):
            response_store.conversation(session, mine, "proj_b")
    with db.session() as session:
        assert response_store.get_response(session, mine, "proj_a") is not None


def test_purge_deletes_only_what_is_older_than_the_cutoff_in_bounded_batches(
    db: Database,
) -> None:
    ids = [save(db, "proj_a", f"a{n}", f"q{n}", None) for n in range(5)]
    with db.session() as session:
        for offset, response_id in enumerate(ids):
            stored = response_store.get_response(session, response_id, "proj_a")
            assert stored is not None
            stored.created_at = 1_000 + offset
    with db.session() as session:
        assert response_store.purge_responses(session, 1_003, 2_000, limit=2) == 2
    with db.session() as session:
        assert response_store.purge_responses(session, 1_003, 2_000, limit=2) == 1
        assert response_store.purge_responses(session, 1_003, 2_000, limit=2) == 0
    with db.session() as session:
        left = [i for i in ids if response_store.get_response(session, i, "proj_a")]
    assert left == ids[3:]


def test_a_background_run_ends_once_whoever_ends_it_first(db: Database) -> None:
    """The run's final object and a cancel race: each is one compare-and-set from
    queued/in_progress, so the first wins and the other changes nothing."""
    body = queued_body()
    with db.session() as session:
        response_store.save_response(session, None, body, [message("user", "q")])
    with db.session() as session, pytest.raises(response_store.UnfinishedResponse):
        response_store.conversation(session, body["id"], None)
    with db.session() as session:
        stored = response_store.get_response(session, body["id"], None)
        assert stored is not None
        assert response_store.end_running(session, stored, "cancelled")
        assert stored.status == stored.body["status"] == "cancelled"
    final = {**body, "status": "completed", "output": [message("assistant", "a")]}
    with db.session() as session:
        assert not response_store.finish_response(session, final)
        stored = response_store.get_response(session, body["id"], None)
        assert stored is not None and stored.body["status"] == "cancelled"
        assert not response_store.end_running(session, stored, "failed", {"code": "x"})
    # The other order: the answer lands first, a late cancel changes nothing.
    other = {**body, "id": new_id("resp_")}
    with db.session() as session:
        response_store.save_response(session, None, other, [])
    with db.session() as session:
        assert response_store.finish_response(session, {**other, "status": "completed"})
        stored = response_store.get_response(session, other["id"], None)
        assert stored is not None and not response_store.end_running(session, stored, "cancelled")
        assert stored.status == "completed"
        assert response_store.conversation(session, other["id"], None) == []


def test_a_cancel_that_loses_the_race_shows_the_finished_row(db: Database) -> None:
    """The cancel loaded the row while it ran; the run's answer landed before its update.
    The update changes nothing, and the object it returns is the stored (completed) one,
    not the cancel's wish."""
    body = queued_body()
    with db.session() as session:
        response_store.save_response(session, None, body, [])
    with db.session() as cancelling:
        stored = response_store.get_response(cancelling, body["id"], None)
        assert stored is not None and stored.status == "queued"
        with db.session() as finishing:
            assert response_store.finish_response(finishing, {**body, "status": "completed"})
        assert not response_store.end_running(cancelling, stored, "cancelled")
        assert stored.status == stored.body["status"] == "completed"


def test_in_progress_only_follows_queued(db: Database) -> None:
    """A worker's first reply moves a queued run to in_progress, body and column alike;
    it never moves a run that has already ended (the reply raced the end), nor one gone."""
    body = queued_body()
    with db.session() as session:
        response_store.save_response(session, None, body, [])
    with db.session() as session:
        assert response_store.mark_in_progress(session, body["id"])
    with db.session() as session:
        stored = response_store.get_response(session, body["id"], None)
        assert stored is not None and stored.status == stored.body["status"] == "in_progress"
        assert not response_store.mark_in_progress(session, body["id"])  # once
        assert response_store.finish_response(session, {**body, "status": "completed"})
    with db.session() as session:
        assert not response_store.mark_in_progress(session, body["id"])
        stored = response_store.get_response(session, body["id"], None)
        assert stored is not None and stored.status == "completed"
        assert not response_store.mark_in_progress(session, "resp_missing")
