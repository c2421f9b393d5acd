"""OpenAI's usage reports (`GET /v1/organization/usage/completions` and `.../embeddings`)
from request logs.

Buckets follow what OpenAI's API returns: bucket edges sit on UTC multiples of
the width (minute, hour, midnight), except that the first bucket starts at
`start_time` and the last ends at `end_time` (or just after "now" when it is
omitted), so those two may be partial. Every bucket in range is listed, empty ones with
`results: []`. A page holds at most `limit` buckets; `next_page` is an opaque
cursor that pins the page's position and end, so later pages of an open-ended
query do not drift as time passes.

The sums are computed by the database (one GROUP BY over a bucket index), so
the cost is one indexed range scan of `request_logs`, never a Python loop over
its rows.
"""

from __future__ import annotations

import base64
import binascii
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import BigInteger, ColumnElement, case, func, literal, select
from sqlalchemy.orm import Session

from conveyor.db.request_log import RequestLog

BucketWidth = Literal["1m", "1h", "1d"]

BUCKET_SECONDS: dict[str, int] = {"1m": 60, "1h": 3_600, "1d": 86_400}
# (default, max) buckets per page, as OpenAI documents them.
BUCKET_LIMITS: dict[str, tuple[int, int]] = {"1m": (60, 1_440), "1h": (24, 168), "1d": (7, 31)}
# OpenAI bills a request that produced a response; rejected or failed requests
# (4xx, 5xx, including ones that died in the engine) cost nothing and are left out.
BILLED_STATUS_CODE = 200


@dataclass(frozen=True)
class UsageReport:
    """One of OpenAI's usage endpoints: the request_logs `endpoint` values it covers, what
    it may group by, and the fields of its result objects."""

    endpoints: tuple[str, ...]
    group_by_fields: tuple[str, ...]
    result_object: str
    # Completions report output and cached tokens; embeddings read input only.
    generates: bool


COMPLETIONS = UsageReport(
    # /v1/messages is Anthropic's Messages API: chat completions spelled its way; vLLM's
    # /inference/v1/generate is completions in token ids.
    endpoints=(
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/messages",
        "/inference/v1/generate",
    ),
    group_by_fields=("project_id", "api_key_id", "model", "batch"),
    result_object="organization.usage.completions.result",
    generates=True,
)
EMBEDDINGS = UsageReport(
    # Scoring, reranking, classifying and vLLM's generic /pooling run pooling models too
    # (api/routes/score.py, classify.py, pooling.py): their tokens are embedding work, as
    # OpenAI has no report for them.
    endpoints=(
        "/v1/embeddings",
        "/pooling",
        "/classify",
        "/v1/classify",
        "/score",
        "/v1/score",
        "/rerank",
        "/v1/rerank",
        "/v2/rerank",
    ),
    # `batch` is ours (OpenAI's embeddings report lacks it): batches embed too, and an
    # operator pricing batch work apart must tell it apart here as well.
    group_by_fields=("project_id", "api_key_id", "model", "batch"),
    result_object="organization.usage.embeddings.result",
    generates=False,
)
# 9999-12-31T23:59:59Z: keeps times inside BIGINT and the cursor's 64-bit fields.
MAX_TIME = 253_402_300_799
_CURSOR_PREFIX = "page_"
_CURSOR_FORMAT = ">BIqq"  # version, bucket seconds, next bucket start, end of the query
_CURSOR_VERSION = 1


class UsageQueryError(ValueError):
    """A bad query parameter; `param` names it so the route can answer 400 pointing at it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


@dataclass(frozen=True)
class UsageQuery:
    """The query parameters of OpenAI's usage endpoint that conveyor can answer.

    There are no users, so `user_ids` and grouping by `user_id` do not exist here.
    """

    start_time: int
    end_time: int | None = None
    bucket_width: BucketWidth = "1d"
    group_by: tuple[str, ...] = ()
    project_ids: tuple[str, ...] = ()
    api_key_ids: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    # None: both; True: only requests made by a batch; False: only direct requests.
    batch: bool | None = None
    limit: int | None = None
    page: str | None = None


def completions_usage(
    session: Session, query: UsageQuery, now: int | None = None
) -> dict[str, Any]:
    """One page of OpenAI's completions usage response for `query` (see usage_report)."""
    return usage_report(session, query, COMPLETIONS, now)


def usage_report(
    session: Session, query: UsageQuery, report: UsageReport, now: int | None = None
) -> dict[str, Any]:
    """One page of OpenAI's usage response for `query`.

    Counted: request_logs rows of the report's endpoints created in
    [start_time, end_time) with status 200, i.e. the requests OpenAI would bill
    because a response was produced; rejected and failed ones cost nothing.
    `input_tokens` sums `prompt_tokens`, which (as in OpenAI's usage object)
    already include the cached ones; audio tokens are always 0.
    """
    width, limit, group_by = _validate(query, report)
    if query.end_time is not None:
        end = query.end_time
    else:
        # Up to and including the current second: rows logged at `now` already count.
        end = int(time.time() if now is None else now) + 1
    first = query.start_time
    if query.page is not None:
        first, end = _decode_cursor(query, width, end)

    buckets = _bucket_bounds(first, end, width, limit)
    has_more = bool(buckets) and buckets[-1][1] < end
    results: dict[int, list[dict[str, Any]]] = {}
    if buckets:
        results = _aggregate(session, query, report, group_by, width, buckets[0][0], buckets[-1][1])
    return {
        "object": "page",
        "data": [
            {
                "object": "bucket",
                "start_time": start,
                "end_time": stop,
                "results": results.get(index, []),
            }
            for index, (start, stop) in enumerate(buckets)
        ],
        "has_more": has_more,
        "next_page": _encode_cursor(width, buckets[-1][1], end) if has_more else None,
    }


def _validate(query: UsageQuery, report: UsageReport) -> tuple[int, int, tuple[str, ...]]:
    if query.bucket_width not in BUCKET_SECONDS:
        raise UsageQueryError(
            "bucket_width", f"bucket_width must be one of {', '.join(BUCKET_SECONDS)}"
        )
    width = BUCKET_SECONDS[query.bucket_width]
    if not 0 <= query.start_time <= MAX_TIME:
        raise UsageQueryError("start_time", "start_time must be a Unix time in seconds")
    if query.end_time is not None:
        if not 0 <= query.end_time <= MAX_TIME:
            raise UsageQueryError("end_time", "end_time must be a Unix time in seconds")
        if query.end_time <= query.start_time:
            raise UsageQueryError("end_time", "end_time must be later than start_time")
    default, maximum = BUCKET_LIMITS[query.bucket_width]
    limit = default if query.limit is None else query.limit
    if not 1 <= limit <= maximum:
        raise UsageQueryError(
            "limit", f"limit must be between 1 and {maximum} for bucket_width={query.bucket_width}"
        )
    group_by: list[str] = []
    for field in query.group_by:
        if field not in report.group_by_fields:
            raise UsageQueryError(
                "group_by",
                f"cannot group by {field!r}: supported fields are "
                f"{', '.join(report.group_by_fields)}",
            )
        if field not in group_by:
            group_by.append(field)
    return width, limit, tuple(group_by)


def _bucket_bounds(first: int, end: int, width: int, limit: int) -> list[tuple[int, int]]:
    """Up to `limit` buckets from `first`: edges on UTC multiples of `width`, clipped to `end`."""
    bounds: list[tuple[int, int]] = []
    start = first
    while start < end and len(bounds) < limit:
        stop = min(end, (start // width + 1) * width)
        bounds.append((start, stop))
        start = stop
    return bounds


def _aggregate(
    session: Session,
    query: UsageQuery,
    report: UsageReport,
    group_by: tuple[str, ...],
    width: int,
    first: int,
    stop: int,
) -> dict[int, list[dict[str, Any]]]:
    """Sum the page's rows per (bucket index, group) in one SQL query."""
    origin = first // width * width
    # Integer division of non-negative BIGINTs truncates on both SQLite and PostgreSQL;
    # rows before `first` are filtered out, so the index is never negative.
    bucket = (RequestLog.created_at - literal(origin, BigInteger)) // literal(width, BigInteger)
    group_columns: dict[str, ColumnElement[Any]] = {
        "project_id": RequestLog.project_id,
        "api_key_id": RequestLog.api_key_id,
        "model": RequestLog.model,
        "batch": case((RequestLog.batch_id.is_not(None), 1), else_=0),
    }
    conditions: list[ColumnElement[bool]] = [
        RequestLog.created_at >= first,
        RequestLog.created_at < stop,
        RequestLog.status_code == BILLED_STATUS_CODE,
        RequestLog.endpoint.in_(report.endpoints),
    ]
    if query.project_ids:
        conditions.append(RequestLog.project_id.in_(query.project_ids))
    if query.api_key_ids:
        conditions.append(RequestLog.api_key_id.in_(query.api_key_ids))
    if query.models:
        conditions.append(RequestLog.model.in_(query.models))
    if query.batch is True:
        conditions.append(RequestLog.batch_id.is_not(None))
    elif query.batch is False:
        conditions.append(RequestLog.batch_id.is_(None))

    # The bucket expression is computed in a subquery and grouped by name outside: PostgreSQL
    # will not match a GROUP BY expression whose bound parameters differ from the SELECT's.
    rows = (
        select(
            bucket.label("bucket"),
            *(group_columns[field].label(field) for field in group_by),
            RequestLog.prompt_tokens,
            RequestLog.completion_tokens,
            RequestLog.cached_tokens,
        )
        .where(*conditions)
        .subquery()
    )
    keys = [rows.c.bucket, *(rows.c[field] for field in group_by)]
    statement = select(
        *keys,
        func.sum(rows.c.prompt_tokens),
        func.sum(rows.c.completion_tokens),
        func.sum(rows.c.cached_tokens),
        func.count(),
    ).group_by(*keys)

    results: dict[int, list[dict[str, Any]]] = {}
    for row in session.execute(statement):
        index, *groups = row[: 1 + len(group_by)]
        input_tokens, output_tokens, cached_tokens, requests = row[1 + len(group_by) :]
        values = dict(zip(group_by, groups, strict=True))
        if "batch" in values:
            values["batch"] = bool(values["batch"])
        result: dict[str, Any] = {
            "object": report.result_object,
            "input_tokens": int(input_tokens or 0),
        }
        if report.generates:
            result |= {
                "output_tokens": int(output_tokens or 0),
                "input_cached_tokens": int(cached_tokens or 0),
                "input_audio_tokens": 0,
                "output_audio_tokens": 0,
            }
        result |= {
            "num_model_requests": int(requests),
            "project_id": values.get("project_id"),
            "user_id": None,
            "api_key_id": values.get("api_key_id"),
            "model": values.get("model"),
        }
        if report.generates or "batch" in group_by:
            result["batch"] = values.get("batch")
        results.setdefault(int(index), []).append(result)
    for bucket_results in results.values():
        # Databases disagree on where NULL sorts; order here so both answer alike.
        bucket_results.sort(key=lambda result: _sort_key(result, group_by))
    return results


def _sort_key(result: dict[str, Any], group_by: Sequence[str]) -> tuple[tuple[bool, str], ...]:
    """Group values ascending (False before True), nulls last."""
    return tuple((result[f] is None, "" if result[f] is None else str(result[f])) for f in group_by)


def _encode_cursor(width: int, next_start: int, end: int) -> str:
    packed = struct.pack(_CURSOR_FORMAT, _CURSOR_VERSION, width, next_start, end)
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(packed).decode("ascii")


def _decode_cursor(query: UsageQuery, width: int, end: int) -> tuple[int, int]:
    """(next bucket start, end) from `query.page`, checked against the rest of the query."""
    page = query.page or ""
    try:
        if not page.startswith(_CURSOR_PREFIX):
            raise ValueError
        packed = base64.urlsafe_b64decode(page.removeprefix(_CURSOR_PREFIX).encode("ascii"))
        version, cursor_width, next_start, cursor_end = struct.unpack(_CURSOR_FORMAT, packed)
    except (ValueError, UnicodeEncodeError, binascii.Error, struct.error):
        raise UsageQueryError("page", "page is not a cursor this API returned") from None
    if version != _CURSOR_VERSION or cursor_width != width:
        raise UsageQueryError("page", "page belongs to a query with a different bucket_width")
    if query.end_time is not None and cursor_end != end:
        raise UsageQueryError("page", "page belongs to a query with a different end_time")
    if not (query.start_time < next_start < cursor_end and next_start % width == 0):
        raise UsageQueryError("page", "page belongs to a query with a different start_time")
    return next_start, cursor_end
