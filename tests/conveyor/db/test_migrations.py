"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL.

The models are only a description: a column changed in a model but not in a
migration would pass every model-level test and break on a real upgrade.
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from conveyor.db import migrate
from conveyor.db.database import create_db_engine
from conveyor.db.schema import Base

TABLES = {"projects", "api_keys", "request_logs", "files", "batches", "batch_results", "responses"}


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


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
