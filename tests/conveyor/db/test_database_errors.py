"""One line per database mistake, in the same words for `conveyor serve` and the
operator commands."""

from __future__ import annotations

import logging
from pathlib import Path

from conveyor.db.database import DatabaseUrlError
from conveyor.db.database_errors import describe, schema_ready_at_start
from conveyor.db.migrate import SchemaOutOfDate

POSTGRES_URL = "postgresql+psycopg://conveyor:secret@127.0.0.1:1/conveyor"


def test_a_connection_problem_names_the_database_with_its_password_hidden() -> None:
    line = describe(POSTGRES_URL, DatabaseUrlError("no driver for 'mysql'"))
    assert line == (
        "database postgresql+psycopg://conveyor:***@127.0.0.1:1/conveyor: no driver for 'mysql'"
    )


def test_a_schema_problem_says_so_on_its_own() -> None:
    error = SchemaOutOfDate("the database is at revision a\nrun conveyor db upgrade")
    line = describe(POSTGRES_URL, error)
    assert line == "the database is at revision a; run conveyor db upgrade"


def test_serve_logs_the_same_line_the_operator_commands_print(tmp_path: Path, caplog) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    url = f"sqlite:///{tmp_path}/a-file/conveyor.db"
    with caplog.at_level(logging.ERROR, logger="conveyor.db.database_errors"):
        assert not schema_ready_at_start(url)
    [record] = caplog.records
    assert record.getMessage() == (f"database {url}: {tmp_path}/a-file is a file, not a folder")
