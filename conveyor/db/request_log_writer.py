"""Writes buffered request logs in one transaction and stamps the keys' last use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import insert, update

from conveyor.db.api_key import ApiKey
from conveyor.db.database import Database
from conveyor.db.request_log import RequestLog


def write_request_logs(database: Database, rows: Sequence[Mapping[str, Any]]) -> None:
    """One executemany for the rows, one UPDATE per distinct key (not per request)."""
    if not rows:
        return
    last_used: dict[str, int] = {}
    for row in rows:
        key_id = row.get("api_key_id")
        if key_id:
            last_used[key_id] = max(last_used.get(key_id, 0), int(row["created_at"]))
    with database.session() as session:
        session.execute(insert(RequestLog), [dict(row) for row in rows])
        for key_id, used_at in sorted(last_used.items()):
            session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id)
                .where((ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < used_at))
                .values(last_used_at=used_at)
            )
