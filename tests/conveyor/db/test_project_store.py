"""Projects on SQLite and PostgreSQL: create, unique names, cursor pagination, archive.

The admin API and `conveyor projects` are thin over these queries, so the
semantics both rely on (what `after` means, what a taken name does) are
pinned here on both databases.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from conveyor.db.api_key import ApiKey
from conveyor.db.batch import Batch
from conveyor.db.database import Database
from conveyor.db.key_store import create_key, revoke_key
from conveyor.db.pagination import UnknownCursor
from conveyor.db.project import Project
from conveyor.db.project_store import (
    ProjectNameTaken,
    archive_project,
    create_project,
    find_project,
    get_project,
    list_projects,
    rename_project,
)

from .batch_rows import batch_in

T0 = 1_767_225_600  # 2026-01-01 UTC


def test_create_and_find_by_id_or_name(db: Database) -> None:
    before = int(time.time())
    with db.session() as session:
        made = create_project(session, "acme")
    assert made.id.startswith("proj_") and made.status == "active" and made.archived_at is None
    assert before <= made.created_at <= int(time.time())
    with db.session() as session:
        assert get_project(session, made.id).name == "acme"
        assert find_project(session, "acme").id == made.id
        assert find_project(session, made.id).id == made.id
        assert find_project(session, "nope") is None
        assert get_project(session, "proj_missing") is None


def test_find_project_prefers_the_id_over_a_project_named_like_it(db: Database) -> None:
    """`conveyor projects archive <id>` must archive that project, not one named "<id>"."""
    with db.session() as session:
        target = create_project(session, "target")
        create_project(session, target.id)  # a namesake of the id, created after it
        impostor = create_project(session, "impostor")
        rename_project(session, target, impostor.id)  # and one created before it
    with db.session() as session:
        assert find_project(session, target.id).id == target.id
        assert find_project(session, impostor.id).id == impostor.id


def test_project_names_are_unique(db: Database) -> None:
    """A taken name is ProjectNameTaken (not an IntegrityError), on create and on rename."""
    with db.session() as session:
        create_project(session, "acme")
        other = create_project(session, "globex")
    with pytest.raises(ProjectNameTaken), db.session() as session:
        create_project(session, "acme")
    with pytest.raises(ProjectNameTaken), db.session() as session:
        rename_project(session, get_project(session, other.id), "acme")
    # Archiving does not free a name: the CLI addresses projects by name.
    with db.session() as session:
        archive_project(session, find_project(session, "acme"))
    with pytest.raises(ProjectNameTaken), db.session() as session:
        create_project(session, "acme")
    with db.session() as session:
        assert rename_project(session, get_project(session, other.id), "initech").name == "initech"
        names = sorted(session.scalars(select(Project.name)))
    assert names == ["acme", "initech"]


def _make(db: Database, created: list[tuple[str, int]]) -> dict[str, str]:
    """Projects with chosen creation times; name -> id."""
    ids = {}
    with db.session() as session:
        for name, created_at in created:
            project = create_project(session, name)
            project.created_at = created_at
            ids[name] = project.id
    return ids


def test_list_paginates_by_creation_time_then_id(db: Database) -> None:
    """`after` continues strictly after its row; `has_more` says whether a next page exists."""
    # Created out of order, two in the same second (ties break by id).
    ids = _make(db, [("c", T0 + 2), ("a", T0), ("d", T0 + 3), ("b1", T0 + 1), ("b2", T0 + 1)])
    tie = sorted([ids["b1"], ids["b2"]])
    expected = [ids["a"], *tie, ids["c"], ids["d"]]

    pages: list[tuple[list[str], bool]] = []
    after = None
    with db.session() as session:
        while True:
            page = list_projects(session, after=after, limit=2, include_archived=False)
            pages.append(([p.id for p in page.items], page.has_more))
            if not page.has_more:
                break
            after = page.items[-1].id
        exact = list_projects(session, after=None, limit=5, include_archived=False)
    assert pages == [(expected[0:2], True), (expected[2:4], True), (expected[4:], False)]
    assert [p.id for p in exact.items] == expected and not exact.has_more


def test_list_unknown_cursor_and_archived(db: Database) -> None:
    ids = _make(db, [("a", T0), ("b", T0 + 1), ("c", T0 + 2)])
    with db.session() as session:
        archive_project(session, get_project(session, ids["b"]))
    with db.session() as session:
        active = list_projects(session, after=None, limit=10, include_archived=False)
        everything = list_projects(session, after=None, limit=10, include_archived=True)
        after_a = list_projects(session, after=ids["a"], limit=10, include_archived=False)
        with pytest.raises(UnknownCursor):
            list_projects(session, after="proj_missing", limit=10, include_archived=True)
    assert [p.id for p in active.items] == [ids["a"], ids["c"]]
    assert [p.id for p in everything.items] == [ids["a"], ids["b"], ids["c"]]
    assert [p.id for p in after_a.items] == [ids["c"]]
    with db.session() as session:
        # An archived project is not listed, but as a cursor it still marks its place.
        after_b = list_projects(session, after=ids["b"], limit=10, include_archived=False)
    assert [p.id for p in after_b.items] == [ids["c"]]


def test_archive_is_idempotent(db: Database) -> None:
    """Archiving twice keeps the first archived_at: it records when keys stopped working."""
    ids = _make(db, [("a", T0)])
    with db.session() as session:
        project = archive_project(session, get_project(session, ids["a"]))
        assert project.status == "archived" and project.archived_at is not None
        project.archived_at = T0 + 5
    with db.session() as session:
        again = archive_project(session, get_project(session, ids["a"]))
    assert again.status == "archived" and again.archived_at == T0 + 5


def test_archiving_revokes_the_projects_live_keys(db: Database) -> None:
    """At the archive time; a key revoked before keeps its own time, other projects'
    keys are untouched."""
    ids = _make(db, [("a", T0), ("b", T0 + 1)])

    def key(project_id: str) -> str:
        project = get_project(session, project_id)
        return create_key(session, project, "k", rpm=None, tpm=None).key.id

    with db.session() as session:
        live, earlier, theirs = key(ids["a"]), key(ids["a"]), key(ids["b"])
        revoke_key(session, session.get(ApiKey, earlier)).revoked_at = T0 + 2
    with db.session() as session:
        archive_project(session, get_project(session, ids["a"]))
    with db.session() as session:
        project = get_project(session, ids["a"])
        revoked = {k: session.get(ApiKey, k).revoked_at for k in (live, earlier, theirs)}
    assert revoked == {live: project.archived_at, earlier: T0 + 2, theirs: None}


def test_archiving_cancels_the_projects_running_batches(db: Database) -> None:
    """Its keys stop working, and so does its batch work: validating and running batches
    go to cancelling (the worker stops their lines); finished ones and other projects'
    batches are left as they are."""
    ids = _make(db, [("a", T0), ("b", T0 + 1)])

    def batch(project_id: str, status: str) -> str:
        return batch_in(db, project_id, "key_x", status)

    mine = {
        status: batch(ids["a"], status) for status in ("validating", "in_progress", "completed")
    }
    theirs = batch(ids["b"], "in_progress")
    with db.session() as session:
        archive_project(session, get_project(session, ids["a"]))
    with db.session() as session:
        status = {b: session.get(Batch, b).status for b in [*mine.values(), theirs]}
        assert status == {
            mine["validating"]: "cancelling",
            mine["in_progress"]: "cancelling",
            mine["completed"]: "completed",
            theirs: "in_progress",
        }
