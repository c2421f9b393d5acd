"""One JSON object per log record, for a `--log-config-file` that feeds a log shipper.

A `format` string that looks like JSON is not: a message with a quote, a newline or a
traceback breaks the line. Named in the file's formatters as
`{"()": "conveyor.json_log_formatter.JsonLineFormatter"}`, this writes every record,
warnings and tracebacks included, as one valid JSON line.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any


class JsonLineFormatter(logging.Formatter):
    """`time` (UTC, ISO 8601), `level`, `logger`, `message`, `process`, and `exception`
    (the formatted traceback) when the record carries one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)
