"""Data conveyor creates is closed to other users, whatever the umask; the group keeps
what the umask gives it; what exists already is kept as it is."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.cli import CommandLineError, build_parser, role_settings
from conveyor.db.database import create_db_engine
from conveyor.file_storage import LocalFileStorage
from conveyor.private_dir import make_private_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """A shell's usual umask, which alone would leave new data world-readable."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_every_missing_folder_is_closed_to_others(tmp_path: Path) -> None:
    make_private_dir(tmp_path / "a" / "b" / "c")
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o750] * 3


def test_the_group_keeps_what_the_umask_gives_it(tmp_path: Path) -> None:
    os.umask(0o027)  # systemd's units
    make_private_dir(tmp_path / "state")
    assert mode(tmp_path / "state") == 0o750
    os.umask(0o077)
    make_private_dir(tmp_path / "mine")
    assert mode(tmp_path / "mine") == 0o700


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    os.chmod(tmp_path / "shared", 0o755)
    make_private_dir(tmp_path / "shared" / "mine")
    assert mode(tmp_path / "shared") == 0o755
    assert mode(tmp_path / "shared" / "mine") == 0o750


def test_a_file_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    with pytest.raises(FileExistsError):
        make_private_dir(tmp_path / "taken")


def test_the_sqlite_database_and_stored_files_are_closed_to_others(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'db' / 'conveyor.db'}")
    with engine.connect() as connection:
        connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        connection.commit()
    engine.dispose()
    assert mode(tmp_path / "db") == 0o750
    assert mode(tmp_path / "db" / "conveyor.db") == 0o640
    storage = LocalFileStorage(tmp_path / "data" / "files")
    writer = storage.writer("obj-abc")
    writer.write(b"x")
    writer.commit()
    assert mode(tmp_path / "data") == mode(tmp_path / "data" / "files") == 0o750
    assert mode(tmp_path / "data" / "files" / "obj-abc") == 0o640


def test_db_upgrade_leaves_nothing_readable_by_others(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "db", "upgrade", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    made = [data, *data.iterdir()]
    assert data / "conveyor.db" in made
    assert all(mode(path) & 0o007 == 0 for path in made), {p.name: oct(mode(p)) for p in made}


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_a_serving_command_creates_its_data_dir_before_anything_writes(tmp_path: Path) -> None:
    settings = role_settings(parse("api", "--data-dir", str(tmp_path / "data")))
    assert settings.data_dir == tmp_path / "data"
    assert mode(tmp_path / "data") == 0o750


def test_a_data_dir_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    with pytest.raises(CommandLineError, match="cannot create the data dir"):
        role_settings(parse("api", "--data-dir", str(tmp_path / "taken" / "data")))
