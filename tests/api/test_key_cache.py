"""KeyCache on SQLite and PostgreSQL: what is served from memory, and when the database is asked.

The TTL is the revocation delay across replicas, so the tests count real
database fetches (by wrapping `_fetch`) rather than trusting return values,
which look the same whether cached or not.
"""

from __future__ import annotations

import asyncio
import time

from api.key_cache import KeyCache
from conveyor.db.database import Database
from conveyor.db.key_store import KeyGrant, create_key, get_key, revoke_key, secret_digest
from conveyor.db.project_store import archive_project, create_project, get_project


class CountingCache(KeyCache):
    """A KeyCache that records each digest it had to fetch from the database."""

    def __init__(self, database: Database, ttl: float, max_entries: int = 10_000) -> None:
        super().__init__(database, ttl, max_entries)
        self.fetched: list[str] = []

    def _fetch(self, digest: str) -> KeyGrant | None:
        self.fetched.append(digest)
        return super()._fetch(digest)

    def lookup_now(self, digest: str) -> KeyGrant | None:
        return asyncio.run(self.lookup(digest))


class SlowCache(CountingCache):
    """A CountingCache whose database answers after 0.1 s, so lookups overlap a fetch."""

    def _fetch(self, digest: str) -> KeyGrant | None:
        time.sleep(0.1)
        return super()._fetch(digest)


def _key(db: Database, project_name: str) -> tuple[str, str, str]:
    """(project id, key id, digest) of a fresh key in a new project."""
    with db.session() as session:
        project = create_project(session, project_name)
        minted = create_key(session, project, "k", rpm=3, tpm=None)
    return project.id, minted.key.id, secret_digest(minted.secret)


def _revoke(db: Database, key_id: str) -> None:
    with db.session() as session:
        revoke_key(session, get_key(session, key_id))


def test_grant_is_served_from_cache_within_the_ttl(db: Database) -> None:
    project_id, key_id, digest = _key(db, "acme")
    cache = CountingCache(db, ttl=60)
    first = cache.lookup_now(digest)
    assert first == KeyGrant(key_id, project_id, rpm=3, tpm=None, active=True)
    _revoke(db, key_id)
    # Within the TTL the revocation is not seen: that is the documented delay.
    assert cache.lookup_now(digest) == first
    assert cache.fetched == [digest]


def test_revocation_is_seen_after_the_ttl(db: Database) -> None:
    _, key_id, digest = _key(db, "acme")
    cache = CountingCache(db, ttl=0.2)
    assert cache.lookup_now(digest).active
    _revoke(db, key_id)
    time.sleep(0.25)
    grant = cache.lookup_now(digest)
    assert grant is not None and not grant.active
    assert cache.fetched == [digest, digest]


def test_forget_key_drops_only_that_key_at_once(db: Database) -> None:
    """A revoke on this replica takes effect here at once; other entries stay cached."""
    _, key_a, digest_a = _key(db, "a")
    _, _, digest_b = _key(db, "b")
    cache = CountingCache(db, ttl=60)
    cache.lookup_now(digest_a)
    cache.lookup_now(digest_b)
    assert cache.lookup_now(secret_digest("sk-proj-unknown")) is None  # a None entry too

    _revoke(db, key_a)
    cache.forget_key(key_a)
    assert not cache.lookup_now(digest_a).active
    assert cache.lookup_now(digest_b).active
    assert cache.fetched.count(digest_a) == 2 and cache.fetched.count(digest_b) == 1


def test_forget_project_drops_its_keys_at_once(db: Database) -> None:
    project_id, _, digest = _key(db, "acme")
    cache = CountingCache(db, ttl=60)
    assert cache.lookup_now(digest).active
    with db.session() as session:
        archive_project(session, get_project(session, project_id))
    cache.forget_project("proj_other")
    assert cache.lookup_now(digest).active  # someone else's project: still cached
    cache.forget_project(project_id)
    assert not cache.lookup_now(digest).active
    assert cache.fetched == [digest, digest]


def test_unknown_digest_is_cached_as_none(db: Database) -> None:
    """A client hammering with a bad key costs one query per TTL, not one per request."""
    cache = CountingCache(db, ttl=60)
    unknown = secret_digest("sk-proj-not-a-key")
    assert [cache.lookup_now(unknown) for _ in range(3)] == [None, None, None]
    assert cache.fetched == [unknown]


def test_lru_bound_evicts_the_least_recently_used(db: Database) -> None:
    cache = CountingCache(db, ttl=60, max_entries=2)
    a, b, c = (secret_digest(f"sk-proj-{name}") for name in "abc")
    cache.lookup_now(a)
    cache.lookup_now(b)
    cache.lookup_now(a)  # a hit makes `a` recent, so `b` is the one to go
    cache.lookup_now(c)
    assert cache.fetched == [a, b, c]
    cache.lookup_now(a)
    cache.lookup_now(c)
    assert cache.fetched == [a, b, c]
    cache.lookup_now(b)
    assert cache.fetched == [a, b, c, b]


def test_concurrent_misses_share_one_fetch(db: Database) -> None:
    """When a busy key's entry expires, the requests arriving during the refetch wait for it
    instead of each taking a thread and a connection to ask the database the same thing."""
    _, key_id, digest = _key(db, "acme")

    cache = SlowCache(db, ttl=60)

    async def many() -> list[KeyGrant | None]:
        return await asyncio.gather(*(cache.lookup(digest) for _ in range(10)))

    grants = asyncio.run(many())
    assert all(grant is not None and grant.key_id == key_id for grant in grants)
    assert cache.fetched == [digest]


def test_a_shared_fetch_outlives_a_cancelled_caller_and_refetches_after_forget(
    db: Database,
) -> None:
    """One caller going away does not cancel the others' fetch; a forget during the fetch
    still makes it ask again, so no answer from before a revocation is handed out."""
    _, key_id, digest = _key(db, "acme")

    cache = SlowCache(db, ttl=60)

    async def scenario() -> KeyGrant | None:
        first = asyncio.create_task(cache.lookup(digest))
        second = asyncio.create_task(cache.lookup(digest))
        await asyncio.sleep(0.02)
        first.cancel()
        _revoke(db, key_id)
        cache.forget_key(key_id)
        return await second

    grant = asyncio.run(scenario())
    assert grant is not None and not grant.active
    assert cache.fetched == [digest, digest]
