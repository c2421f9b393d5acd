"""One migration at a time on a SQLite file.

Every process that opens a SQLite database upgrades it in place on start
(`migrate.prepare_schema`), and `conveyor api` replicas (or a worker host's
batch workers) sharing a data dir start together: two Alembic runs on one
fresh file both try `CREATE TABLE`, and the loser exited with "table already
exists". An exclusive `flock` on a file beside the database makes the later
ones wait, then find the schema at head and do nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

from conveyor.private_dir import make_private_dir, touch_private_file


@contextlib.contextmanager
def sqlite_migration_lock(url: str) -> Iterator[None]:
    """Held while migrating the SQLite file `url` names (an in-memory one needs none)."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".migrate-lock")
    try:
        make_private_dir(lock_path.parent)  # a first start's data dir
        touch_private_file(lock_path)
        lock = open(lock_path, "a")  # noqa: SIM115 (closed below, after the yield)
    except OSError:
        # A folder that cannot be made or written: opening the database says so in its
        # own words (conveyor/db/database_errors.py), with nothing to lock.
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield
