"""The database handle: one SQLAlchemy engine and session factory per process.

Synchronous on purpose: the API runs its few queries in worker threads (and
writes request logs in batches off the hot path), while the CLI, Alembic and
the Celery batch workers are synchronous anyway, so every caller shares one
set of queries. SQLite gets WAL and a busy timeout so the API, the batch
worker and `conveyor keys` can use one file at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from conveyor.private_dir import make_private_dir, touch_private_file

SQLITE_BUSY_TIMEOUT_MS = 10_000


class DatabaseUrlError(ValueError):
    """A database URL conveyor cannot use: not a URL, or for a database it has no driver for."""


def default_database_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'conveyor.db'}"


def normalize_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg 3, the driver we ship."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUrlError(
            "not a database URL (sqlite:///PATH or postgresql://USER:PASSWORD@HOST/NAME)"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_db_engine(url: str) -> Engine:
    """Parameters are hidden from error messages: they may hold prompts (`--log-prompts`)."""
    url = normalize_url(url)
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            folder = Path(database).expanduser().parent
            try:
                make_private_dir(folder)
            except FileExistsError:
                raise DatabaseUrlError(f"{folder} is a file, not a folder") from None
            except OSError as exc:
                raise DatabaseUrlError(
                    f"cannot create the folder {folder}: {exc.strerror}"
                ) from None
            if not database.startswith("file:"):  # a URI names no plain path
                try:
                    touch_private_file(Path(database).expanduser())
                except OSError as exc:
                    raise DatabaseUrlError(f"cannot create {database}: {exc.strerror}") from None
        engine = create_engine(url, connect_args={"check_same_thread": False}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    try:
        return create_engine(
            url, pool_pre_ping=True, pool_size=10, max_overflow=10, hide_parameters=True
        )
    except (ModuleNotFoundError, NoSuchModuleError) as exc:
        raise DatabaseUrlError(
            f"no driver for {make_url(url).drivername} databases ({exc}); conveyor runs on "
            "SQLite and PostgreSQL"
        ) from None


class Database:
    """An engine plus a session factory; `session()` commits on success, rolls back on error."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.engine = create_db_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()
