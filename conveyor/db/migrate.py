"""Run Alembic from code: `conveyor db upgrade|downgrade|current` and the SQLite auto-upgrade.

The migration scripts ship inside the `migrations` package, so an installed
conveyor (a container image, a wheel) finds them without an alembic.ini.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.exc import ArgumentError

import migrations
from conveyor.db.database import create_db_engine, is_sqlite, normalize_url
from conveyor.db.migration_lock import sqlite_migration_lock

logger = logging.getLogger(__name__)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # ConfigParser interpolation would eat a password's `%`.
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """To `revision`; on a schema a later release migrated (a rollback), nothing to do but
    say so: the compose `migrate` service and the chart's pre-upgrade Job run this before
    the API, which would otherwise never start after a rollback."""
    with sqlite_migration_lock(url) if _names_sqlite(url) else contextlib.nullcontext():
        current = current_revision(url)
        if current is not None and is_newer_than_this_release(current):
            _warn_newer(current, head_revision())
            return
        command.upgrade(alembic_config(url), revision)


def _names_sqlite(url: str) -> bool:
    """Whether to lock; a URL that is no URL is for opening it to refuse in its own words."""
    try:
        return is_sqlite(url)
    except ArgumentError:
        return False


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(url: str) -> str | None:
    engine = create_db_engine(url)
    # Reading the revision is routine (every start); Alembic would log its dialect each time.
    quiet = logging.getLogger("alembic.runtime.migration")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        quiet.setLevel(level)
        engine.dispose()


class SchemaOutOfDate(RuntimeError):
    """The database is not at the migrations' head: an operator must run `conveyor db upgrade`."""


def is_newer_than_this_release(revision: str | None) -> bool:
    """A revision these migrations do not know: a later release's, after a rollback."""
    if revision is None:
        return False
    try:
        return (
            ScriptDirectory.from_config(alembic_config("sqlite://")).get_revision(revision) is None
        )
    except CommandError:
        return True


def _warn_newer(current: str, head: str | None) -> None:
    logger.warning(
        "database schema is at %s, a later release's (this one's is %s): running on it, "
        "as after a rollback; migrations only add, so this release's tables are all there",
        current,
        head,
    )


def require_head(url: str) -> None:
    """The schema is this release's, or a later release's (a rollback: migrations only
    add tables, columns and indexes, so an older release runs on a newer schema); an
    older one stops start-up until `conveyor db upgrade` has run."""
    current, head = current_revision(url), head_revision()
    if current == head:
        return
    if current is not None and is_newer_than_this_release(current):
        _warn_newer(current, head)
        return
    raise SchemaOutOfDate(
        f"database schema is at {current or 'nothing'}, conveyor needs {head}: "
        "run `conveyor db upgrade`"
    )


def prepare_schema(url: str) -> None:
    """On start: SQLite (a local file) is migrated in place; a shared server must already be.

    Upgrading PostgreSQL from every API replica at once would race, so there
    the operator (or the deploy's migrate job) runs `conveyor db upgrade`.
    """
    if is_sqlite(url):
        upgrade(url)  # under the file's migration lock: replicas start together
    else:
        require_head(url)
