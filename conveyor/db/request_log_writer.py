"""Writes buffered request logs in one transaction and stamps the keys' last use."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import String, insert, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from conveyor.db.api_key import ApiKey
from conveyor.db.database import Database
from conveyor.db.request_log import RequestLog

logger = logging.getLogger(__name__)

_MAX_LENGTHS = {
    column.name: column.type.length
    for column in RequestLog.__table__.columns
    if isinstance(column.type, String) and column.type.length
}


def _storable(row: Mapping[str, Any]) -> dict[str, Any]:
    """Fit client-chosen text (the `model` of a request that got 404) to what PostgreSQL takes.

    PostgreSQL refuses a string longer than its column or holding NUL (SQLite takes
    both), and one refused row fails its whole batch on every retry, so no log is
    written again until the buffer overflows.
    """
    stored = dict(row)
    for name, value in row.items():
        if isinstance(value, str):
            stored[name] = value.replace("\x00", "")[: _MAX_LENGTHS.get(name)]
    return stored


def write_request_logs(
    database: Database,
    rows: Sequence[Mapping[str, Any]],
    used: Mapping[str, int] | None = None,
) -> None:
    """Write the rows; a row the database refuses is dropped (logged), never retried forever.

    An unreachable database raises, so the buffer keeps the rows and tries again;
    a refused row (bad data, a schema out of step) would fail every retry of its
    batch, so the batch is written row by row and only the refused rows are lost.
    """
    used = used or {}
    if not rows and not used:
        return
    try:
        _write(database, rows, used)
    except (OperationalError, InterfaceError):
        raise
    except DBAPIError:
        for row in rows:
            try:
                _write(database, [row], used)
            except (OperationalError, InterfaceError):
                raise
            except DBAPIError as exc:
                logger.error(
                    "request log for %s refused by the database and dropped: %s",
                    row.get("request_id"),
                    exc.orig,
                )


def _write(database: Database, rows: Sequence[Mapping[str, Any]], used: Mapping[str, int]) -> None:
    """One executemany for the rows, one UPDATE per distinct key (not per request); `used`
    stamps keys whose requests left no row."""
    last_used: dict[str, int] = dict(used)
    for row in rows:
        key_id = row.get("api_key_id")
        if key_id:
            last_used[key_id] = max(last_used.get(key_id, 0), int(row["created_at"]))
    with database.session() as session:
        if rows:
            session.execute(insert(RequestLog), [_storable(row) for row in rows])
        for key_id, used_at in sorted(last_used.items()):
            session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id)
                .where((ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < used_at))
                .values(last_used_at=used_at)
            )
