"""How each conveyor process sets up logging: `--log-level`'s plain lines, or vLLM's
--log-config-file, a `logging.config.dictConfig` JSON file (JSON lines for a log
shipper, a file handler, per-logger levels).

Why a file rather than more flags: operators already have one for their log pipeline,
and `conveyor serve` hands its path to every child (API, workers, batch worker), so one
file shapes the whole tree's logs, uvicorn's loggers included.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
from pathlib import Path

LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogConfigError(ValueError):
    """A --log-config-file that cannot configure logging; said in one line."""


def configure_logging(level: str, config_file: Path | None) -> None:
    """The file's configuration when one is given (its levels rule; `level` is not
    applied over them), else plain lines at `level`. Python warnings (Celery's
    SecurityWarning, deprecations) become log records too, so they reach the same
    handlers in the same format instead of raw stderr."""
    logging.captureWarnings(True)
    if config_file is None:
        logging.basicConfig(level=level, format=LINE_FORMAT)
        return
    # Progress bars (loading and converting weights) are no log records either: a
    # shipper reading the file's lines would meet them raw on stderr.
    os.environ.setdefault("TQDM_DISABLE", "1")
    flag = f"--log-config-file {config_file}"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LogConfigError(f"{flag}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise LogConfigError(f"{flag}: not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise LogConfigError(f"{flag}: expected a dictConfig object, got {type(config).__name__}")
    config.setdefault("version", 1)
    # Module loggers exist before this runs (imports): keep them unless the file says.
    config.setdefault("disable_existing_loggers", False)
    try:
        logging.config.dictConfig(config)
    except (ValueError, TypeError, AttributeError, ImportError) as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""  # dictConfig wraps the reason
        raise LogConfigError(f"{flag}: {exc}{cause}") from None
