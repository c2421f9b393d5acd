from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from conveyor.json_flag import read_json_flag
from conveyor.settings import Settings


def test_json_is_read_and_anything_else_names_the_flag() -> None:
    assert read_json_flag("--x-config", '{"a": [1]}') == {"a": [1]}
    with pytest.raises(ValueError, match=r"^--x-config is not JSON: Expecting value"):
        read_json_flag("--x-config", "disk")


@pytest.mark.parametrize(
    "field,flag",
    [
        ("weight_transfer_config", "--weight-transfer-config"),
        ("profiler_config", "--profiler-config"),
        ("structured_outputs_config", "--structured-outputs-config"),
    ],
)
def test_a_config_flag_that_is_not_json_is_named(
    field: str, flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pydantic cuts its echo of the settings short: with a long data folder before it,
    the field's name fell out of the message, which named nothing else."""
    monkeypatch.setenv("CONVEYOR_DATA_DIR", str(tmp_path / ("long-folder-name-" * 4)))
    with pytest.raises(ValidationError, match=f"{flag} is not JSON"):
        Settings(**{field: "disk"})
