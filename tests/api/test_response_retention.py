"""Expired stored responses are purged; young ones and a retention of 0 keep everything."""

from __future__ import annotations

import asyncio
import time

from api.response_retention import DAY_SECONDS, ResponseRetention
from conveyor.db import response_store
from conveyor.db.database import Database
from conveyor.db.ids import new_id


def store(db: Database, age_seconds: float) -> str:
    response_id = new_id("resp_")
    body = {"id": response_id, "model": "m", "created_at": int(time.time() - age_seconds)}
    with db.session() as session:
        response_store.save_response(session, None, body, [])
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
            retention = ResponseRetention(db, retention_days=30, interval=0.05)
            retention.start()
            deadline = time.monotonic() + 5
            while any(kept(db, i) for i in old) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await retention.stop()

        asyncio.run(main())
        assert not any(kept(db, i) for i in old) and kept(db, young)

        forever = ResponseRetention(db, retention_days=0, interval=0.05)
        asyncio.run(_started_and_stopped(forever))
        assert kept(db, young)
    finally:
        db.close()


async def _started_and_stopped(retention: ResponseRetention) -> None:
    retention.start()  # retention 0: no task at all
    assert retention._task is None
    await retention.stop()
