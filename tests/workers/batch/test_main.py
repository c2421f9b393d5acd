"""The batch worker's Celery command line."""

from __future__ import annotations

from pathlib import Path

from conveyor.settings import Settings
from workers.batch.main import worker_argv


def test_a_log_config_file_quiets_celerys_banner(tmp_path: Path) -> None:
    """The banner is no log record: among JSON lines for a shipper it would not parse."""
    plain = Settings(data_dir=tmp_path)
    shipped = Settings(data_dir=tmp_path, log_config_file=tmp_path / "logging.json")
    assert "--quiet" not in worker_argv(plain, "INFO")
    assert "--quiet" in worker_argv(shipped, "INFO")
    assert "--pool=threads" in worker_argv(shipped, "INFO")
