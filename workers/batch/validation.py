"""Check a batch input file the way OpenAI does, before any line runs.

Every line must be a JSON object `{custom_id, method: "POST", url, body}`
with a unique custom_id, the batch's endpoint as url, and one model across
the file; at most `max_lines` lines. Any violation fails the whole batch
with errors that name the line, so a user fixes the file once instead of
discovering problems line by line in the error file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from conveyor.strict_json import strict_json_loads

MAX_ERRORS = 100  # enough to fix a file; a 50,000-line file of errors need not be echoed
# What the SQL columns hold (batch_results.custom_id, batches.model). A longer value, or a NUL
# (which PostgreSQL text refuses), would fail the worker's INSERT on every run, forever.
CUSTOM_ID_MAX_CHARS = 512
MODEL_MAX_CHARS = 200


@dataclass(frozen=True)
class BatchLine:
    line: int  # 1-based, as errors and editors count
    custom_id: str
    url: str
    body: dict[str, Any]


@dataclass(frozen=True)
class LineError:
    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True)
class Validated:
    lines: list[BatchLine]
    model: str | None
    errors: list[LineError]


def validate_lines(raw_lines: Iterable[bytes], *, endpoint: str, max_lines: int) -> Validated:
    lines: list[BatchLine] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    model: str | None = None
    count = 0

    def fail(code: str, message: str, line: int | None, param: str | None = None) -> None:
        if len(errors) < MAX_ERRORS:
            errors.append(LineError(code, message, line, param))

    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        count += 1
        if count > max_lines:
            fail(
                "too_many_requests",
                f"a batch may have at most {max_lines} requests; this file has more",
                number,
            )
            break
        try:
            # NaN, Infinity and 1e400 refused: the line, sent on, could not be written
            # out again (the batch then stopped and was re-run, for ever).
            item = strict_json_loads(raw)
        except UnicodeDecodeError:
            fail("invalid_json_line", f"line {number} is not UTF-8 text", number)
            continue
        except json.JSONDecodeError as exc:
            fail("invalid_json_line", f"line {number} is not valid JSON: {_where(exc)}", number)
            continue
        except ValueError as exc:  # NaN, Infinity, 1e400
            fail("invalid_json_line", f"line {number} is not valid JSON: {exc}", number)
            continue
        if not isinstance(item, dict):
            fail("invalid_json_line", f"line {number} must be a JSON object", number)
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            fail(
                "missing_required_parameter",
                "custom_id must be a non-empty string",
                number,
                "custom_id",
            )
            continue
        if len(custom_id) > CUSTOM_ID_MAX_CHARS or "\x00" in custom_id:
            fail(
                "invalid_value",
                f"custom_id must be at most {CUSTOM_ID_MAX_CHARS} characters, without NUL",
                number,
                "custom_id",
            )
            continue
        if custom_id in seen:
            fail(
                "duplicate_custom_id",
                f"custom_id {custom_id!r} is used more than once",
                number,
                "custom_id",
            )
            continue
        seen.add(custom_id)
        if item.get("method") != "POST":
            fail("invalid_method", "method must be POST", number, "method")
            continue
        url = item.get("url")
        if url != endpoint:
            fail(
                "invalid_url",
                f"url is {url!r}, but this batch's endpoint is {endpoint!r}",
                number,
                "url",
            )
            continue
        body = item.get("body")
        if not isinstance(body, dict):
            fail("missing_required_parameter", "body must be a JSON object", number, "body")
            continue
        line_model = body.get("model")
        if not isinstance(line_model, str) or not line_model:
            fail("missing_required_parameter", "body.model must be a string", number, "body.model")
            continue
        if len(line_model) > MODEL_MAX_CHARS or "\x00" in line_model:
            fail(
                "invalid_value",
                f"body.model must be at most {MODEL_MAX_CHARS} characters, without NUL",
                number,
                "body.model",
            )
            continue
        if model is None:
            model = line_model
        elif line_model != model:
            fail(
                "mismatched_model",
                f"a batch uses one model: line {number} asks for {line_model!r}, "
                f"earlier lines for {model!r}",
                number,
                "body.model",
            )
            continue
        if body.get("stream"):
            fail("invalid_value", "streaming is not available in a batch", number, "body.stream")
            continue
        if body.get("background"):  # its answer would be a queued stub, the text elsewhere
            fail(
                "invalid_value",
                "background responses are not available in a batch: the line's answer is "
                "its output line",
                number,
                "body.background",
            )
            continue
        lines.append(BatchLine(number, custom_id, url, body))
    if count == 0:
        errors.append(LineError("empty_file", "the input file has no requests"))
    return Validated(lines=lines if not errors else [], model=model, errors=errors)


def _where(exc: json.JSONDecodeError) -> str:
    """The parser's complaint placed in the file's line; its own "line 2 column 1" counts
    lines within this one (the newline that ends it is a second one)."""
    if exc.pos >= len(exc.doc.rstrip()):
        return f"{exc.msg} at the end of the line"
    return f"{exc.msg} at character {exc.pos + 1}"
