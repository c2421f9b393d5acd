"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL.

The models are only a description: a column changed in a model but not in a
migration would pass every model-level test and break on a real upgrade.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import re
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect as inspect_schema
from sqlalchemy import text
from sqlalchemy.engine import Engine

from conveyor.cli import main
from conveyor.db import migrate
from conveyor.db.database import create_db_engine
from conveyor.db.schema import Base
from migrations import versions

TABLES = {"projects", "api_keys", "request_logs", "files", "batches", "batch_results", "responses"}


def _tables(engine: Engine) -> set[str]:
    return set(inspect_schema(engine).get_table_names())


def _schema_diff(url: str) -> list[object]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_upgrade_empty_database_to_head(database_url: str) -> None:
    assert migrate.current_revision(database_url) is None
    migrate.upgrade(database_url)
    head = migrate.head_revision()
    assert head is not None
    assert migrate.current_revision(database_url) == head
    engine = create_db_engine(database_url)
    try:
        assert _tables(engine) == TABLES | {"alembic_version"}
    finally:
        engine.dispose()


def test_migrated_schema_matches_models(migrated_database_url: str) -> None:
    assert _schema_diff(migrated_database_url) == []


def test_downgrade_to_base_removes_everything_and_upgrades_again(
    migrated_database_url: str,
) -> None:
    migrate.downgrade(migrated_database_url, "base")
    assert migrate.current_revision(migrated_database_url) is None
    engine = create_db_engine(migrated_database_url)
    try:
        assert _tables(engine) <= {"alembic_version"}
    finally:
        engine.dispose()

    migrate.upgrade(migrated_database_url)
    assert migrate.current_revision(migrated_database_url) == migrate.head_revision()
    assert _schema_diff(migrated_database_url) == []


def test_an_older_release_runs_on_a_later_releases_schema(
    migrated_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A rollback (helm rollback, an old pod mid-upgrade) meets a schema a later release
    migrated: it starts, warning, on both backends. A schema older than this release's
    still stops a PostgreSQL start until `conveyor db upgrade`."""
    engine = create_db_engine(migrated_database_url)
    try:
        with engine.begin() as connection:  # what a later release's migration would do
            connection.execute(text("ALTER TABLE files ADD COLUMN later_release_note TEXT"))
            connection.execute(text("UPDATE alembic_version SET version_num = '0099_later'"))
    finally:
        engine.dispose()
    assert migrate.is_newer_than_this_release("0099_later")
    assert not migrate.is_newer_than_this_release(migrate.head_revision())
    with caplog.at_level(logging.WARNING, logger="conveyor.db.migrate"):
        migrate.prepare_schema(migrated_database_url)
        migrate.require_head(migrated_database_url)
        # `conveyor db upgrade` (compose's migrate service, the chart's pre-upgrade Job)
        # runs before the API: it must not fail the rollback either.
        assert main(["db", "upgrade", "--database-url", migrated_database_url]) == 0
    assert "0099_later" in caplog.text and "rollback" in caplog.text
    assert migrate.current_revision(migrated_database_url) == "0099_later"  # left as it was


def test_a_schema_behind_this_release_is_refused_on_a_server(postgres_server: Any) -> None:
    url = postgres_server.create_database()
    try:
        migrate.upgrade(url, "0004")
        with pytest.raises(migrate.SchemaOutOfDate, match="run `conveyor db upgrade`"):
            migrate.prepare_schema(url)
    finally:
        postgres_server.drop_database(url)


def test_migrations_only_add() -> None:
    """What lets an older release run on a later schema (above): no upgrade drops,
    renames or changes a column or table, and a column added to an existing table is
    nullable (an older release's inserts leave it out)."""
    for module in pkgutil.iter_modules(versions.__path__):
        upgrade = importlib.import_module(f"{versions.__name__}.{module.name}").upgrade
        source = inspect.getsource(upgrade)
        for forbidden in ("drop_table", "drop_column", "alter_column", "rename"):
            assert forbidden not in source, (module.name, forbidden)
        for added in re.findall(r"add_column\((.*?)\)\n", source, re.S):
            assert "nullable=False" not in added, (module.name, added)
