from __future__ import annotations

import asyncio

import pytest

from api import revoked_key_watch
from api.revoked_key_watch import RevokedKeyWatch
from conveyor.db.database import Database
from conveyor.db.key_store import create_key, inactive_keys, revoke_key
from conveyor.db.project_store import create_project


def _keys(db: Database) -> tuple[str, str]:
    """A live key and a revoked one, of one project."""
    with db.session() as session:
        project = create_project(session, "acme")
        live = create_key(session, project, "live", rpm=None, tpm=None).key
        gone = create_key(session, project, "gone", rpm=None, tpm=None).key
        revoke_key(session, gone)
        return live.id, gone.id


def test_one_query_covers_every_watched_key_and_only_revoked_work_stops(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests in flight and background runs are watched alike: each check is one
    `inactive_keys` query for all their keys, and only the work of a key that stopped
    working is stopped; work without a key is not asked about."""
    live, gone = _keys(db)
    queries: list[set[str]] = []

    def counted(session, key_ids: set[str]) -> set[str]:  # type: ignore[no-untyped-def]
        queries.append(set(key_ids))
        return inactive_keys(session, key_ids)

    monkeypatch.setattr(revoked_key_watch, "inactive_keys", counted)
    stopped: list[tuple[str, str]] = []
    asked_while_watched: list[int] = []

    def stopper(name: str):  # type: ignore[no-untyped-def]
        async def stop(key_id: str) -> None:
            stopped.append((name, key_id))

        return stop

    async def scenario() -> None:
        watch = RevokedKeyWatch(db, router=None, interval=0.05)  # type: ignore[arg-type]
        with (
            watch.watching(lambda: gone, stopper("stolen")),
            watch.watching(lambda: live, stopper("honest")),
            watch.watching(lambda: None, stopper("keyless")),
        ):
            for _ in range(100):
                if stopped:
                    break
                await asyncio.sleep(0.02)
        asked_while_watched.append(len(queries))
        await asyncio.sleep(0.2)  # nothing watched: the watch asks nothing more
        await watch.stop()

    asyncio.run(scenario())
    assert stopped and set(stopped) == {("stolen", gone)}
    assert queries and all(q == {live, gone} for q in queries)
    assert asked_while_watched == [len(queries)]


def test_a_stop_that_fails_is_tried_again_at_the_next_check(db: Database) -> None:
    """A stop that could not be done (the database away while marking a run cancelled)
    is asked for again while the work is still watched, not forgotten."""
    _, gone = _keys(db)
    tries: list[str] = []

    async def flaky(key_id: str) -> None:
        tries.append(key_id)
        if len(tries) == 1:
            raise RuntimeError("database away")

    async def scenario() -> None:
        watch = RevokedKeyWatch(db, router=None, interval=0.05)  # type: ignore[arg-type]
        with watch.watching(lambda: gone, flaky):
            for _ in range(100):
                if len(tries) >= 2:
                    break
                await asyncio.sleep(0.02)
        await watch.stop()

    asyncio.run(scenario())
    assert tries[:2] == [gone, gone]
