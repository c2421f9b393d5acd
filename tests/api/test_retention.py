"""Expired stored responses are purged; young ones and a retention of 0 keep them; responses
kept only for polling (background, store false) go at their own expiry whatever the retention."""

from __future__ import annotations

import asyncio
import time

from api.retention import DAY_SECONDS, Retention
from conveyor.db import response_store
from conveyor.db.database import Database
from conveyor.db.ids import new_id


def store(db: Database, age_seconds: float, expires_in: float | None = None) -> str:
    response_id = new_id("resp_")
    body = {"id": response_id, "model": "m", "created_at": int(time.time() - age_seconds)}
    expires_at = None if expires_in is None else int(time.time() + expires_in)
    with db.session() as session:
        response_store.save_response(session, None, body, [], expires_at=expires_at)
    return response_id


def kept(db: Database, response_id: str) -> bool:
    with db.session() as session:
        return response_store.get_response(session, response_id, None) is not None


def test_the_loop_purges_what_expired_and_keeps_the_rest(migrated_database_url: str) -> None:
    db = Database(migrated_database_url)
    try:
        old = [store(db, 31 * DAY_SECONDS) for _ in range(3)]
        young = store(db, 29 * DAY_SECONDS)

        async def main() -> None:
            retention = Retention(db, None, retention_days=30, interval=0.05)
            retention.start()
            deadline = time.monotonic() + 5
            while any(kept(db, i) for i in old) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await retention.stop()

        asyncio.run(main())
        assert not any(kept(db, i) for i in old) and kept(db, young)

        polled = store(db, 60, expires_in=-1)
        polling = store(db, 60, expires_in=600)
        forever = Retention(db, None, retention_days=0, interval=0.05)
        assert asyncio.run(forever.purge_once()) == 1
        assert kept(db, young) and kept(db, polling) and not kept(db, polled)
    finally:
        db.close()
