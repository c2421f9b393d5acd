"""Project API keys on SQLite and PostgreSQL: minting, listing, revoking and resolving secrets.

A key's secret exists only in the answer to `create_key`; the database must
hold nothing it could be recovered from.
"""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import text

from conveyor.db import batch_store
from conveyor.db.database import Database
from conveyor.db.key_store import (
    SECRET_PREFIX,
    KeyGrant,
    create_key,
    get_key,
    grant_for_digest,
    list_keys,
    revoke_key,
    secret_digest,
)
from conveyor.db.pagination import UnknownCursor
from conveyor.db.project import Project
from conveyor.db.project_store import archive_project, create_project, get_project

from .batch_rows import batch_in

T0 = 1_767_225_600  # 2026-01-01 UTC


def _project(db: Database, name: str) -> Project:
    with db.session() as session:
        return create_project(session, name)


def test_only_the_digest_is_stored(db: Database) -> None:
    """The row holds the secret's SHA-256 and a hint; no column reveals the hidden part."""
    project = _project(db, "acme")
    with db.session() as session:
        minted = create_key(session, project, "ci", rpm=5, tpm=None)
        other = create_key(session, project, "ci", rpm=None, tpm=None)
    secret = minted.secret
    assert secret.startswith(SECRET_PREFIX) and len(secret) >= len(SECRET_PREFIX) + 40
    assert secret != other.secret
    assert minted.key.id.startswith("key_")
    assert minted.key.secret_digest == hashlib.sha256(secret.encode()).hexdigest()
    visible = len(SECRET_PREFIX) + 4
    assert minted.key.redacted_value == f"{secret[:visible]}...{secret[-4:]}"

    with db.engine.connect() as connection:
        stored = connection.execute(
            text("SELECT * FROM api_keys WHERE id = :id"), {"id": minted.key.id}
        ).one()
    hidden = secret[visible:-4]
    for value in stored:
        assert hidden not in str(value)
    assert secret_digest(secret) in stored


def test_grant_for_digest(db: Database) -> None:
    """Active, revoked, archived-project and unknown secrets, as the key cache sees them."""
    live, archived = _project(db, "live"), _project(db, "archived")
    with db.session() as session:
        ok = create_key(session, live, "ok", rpm=5, tpm=1000)
        revoked = create_key(session, live, "revoked", rpm=None, tpm=None)
        orphaned = create_key(session, archived, "orphaned", rpm=None, tpm=7)
    with db.session() as session:
        revoke_key(session, get_key(session, revoked.key.id))
        archive_project(session, get_project(session, archived.id))
    with db.session() as session:
        grants = {
            name: grant_for_digest(session, secret_digest(minted.secret))
            for name, minted in (("ok", ok), ("revoked", revoked), ("orphaned", orphaned))
        }
        unknown = grant_for_digest(session, secret_digest(SECRET_PREFIX + "never-minted"))
        # The digest is what is looked up, never the secret itself.
        by_secret = grant_for_digest(session, ok.secret)
    assert grants == {
        "ok": KeyGrant(ok.key.id, live.id, rpm=5, tpm=1000, active=True),
        "revoked": KeyGrant(revoked.key.id, live.id, rpm=None, tpm=None, active=False),
        "orphaned": KeyGrant(orphaned.key.id, archived.id, rpm=None, tpm=7, active=False),
    }
    assert unknown is None and by_secret is None


def test_revoking_a_key_cancels_the_batches_it_created(db: Database) -> None:
    """A leaked key's batches must not run on, billed to the project, after it is revoked;
    another key's batches and finished ones are left alone."""
    project = _project(db, "acme")
    with db.session() as session:
        leaked = create_key(session, project, "leaked", rpm=None, tpm=None).key.id
        other = create_key(session, project, "other", rpm=None, tpm=None).key.id

    def batch(key_id: str, status: str) -> str:
        return batch_in(db, project.id, key_id, status)

    running, queued, done = (batch(leaked, s) for s in ("in_progress", "validating", "completed"))
    others = batch(other, "in_progress")
    with db.session() as session:
        revoke_key(session, get_key(session, leaked))
    with db.session() as session:
        statuses = {i: batch_store.status_of(session, i) for i in (running, queued, done, others)}
    assert statuses == {
        running: "cancelling",
        queued: "cancelling",
        done: "completed",
        others: "in_progress",
    }


def test_revoke_is_idempotent_and_hides_the_key(db: Database) -> None:
    project = _project(db, "acme")
    with db.session() as session:
        key_id = create_key(session, project, "k", rpm=None, tpm=None).key.id
    with db.session() as session:
        key = revoke_key(session, get_key(session, key_id))
        assert key.revoked_at is not None
        key.revoked_at = T0
    with db.session() as session:
        assert revoke_key(session, get_key(session, key_id)).revoked_at == T0
        hidden = list_keys(session, project_id=project.id, after=None, limit=10)
        shown = list_keys(session, project_id=None, after=None, limit=10, include_revoked=True)
    assert hidden.items == []
    assert [k.id for k in shown.items] == [key_id]


def test_get_key_is_scoped_to_its_project(db: Database) -> None:
    """The admin API reads keys under /projects/{id}: another project's key is not found."""
    mine, theirs = _project(db, "mine"), _project(db, "theirs")
    with db.session() as session:
        key_id = create_key(session, mine, "k", rpm=None, tpm=None).key.id
    with db.session() as session:
        assert get_key(session, key_id).id == key_id
        assert get_key(session, key_id, project_id=mine.id).id == key_id
        assert get_key(session, key_id, project_id=theirs.id) is None
        assert get_key(session, "key_missing") is None


def test_list_keys_paginates_within_a_project(db: Database) -> None:
    mine, theirs = _project(db, "mine"), _project(db, "theirs")
    with db.session() as session:
        keys = [create_key(session, mine, f"k{n}", rpm=None, tpm=None).key for n in range(5)]
        foreign = create_key(session, theirs, "x", rpm=None, tpm=None).key
        # Creation times run opposite to id order: creation time, not id, must decide.
        for offset, key in enumerate(sorted(keys, key=lambda k: k.id, reverse=True)):
            key.created_at = T0 + offset
        foreign.created_at = T0 + 2
    expected = [k.id for k in sorted(keys, key=lambda k: k.created_at)]

    with db.session() as session:
        first = list_keys(session, project_id=mine.id, after=None, limit=3)
        rest = list_keys(session, project_id=mine.id, after=first.items[-1].id, limit=3)
        everyone = list_keys(session, project_id=None, after=None, limit=100)
        with pytest.raises(UnknownCursor):
            list_keys(session, project_id=mine.id, after="key_missing", limit=3)
        # A key of another project is no cursor for this project's list.
        with pytest.raises(UnknownCursor):
            list_keys(session, project_id=mine.id, after=foreign.id, limit=3)
    assert ([k.id for k in first.items], first.has_more) == (expected[:3], True)
    assert ([k.id for k in rest.items], rest.has_more) == (expected[3:], False)
    assert {k.id for k in everyone.items} == {*expected, foreign.id}


def test_a_key_revoked_between_pages_is_still_a_cursor(db: Database) -> None:
    """Listing keys and revoking each as it comes: the next page continues after it."""
    project = _project(db, "acme")
    with db.session() as session:
        keys = [create_key(session, project, f"k{n}", rpm=None, tpm=None).key for n in range(4)]
        for offset, key in enumerate(keys):
            key.created_at = T0 + offset
    seen = []
    after = None
    while True:
        with db.session() as session:
            page = list_keys(session, project_id=project.id, after=after, limit=1)
            for key in page.items:
                revoke_key(session, get_key(session, key.id))
        seen += [k.id for k in page.items]
        if not page.has_more:
            break
        after = page.items[-1].id
    assert seen == [k.id for k in keys]
