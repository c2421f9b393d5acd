"""Usage as rows for billing: every bucket of a usage report, flattened, as JSON or CSV.

The admin API answers OpenAI's paged shape (buckets of results, a cursor); an
operator closing a month wants one table instead: a row per bucket and group, with the
bucket's bounds on each row and the project's name beside its id. `conveyor usage`
prints these.
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from conveyor.db.project import Project
from conveyor.db.usage import UsageQuery, UsageReport, usage_report

# CSV columns in order; a report's rows have a subset (embeddings have no output tokens).
COLUMNS = (
    "start_time",
    "end_time",
    "start",
    "end",
    "project_id",
    "project_name",
    "api_key_id",
    "model",
    "batch",
    "input_tokens",
    "input_cached_tokens",
    "output_tokens",
    "num_model_requests",
)
_DROPPED = frozenset({"object", "user_id", "input_audio_tokens", "output_audio_tokens"})
_GROUP_FIELDS = frozenset({"project_id", "api_key_id", "model", "batch"})


def usage_rows(session: Session, query: UsageQuery, report: UsageReport) -> list[dict[str, Any]]:
    """Every non-empty (bucket, group) of the report, all pages, oldest bucket first.

    Raises UsageQueryError for a bad query, as the report does."""
    rows: list[dict[str, Any]] = []
    page: str | None = None
    while True:
        answer = usage_report(session, replace(query, page=page), report)
        for bucket in answer["data"]:
            bounds = {
                "start_time": bucket["start_time"],
                "end_time": bucket["end_time"],
                "start": _iso(bucket["start_time"]),
                "end": _iso(bucket["end_time"]),
            }
            for result in bucket["results"]:
                # Group fields the query did not group by are null on every row: left out.
                dropped = _DROPPED | (_GROUP_FIELDS - set(query.group_by))
                rows.append(bounds | {k: v for k, v in result.items() if k not in dropped})
        page = answer["next_page"]
        if page is None:
            break
    if "project_id" in query.group_by:
        names = _project_names(session, {row["project_id"] for row in rows} - {None})
        for row in rows:
            row["project_name"] = names.get(row["project_id"])
    return rows


def csv_columns(query: UsageQuery, report: UsageReport) -> list[str]:
    """A report's CSV columns, fixed by the query, not by the rows, so a billing import
    reads the same header on a day with no usage as on any other."""
    present = {"start_time", "end_time", "start", "end", "input_tokens", "num_model_requests"}
    present |= set(query.group_by) & _GROUP_FIELDS
    if "project_id" in query.group_by:
        present.add("project_name")
    if report.generates:
        present |= {"input_cached_tokens", "output_tokens"}
    return [column for column in COLUMNS if column in present]


def rows_as_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The rows as CSV under `columns` (`csv_columns`), the header first."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return out.getvalue()


def _cell(value: Any) -> Any:
    """JSON's spelling of a boolean (`batch`), as the JSON report has it, not Python's."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _project_names(session: Session, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    found = session.execute(select(Project.id, Project.name).where(Project.id.in_(ids)))
    return {project_id: name for project_id, name in found}
