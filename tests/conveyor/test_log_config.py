"""--log-config-file: a dictConfig JSON file sets up a process's logging (and reaches
`conveyor serve`'s children); one that cannot stops the command in one line."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.cli import main
from conveyor.launcher import settings_env
from conveyor.log_config import LogConfigError, configure_logging
from conveyor.settings import Settings


@pytest.fixture()
def restored_logging() -> Iterator[None]:
    """dictConfig changes the process's root logger: put it back after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    # An earlier test's configure_logging may have left warnings captured, under a
    # showwarning pytest has since put back: start from neither.
    logging.captureWarnings(False)
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def json_lines_config(path: Path) -> dict[str, object]:
    return {
        "formatters": {"json": {"format": '{"level": "%(levelname)s", "msg": "%(message)s"}'}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(path), "formatter": "json"}
        },
        "root": {"level": "WARNING", "handlers": ["file"]},
    }


def test_the_file_shapes_the_logs_and_keeps_module_loggers(
    tmp_path: Path, restored_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    existing = logging.getLogger("api.reply_router")  # made at import, before the config
    out = tmp_path / "conveyor.jsonl"
    config = tmp_path / "logging.json"
    config.write_text(json.dumps(json_lines_config(out)))
    configure_logging("DEBUG", config)
    existing.warning("kept")
    logging.getLogger("conveyor.x").info("below the file's level")
    # A Python warning (Celery's SecurityWarning under root) is a record like the rest,
    # not a raw stderr line among the JSON.
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("as a record", UserWarning, stacklevel=1)
    for handler in logging.getLogger().handlers:
        handler.flush()
    first, rest = out.read_text().split("\n", 1)
    assert json.loads(first) == {"level": "WARNING", "msg": "kept"}
    assert rest.startswith('{"level": "WARNING", "msg": "') and "UserWarning: as a record" in rest
    # Progress bars (weights loading) would be raw stderr lines: off under a file.
    assert os.environ["TQDM_DISABLE"] == "1"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read it"),
        ("{not json", "not JSON"),
        ("[1]", "expected a dictConfig object"),
        ('{"handlers": {"h": {"class": "no.such.Handler"}}}', "no.such"),
    ],
)
def test_one_that_cannot_configure_is_refused(
    tmp_path: Path, restored_logging: None, content: str | None, says: str
) -> None:
    config = tmp_path / "logging.json"
    if content is not None:
        config.write_text(content)
    with pytest.raises(LogConfigError, match=f"^--log-config-file {config}: .*{says}"):
        configure_logging("INFO", config)


def test_the_command_stops_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    missing = tmp_path / "nope.json"
    assert main(["api", "--log-config-file", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"conveyor: error: --log-config-file {missing}: cannot read it: No such file or directory"
    ]


def test_serve_hands_the_file_to_its_children(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(log_config_file=Path("/etc/conveyor/logging.json"))
    env = settings_env(settings)
    assert env["CONVEYOR_LOG_CONFIG_FILE"] == "/etc/conveyor/logging.json"
    monkeypatch.setenv("CONVEYOR_LOG_CONFIG_FILE", env["CONVEYOR_LOG_CONFIG_FILE"])
    assert Settings().log_config_file == Path("/etc/conveyor/logging.json")
