"""The batch worker's Celery command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery.bin.celery import celery as celery_command

from conveyor.settings import Settings
from workers.batch.main import worker_argv


@pytest.mark.parametrize("log_config", [False, True])
def test_celery_reads_the_command_line_and_a_log_config_file_quiets_its_banner(
    tmp_path: Path, log_config: bool
) -> None:
    """The banner is no log record: among JSON lines for a shipper it would not parse."""
    config = tmp_path / "logging.json" if log_config else None
    argv = worker_argv(Settings(data_dir=tmp_path, log_config_file=config), "INFO")
    assert ("--quiet" in argv) is log_config
    # Celery's own parser takes it (a misplaced option stopped every batch worker).
    context = celery_command.make_context("celery", list(argv), resilient_parsing=True)
    assert context.params["quiet"] is log_config
