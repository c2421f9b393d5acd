"""`conveyor bench batch` without a server: its flags, its batch file, its lines and their math."""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks.batch_interference import (
    BatchProgress,
    _parse_args,
    batch_jsonl,
    phase_invalid_reason,
    phase_line,
    short_prompt,
    summarize,
)
from benchmarks.serve import RequestResult
from conveyor.cli import build_parser


def test_defaults() -> None:
    args = _parse_args([])
    assert args.url is None
    assert (args.num_requests, args.concurrency, args.max_tokens) == (20, 1, 32)
    assert (args.batch_lines, args.batch_max_tokens, args.min_batch_lines) == (500, 32, 5)


def test_flags() -> None:
    args = _parse_args(
        ["--url", "http://h:1/v1", "--batch-lines", "300", "--concurrency", "4", "--json-out", "x"]
    )
    assert (args.url, args.batch_lines, args.concurrency) == ("http://h:1/v1", 300, 4)
    assert str(args.json_out) == "x"


@pytest.mark.parametrize(
    "argv",
    [
        ["--num-requests", "0"],
        ["--concurrency", "-1"],
        ["--batch-lines", "many"],
        ["--batch-lines", "5", "--min-batch-lines", "5"],
        ["--min-batch-lines", "-1"],
        ["--url", "http://h:1/v1", "--device", "cpu"],
    ],
)
def test_bad_flags_exit(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse_args(argv)
    assert exc.value.code == 2


def test_cli_routes_batch() -> None:
    args = build_parser().parse_args(["bench", "batch", "--batch-lines", "300"])
    assert (args.target, args.rest) == ("batch", ["--batch-lines", "300"])


def test_prompts_are_short_and_distinct() -> None:
    prompts = [short_prompt(i, 24) for i in range(50)]
    assert len(set(prompts)) == 50
    assert all(len(p.split()) == 24 + 2 for p in prompts)
    assert len(short_prompt(0, 200).split()) == 202


def test_batch_file_pins_every_lines_work() -> None:
    rows = [json.loads(line) for line in batch_jsonl("m", 7, 32, 10).decode().splitlines()]
    assert len(rows) == 7
    assert len({r["custom_id"] for r in rows}) == 7
    assert len({r["body"]["messages"][0]["content"] for r in rows}) == 7
    for row in rows:
        assert (row["method"], row["url"]) == ("POST", "/v1/chat/completions")
        body = row["body"]
        assert (body["model"], body["max_tokens"], body["temperature"]) == ("m", 32, 0)
        assert body["ignore_eos"] is True


def test_progress_from_an_openai_batch_object() -> None:
    progress = BatchProgress.from_json(
        {"status": "in_progress", "request_counts": {"total": 500, "completed": 40, "failed": 2}}
    )
    assert progress == BatchProgress("in_progress", 40, 2, 500)
    assert progress.processed == 42
    assert BatchProgress.from_json({"status": "validating"}) == BatchProgress("validating", 0, 0, 0)


@pytest.mark.parametrize(
    ("end", "reason"),
    [
        (BatchProgress("in_progress", 100, 0, 500), None),
        (BatchProgress("in_progress", 499, 0, 500), None),
        (BatchProgress("in_progress", 498, 2, 500), "finished all 500 lines"),
        (BatchProgress("finalizing", 500, 0, 500), "'finalizing'"),
        (BatchProgress("completed", 500, 0, 500), "'completed'"),
        (BatchProgress("cancelling", 120, 0, 500), "'cancelling'"),
    ],
)
def test_phase_validity(end: BatchProgress, reason: str | None) -> None:
    got = phase_invalid_reason(end)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


def _result(ttft: float, step: float, tokens: int = 4) -> RequestResult:
    return RequestResult(
        ttft=ttft,
        itls=[step] * (tokens - 1),
        e2e=ttft + step * (tokens - 1),
        output_tokens=tokens,
    )


def test_idle_phase_line() -> None:
    results = [_result(0.1, 0.02), _result(0.2, 0.02), _result(0.3, 0.02)]
    line = phase_line("idle", results, 2.0, concurrency=1, max_tokens=4)
    assert line["bench"] == "batch" and line["phase"] == "idle"
    assert line["requests"] == 3 and line["errors"] == 0
    assert line["ttft_ms_p50"] == 200.0
    assert line["ttft_ms_p99"] == pytest.approx(298.0)
    assert line["itl_ms_p50"] == 20.0 and line["tpot_ms_p50"] == 20.0
    assert line["e2e_ms_p50"] == 260.0
    assert line["requests_not_max_tokens"] == 0
    assert line["batch_lines_completed_during_phase"] == 0
    assert line["batch_lines_per_s"] == 0.0
    assert line["valid"] is True and "invalid_reason" not in line
    assert "batch_status_at_end" not in line


def test_during_phase_counts_lines_between_its_ends() -> None:
    start = BatchProgress("in_progress", 10, 1, 500)
    end = BatchProgress("in_progress", 90, 3, 500)
    line = phase_line(
        "during_batch", [_result(0.1, 0.05)], 4.0, concurrency=1, max_tokens=4, start=start, end=end
    )
    assert line["batch_lines_completed_during_phase"] == 80
    assert line["batch_lines_failed_during_phase"] == 2
    assert line["batch_lines_per_s"] == 20.0
    assert (line["batch_lines_done_at_start"], line["batch_lines_left_at_end"]) == (11, 407)
    assert line["batch_status_at_end"] == "in_progress"
    assert line["valid"] is True


def test_a_batch_that_ends_first_invalidates_the_phase() -> None:
    start = BatchProgress("in_progress", 450, 0, 500)
    end = BatchProgress("completed", 500, 0, 500)
    line = phase_line(
        "during_batch", [_result(0.1, 0.05)], 4.0, concurrency=1, max_tokens=4, start=start, end=end
    )
    assert line["valid"] is False and "'completed'" in line["invalid_reason"]
    assert line["batch_lines_left_at_end"] == 0


def test_failed_requests_are_counted_not_measured() -> None:
    results = [_result(0.1, 0.02), RequestResult(error="HTTP 503: busy")]
    line = phase_line("idle", results, 1.0, concurrency=1, max_tokens=4)
    assert (line["requests"], line["errors"]) == (2, 1)
    assert line["first_error"] == "HTTP 503: busy"
    assert line["ttft_ms_p50"] == 100.0


def _line(phase: str, **values: Any) -> dict[str, Any]:
    base = {"phase": phase, "errors": 0, "valid": True}
    return {**base, **values}


def test_summary_ratios() -> None:
    idle = _line(
        "idle", ttft_ms_p50=100.0, ttft_ms_p99=150.0, itl_ms_p50=30.0, tpot_ms_p50=31.0,
        e2e_ms_p50=1000.0,
    )  # fmt: skip
    during = _line(
        "during_batch", ttft_ms_p50=250.0, ttft_ms_p99=600.0, itl_ms_p50=75.0, tpot_ms_p50=62.0,
        e2e_ms_p50=2500.0,
    )  # fmt: skip
    summary = summarize(idle, during, batch_id="batch_x")
    assert summary["phase"] == "summary"
    assert summary["ttft_ratio_p50"] == 2.5
    assert summary["ttft_ratio_p99"] == 4.0
    assert summary["itl_ratio_p50"] == 2.5
    assert summary["tpot_ratio_p50"] == 2.0
    assert summary["e2e_ratio_p50"] == 2.5
    assert summary["ttft_added_ms_p50"] == 150.0
    assert summary["valid"] is True and "problems" not in summary
    assert summary["batch_id"] == "batch_x"


def test_summary_without_numbers_has_no_ratio() -> None:
    idle = _line("idle", ttft_ms_p50=None, errors=20)
    during = _line("during_batch", ttft_ms_p50=120.0)
    summary = summarize(idle, during)
    assert summary["ttft_ratio_p50"] is None and summary["ttft_added_ms_p50"] is None
    assert summary["itl_ratio_p50"] is None
    assert summary["valid"] is False
    assert summary["problems"] == ["idle: 20 failed requests"]
    zero = summarize(_line("idle", ttft_ms_p50=0.0), during)
    assert zero["ttft_ratio_p50"] is None


def test_summary_says_why_it_is_invalid() -> None:
    idle = _line("idle", ttft_ms_p50=100.0)
    during = _line(
        "during_batch", ttft_ms_p50=120.0, valid=False, invalid_reason="the batch was 'completed'"
    )
    summary = summarize(idle, during, ["batch ended 'completed', not cancelled"])
    assert summary["ttft_ratio_p50"] == 1.2  # still computed, but flagged
    assert summary["valid"] is False
    assert summary["problems"] == [
        "during_batch invalid: the batch was 'completed'",
        "batch ended 'completed', not cancelled",
    ]
