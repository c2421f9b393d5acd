"""Data folders conveyor creates are owner-only, whatever the umask; existing ones are kept."""

from __future__ import annotations

import argparse
import os
import stat
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
    """A shell's usual umask, which alone would leave new folders world-readable."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_every_missing_folder_is_created_owner_only(tmp_path: Path) -> None:
    make_private_dir(tmp_path / "a" / "b" / "c")
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir(mode=0o755)
    os.chmod(tmp_path / "shared", 0o755)
    make_private_dir(tmp_path / "shared" / "mine")
    assert mode(tmp_path / "shared") == 0o755
    assert mode(tmp_path / "shared" / "mine") == 0o700


def test_a_file_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    with pytest.raises(FileExistsError):
        make_private_dir(tmp_path / "taken")


def test_the_sqlite_folder_and_file_storage_are_created_owner_only(tmp_path: Path) -> None:
    create_db_engine(f"sqlite:///{tmp_path / 'db' / 'conveyor.db'}").dispose()
    assert mode(tmp_path / "db") == 0o700
    storage = LocalFileStorage(tmp_path / "data" / "files")
    writer = storage.writer("file-abc")
    writer.write(b"x")
    writer.commit()
    assert mode(tmp_path / "data") == mode(tmp_path / "data" / "files") == 0o700


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_a_serving_command_creates_its_data_dir_before_anything_writes(tmp_path: Path) -> None:
    settings = role_settings(parse("api", "--data-dir", str(tmp_path / "data")))
    assert settings.data_dir == tmp_path / "data"
    assert mode(tmp_path / "data") == 0o700


def test_a_data_dir_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    with pytest.raises(CommandLineError, match="cannot create the data dir"):
        role_settings(parse("api", "--data-dir", str(tmp_path / "taken" / "data")))
