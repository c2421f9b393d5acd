"""The completions usage report, on SQLite and PostgreSQL, against rows written straight to SQL.

Expected values come from a plain-Python reference over the same rows, so each
test states which rows count rather than re-deriving SQL arithmetic by hand.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any

import pytest

from conveyor.db.database import Database
from conveyor.db.request_log import RequestLog
from conveyor.db.usage import (
    COMPLETIONS,
    EMBEDDINGS,
    UsageQuery,
    UsageQueryError,
    completions_usage,
    usage_report,
)

DAY = 86_400
HOUR = 3_600
T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC, a midnight
assert T0 % DAY == 0

RESULT_KEYS = [
    "object",
    "input_tokens",
    "output_tokens",
    "input_cached_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "num_model_requests",
    "project_id",
    "user_id",
    "api_key_id",
    "model",
    "batch",
]


@dataclass(frozen=True)
class Row:
    created_at: int
    prompt_tokens: int = 10
    completion_tokens: int = 5
    cached_tokens: int = 0
    project_id: str | None = "proj_a"
    api_key_id: str | None = "key_a"
    model: str | None = "m1"
    batch_id: str | None = None
    endpoint: str = "/v1/chat/completions"
    status_code: int = 200


_ids = itertools.count()


def insert(db: Database, *rows: Row) -> None:
    with db.session() as session:
        session.add_all(RequestLog(request_id=f"req-{next(_ids)}", **row.__dict__) for row in rows)


def usage(db: Database, query: UsageQuery, now: int | None = None) -> dict[str, Any]:
    with db.session() as session:
        return completions_usage(session, query, now=now)


def expected_results(
    rows: list[Row], start: int, end: int, group_by: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """The reference: billed completions rows in [start, end), summed per group in Python."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        if not start <= row.created_at < end or row.status_code != 200:
            continue
        if row.endpoint not in COMPLETIONS.endpoints:
            continue
        values = {
            "project_id": row.project_id,
            "api_key_id": row.api_key_id,
            "model": row.model,
            "batch": row.batch_id is not None,
        }
        groups.setdefault(tuple(values[f] for f in group_by), []).append(row)
    results = []
    for key in sorted(groups, key=lambda k: tuple((v is None, str(v)) for v in k)):
        members = groups[key]
        named = dict(zip(group_by, key, strict=True))
        results.append(
            {
                "object": "organization.usage.completions.result",
                "input_tokens": sum(r.prompt_tokens for r in members),
                "output_tokens": sum(r.completion_tokens for r in members),
                "input_cached_tokens": sum(r.cached_tokens for r in members),
                "input_audio_tokens": 0,
                "output_audio_tokens": 0,
                "num_model_requests": len(members),
                "project_id": named.get("project_id"),
                "user_id": None,
                "api_key_id": named.get("api_key_id"),
                "model": named.get("model"),
                "batch": named.get("batch"),
            }
        )
    return results


def assert_page_matches(page: dict[str, Any], rows: list[Row], group_by: tuple[str, ...]) -> None:
    for bucket in page["data"]:
        assert bucket["results"] == expected_results(
            rows, bucket["start_time"], bucket["end_time"], group_by
        ), bucket


# A mixed workload over three days: two projects, keys, models, batch and direct, some nulls.
MIXED = [
    Row(T0 + 10, 100, 20, 40),
    Row(T0 + 20, 7, 3, 0, model="m2"),
    Row(T0 + HOUR, 50, 50, 10, api_key_id="key_b"),
    Row(T0 + 2 * HOUR, 30, 1, 0, project_id="proj_b", api_key_id="key_c", batch_id="batch_1"),
    Row(T0 + 2 * HOUR + 5, 31, 2, 0, project_id="proj_b", api_key_id="key_c", batch_id="batch_1"),
    Row(T0 + DAY - 1, 1, 1, 1, project_id=None, api_key_id=None),
    Row(T0 + DAY, 1000, 0, 0, model="m2", batch_id="batch_2"),
    Row(
        T0 + 2 * DAY + 5,
        9,
        9,
        9,
        project_id="proj_b",
        api_key_id="key_c",
        endpoint="/v1/completions",
    ),
    Row(T0 + 2 * DAY + 6, 4, 4, 0, model=None),
]


def test_daily_buckets_sum_tokens_in_openai_shape(db: Database) -> None:
    insert(db, *MIXED)
    page = usage(db, UsageQuery(start_time=T0, end_time=T0 + 3 * DAY))

    assert page["object"] == "page"
    assert page["has_more"] is False
    assert page["next_page"] is None
    assert [(b["object"], b["start_time"], b["end_time"]) for b in page["data"]] == [
        ("bucket", T0, T0 + DAY),
        ("bucket", T0 + DAY, T0 + 2 * DAY),
        ("bucket", T0 + 2 * DAY, T0 + 3 * DAY),
    ]
    first = page["data"][0]["results"]
    assert len(first) == 1
    assert list(first[0]) == RESULT_KEYS
    assert first[0] == {
        "object": "organization.usage.completions.result",
        "input_tokens": 100 + 7 + 50 + 30 + 31 + 1,
        "output_tokens": 20 + 3 + 50 + 1 + 2 + 1,
        "input_cached_tokens": 40 + 10 + 1,
        "input_audio_tokens": 0,
        "output_audio_tokens": 0,
        "num_model_requests": 6,
        "project_id": None,
        "user_id": None,
        "api_key_id": None,
        "model": None,
        "batch": None,
    }
    assert_page_matches(page, MIXED, ())


def test_empty_buckets_are_listed_with_no_results(db: Database) -> None:
    insert(db, Row(T0 + 5), Row(T0 + 3 * DAY + 5))
    page = usage(db, UsageQuery(start_time=T0, end_time=T0 + 4 * DAY))
    assert [len(b["results"]) for b in page["data"]] == [1, 0, 0, 1]


def test_edges_sit_on_utc_multiples_first_and_last_bucket_partial(db: Database) -> None:
    start, end = T0 + 3 * HOUR + 1800, T0 + 6 * HOUR + 600
    rows = [
        Row(start - 1, 1),  # before the range
        Row(start, 2),
        Row(T0 + 4 * HOUR - 1, 4),
        Row(T0 + 4 * HOUR, 8),  # first second of the next bucket
        Row(end - 1, 16),
        Row(end, 32),  # end_time is exclusive
    ]
    insert(db, *rows)
    page = usage(db, UsageQuery(start_time=start, end_time=end, bucket_width="1h"))
    assert [(b["start_time"], b["end_time"]) for b in page["data"]] == [
        (start, T0 + 4 * HOUR),
        (T0 + 4 * HOUR, T0 + 5 * HOUR),
        (T0 + 5 * HOUR, T0 + 6 * HOUR),
        (T0 + 6 * HOUR, end),
    ]
    assert [[r["input_tokens"] for r in b["results"]] for b in page["data"]] == [
        [2 + 4],
        [8],
        [],
        [16],
    ]


def test_open_ended_query_ends_now(db: Database) -> None:
    insert(db, Row(T0 + 30, 1), Row(T0 + 61, 2), Row(T0 + 90, 4), Row(T0 + 91, 8))
    page = usage(db, UsageQuery(start_time=T0, bucket_width="1m"), now=T0 + 90)
    # The current second is included: a request logged just now already shows.
    assert [(b["start_time"], b["end_time"]) for b in page["data"]] == [
        (T0, T0 + 60),
        (T0 + 60, T0 + 91),
    ]
    assert [[r["input_tokens"] for r in b["results"]] for b in page["data"]] == [[1], [2 + 4]]
    assert page["has_more"] is False


def test_start_in_the_future_gives_an_empty_page(db: Database) -> None:
    page = usage(db, UsageQuery(start_time=T0 + DAY), now=T0 + DAY - 1)
    assert page == {"object": "page", "data": [], "has_more": False, "next_page": None}


def test_only_billed_completion_requests_count(db: Database) -> None:
    rows = [
        Row(T0 + 1, 1),
        Row(T0 + 2, 2, endpoint="/v1/completions"),
        Row(T0 + 3, 4, endpoint="/v1/responses"),
        Row(T0 + 3, 128, endpoint="/v1/messages"),  # Anthropic's Messages API
        Row(T0 + 3, 4, status_code=400),
        Row(T0 + 4, 8, status_code=429),
        Row(T0 + 5, 16, status_code=500),
        Row(T0 + 6, 32, endpoint="/tokenize"),
        Row(T0 + 7, 64, 0, endpoint="/v1/embeddings"),
    ]
    insert(db, *rows)
    (bucket,) = usage(db, UsageQuery(start_time=T0, end_time=T0 + DAY))["data"]
    assert [(r["input_tokens"], r["num_model_requests"]) for r in bucket["results"]] == [(135, 4)]


def test_embeddings_report_counts_embedding_requests_in_openai_shape(db: Database) -> None:
    rows = [
        Row(T0 + 1, 1),  # a chat completion: the other report's
        Row(T0 + 2, 10, 0, endpoint="/v1/embeddings"),
        Row(T0 + 3, 20, 0, endpoint="/v1/embeddings", model="e2", api_key_id="key_b"),
        Row(T0 + 4, 40, 0, endpoint="/v1/embeddings", status_code=400),
        Row(T0 + DAY + 5, 80, 0, endpoint="/v1/embeddings", batch_id="batch_1"),
    ]
    insert(db, *rows)
    query = UsageQuery(start_time=T0, end_time=T0 + 2 * DAY, group_by=("model",))
    with db.session() as session:
        page = usage_report(session, query, EMBEDDINGS)
    first, second = (bucket["results"] for bucket in page["data"])
    # Sorted by the group's value, as the completions report sorts.
    assert first == [
        {
            "object": "organization.usage.embeddings.result",
            "input_tokens": tokens,
            "num_model_requests": 1,
            "project_id": None,
            "user_id": None,
            "api_key_id": None,
            "model": model,
        }
        for model, tokens in (("e2", 20), ("m1", 10))
    ]
    assert [(r["model"], r["input_tokens"]) for r in second] == [("m1", 80)]


def test_embeddings_by_batches_apart_from_direct_requests(db: Database) -> None:
    """Batches embed too; an operator pricing batch work apart reads it apart here."""
    insert(
        db,
        Row(T0 + 1, 10, 0, endpoint="/v1/embeddings"),
        Row(T0 + 2, 20, 0, endpoint="/v1/rerank"),
        Row(T0 + 3, 40, 0, endpoint="/v1/embeddings", batch_id="batch_1"),
        Row(T0 + 4, 80, 0, endpoint="/v1/embeddings", batch_id="batch_2"),
    )

    def results(**fields: object) -> list[dict[str, object]]:
        query = UsageQuery(start_time=T0, end_time=T0 + DAY, **fields)  # type: ignore[arg-type]
        with db.session() as session:
            (bucket,) = usage_report(session, query, EMBEDDINGS)["data"]
        return bucket["results"]

    grouped = results(group_by=("batch",))
    assert [(r["batch"], r["input_tokens"], r["num_model_requests"]) for r in grouped] == [
        (False, 30, 2),
        (True, 120, 2),
    ]
    assert [r["input_tokens"] for r in results(batch=True)] == [120]
    assert [r["input_tokens"] for r in results(batch=False)] == [30]
    # Not grouped by batch: the result keeps OpenAI's embeddings shape, no `batch` field.
    assert "batch" not in results()[0]


@pytest.mark.parametrize(
    "group_by",
    [
        ("model",),
        ("project_id",),
        ("api_key_id",),
        ("batch",),
        ("project_id", "api_key_id"),
        ("model", "batch"),
        ("project_id", "api_key_id", "model", "batch"),
    ],
)
def test_group_by(db: Database, group_by: tuple[str, ...]) -> None:
    insert(db, *MIXED)
    page = usage(db, UsageQuery(start_time=T0, end_time=T0 + 3 * DAY, group_by=group_by))
    assert_page_matches(page, MIXED, group_by)
    for bucket in page["data"]:
        for result in bucket["results"]:
            for field in {"project_id", "api_key_id", "model", "batch"} - set(group_by):
                assert result[field] is None


def test_group_by_model_spelled_out(db: Database) -> None:
    insert(db, *MIXED)
    (day0,) = usage(db, UsageQuery(start_time=T0, end_time=T0 + DAY, group_by=("model",)))["data"]
    assert [(r["model"], r["num_model_requests"], r["input_tokens"]) for r in day0["results"]] == [
        ("m1", 5, 100 + 50 + 30 + 31 + 1),
        ("m2", 1, 7),
    ]
    (day2,) = usage(
        db, UsageQuery(start_time=T0 + 2 * DAY, end_time=T0 + 3 * DAY, group_by=("model",))
    )["data"]
    # A null model is its own group, listed last on every database.
    assert [r["model"] for r in day2["results"]] == ["m1", None]


def test_group_by_batch_reports_booleans(db: Database) -> None:
    insert(db, *MIXED)
    (day0,) = usage(db, UsageQuery(start_time=T0, end_time=T0 + DAY, group_by=("batch",)))["data"]
    assert [(r["batch"], r["num_model_requests"]) for r in day0["results"]] == [
        (False, 4),
        (True, 2),
    ]


@pytest.mark.parametrize(
    ("filters", "keep"),
    [
        ({"project_ids": ("proj_b",)}, lambda r: r.project_id == "proj_b"),
        ({"project_ids": ("proj_a", "proj_b")}, lambda r: r.project_id is not None),
        ({"api_key_ids": ("key_b", "key_c")}, lambda r: r.api_key_id in ("key_b", "key_c")),
        ({"models": ("m2",)}, lambda r: r.model == "m2"),
        ({"batch": True}, lambda r: r.batch_id is not None),
        ({"batch": False}, lambda r: r.batch_id is None),
        (
            {"project_ids": ("proj_a",), "models": ("m1",), "batch": False},
            lambda r: r.project_id == "proj_a" and r.model == "m1" and r.batch_id is None,
        ),
    ],
    ids=["project", "projects", "api_keys", "model", "batch", "direct", "combined"],
)
def test_filters(db: Database, filters: dict[str, Any], keep: Any) -> None:
    insert(db, *MIXED)
    query = UsageQuery(start_time=T0, end_time=T0 + 3 * DAY, group_by=("model",), **filters)
    page = usage(db, query)
    assert_page_matches(page, [r for r in MIXED if keep(r)], ("model",))
    assert any(b["results"] for b in page["data"])


def test_pagination_round_trip(db: Database) -> None:
    rows = [Row(T0 + day * DAY + 7, prompt_tokens=day + 1) for day in range(10)]
    insert(db, *rows)
    query = UsageQuery(start_time=T0 + 12 * HOUR, end_time=T0 + 10 * DAY, limit=3)

    pages = [usage(db, query)]
    while pages[-1]["has_more"]:
        assert pages[-1]["next_page"].startswith("page_")
        pages.append(usage(db, replace(query, page=pages[-1]["next_page"])))

    assert [len(p["data"]) for p in pages] == [3, 3, 3, 1]
    assert pages[-1]["next_page"] is None
    buckets = [b for p in pages for b in p["data"]]
    assert buckets == usage(db, replace(query, limit=31))["data"]
    assert buckets[0]["start_time"] == T0 + 12 * HOUR
    assert all(a["end_time"] == b["start_time"] for a, b in itertools.pairwise(buckets))
    # Day 0's row (T0 + 7) is before start_time; days 1..9 each land in their own bucket.
    assert [r["input_tokens"] for b in buckets for r in b["results"]] == list(range(2, 11))


def test_open_ended_pagination_keeps_its_end_as_time_passes(db: Database) -> None:
    insert(db, Row(T0 + 5), Row(T0 + 3 * HOUR + 5), Row(T0 + 5 * HOUR))
    query = UsageQuery(start_time=T0, bucket_width="1h", limit=2)
    first = usage(db, query, now=T0 + 4 * HOUR + 30)
    assert first["has_more"] is True
    second = usage(db, replace(query, page=first["next_page"]), now=T0 + 9 * HOUR)
    third = usage(db, replace(query, page=second["next_page"]), now=T0 + 9 * HOUR)
    assert [(b["start_time"], b["end_time"]) for b in second["data"] + third["data"]] == [
        (T0 + 2 * HOUR, T0 + 3 * HOUR),
        (T0 + 3 * HOUR, T0 + 4 * HOUR),
        (T0 + 4 * HOUR, T0 + 4 * HOUR + 31),
    ]
    assert third["has_more"] is False
    # The row at 5h happened after the first page's "now": not in this query.
    assert [len(b["results"]) for b in first["data"] + second["data"] + third["data"]] == [
        1,
        0,
        0,
        1,
        0,
    ]


def test_default_and_maximum_limits_follow_openai(db: Database) -> None:
    assert len(usage(db, UsageQuery(start_time=T0, end_time=T0 + 60 * DAY))["data"]) == 7
    hourly = UsageQuery(start_time=T0, end_time=T0 + 60 * DAY, bucket_width="1h")
    assert len(usage(db, hourly)["data"]) == 24
    assert len(usage(db, replace(hourly, limit=168))["data"]) == 168
    minutely = UsageQuery(start_time=T0, end_time=T0 + 60 * DAY, bucket_width="1m")
    assert len(usage(db, minutely)["data"]) == 60
    assert len(usage(db, replace(minutely, limit=1440))["data"]) == 1440


@pytest.mark.parametrize(
    ("query", "param"),
    [
        (UsageQuery(start_time=T0, bucket_width="1w"), "bucket_width"),  # type: ignore[arg-type]
        (UsageQuery(start_time=-1), "start_time"),
        (UsageQuery(start_time=10**19), "start_time"),
        (UsageQuery(start_time=T0, end_time=10**19), "end_time"),
        (UsageQuery(start_time=T0, end_time=T0), "end_time"),
        (UsageQuery(start_time=T0, limit=0), "limit"),
        (UsageQuery(start_time=T0, limit=32), "limit"),
        (UsageQuery(start_time=T0, bucket_width="1h", limit=169), "limit"),
        (UsageQuery(start_time=T0, bucket_width="1m", limit=1441), "limit"),
        (UsageQuery(start_time=T0, group_by=("user_id",)), "group_by"),
        (UsageQuery(start_time=T0, group_by=("model", "colour")), "group_by"),
        (UsageQuery(start_time=T0, page="garbage"), "page"),
        (UsageQuery(start_time=T0, page="page_!!!"), "page"),
        (UsageQuery(start_time=T0, page="page_AAAA"), "page"),
    ],
)
def test_invalid_queries_name_the_parameter(db: Database, query: UsageQuery, param: str) -> None:
    with pytest.raises(UsageQueryError) as excinfo:
        usage(db, query, now=T0 + DAY)
    assert excinfo.value.param == param
    assert isinstance(excinfo.value, ValueError)


def test_cursor_from_another_query_is_rejected(db: Database) -> None:
    query = UsageQuery(start_time=T0, end_time=T0 + 10 * DAY, limit=2)
    cursor = usage(db, query)["next_page"]
    assert cursor is not None
    for other in (
        replace(query, bucket_width="1h", limit=24),
        replace(query, end_time=T0 + 9 * DAY),
        replace(query, start_time=T0 + 5 * DAY),
    ):
        with pytest.raises(UsageQueryError) as excinfo:
            usage(db, replace(other, page=cursor))
        assert excinfo.value.param == "page"
