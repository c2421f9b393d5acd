"""Run a unit of SQL work in a thread, so the event loop never waits on the database."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread
from sqlalchemy.orm import Session

from conveyor.db.database import Database

T = TypeVar("T")


async def in_session(database: Database, work: Callable[[Session], T]) -> T:
    """`work` runs in one transaction (committed if it returns); render results inside it."""

    def run() -> T:
        with database.session() as session:
            return work(session)

    return await anyio.to_thread.run_sync(run)
