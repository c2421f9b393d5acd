"""JsonLineFormatter: every record one valid JSON line, whatever its message holds."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from conveyor.json_log_formatter import JsonLineFormatter


def test_quotes_newlines_and_tracebacks_stay_one_json_line(tmp_path: Path) -> None:
    out = tmp_path / "log.jsonl"
    handler = logging.FileHandler(out)
    handler.setFormatter(JsonLineFormatter())
    logger = logging.getLogger("conveyor.test_json_lines")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning('a "quoted"\nmessage with %s', "ünïcode")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        handler.close()
    first, second = (json.loads(line) for line in out.read_text().splitlines())
    assert first["message"] == 'a "quoted"\nmessage with ünïcode'
    assert (first["level"], first["logger"]) == ("WARNING", "conveyor.test_json_lines")
    assert first["time"].endswith("+00:00") and "exception" not in first
    assert second["message"] == "failed" and "ValueError: boom" in second["exception"]
