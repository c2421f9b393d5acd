"""Run Alembic from code: `conveyor db upgrade|downgrade|current` and the SQLite auto-upgrade.

The migration scripts ship inside the `migrations` package, so an installed
conveyor (a container image, a wheel) finds them without an alembic.ini.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import migrations
from conveyor.db.database import create_db_engine, is_sqlite, normalize_url


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # ConfigParser interpolation would eat a password's `%`.
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


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


def require_head(url: str) -> None:
    current, head = current_revision(url), head_revision()
    if current != head:
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
        upgrade(url)
    else:
        require_head(url)
