"""validate_lines: a bad input file fails the whole batch with errors that name the line, so a
user fixes the file once instead of finding problems line by line in the error file."""

from __future__ import annotations

import json
from typing import Any

from conveyor.db.batch import Batch
from conveyor.db.batch_result import BatchResult
from workers.batch.validation import (
    CUSTOM_ID_MAX_CHARS,
    MAX_ERRORS,
    MODEL_MAX_CHARS,
    BatchLine,
    Validated,
    validate_lines,
)

CHAT = "/v1/chat/completions"


def request(custom_id: str = "a", model: str = "m", **overrides: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
    }
    line.update(overrides)
    return line


def encode(*items: Any) -> list[bytes]:
    """Lines as a file handle yields them: bytes with their newline."""
    return [
        (item if isinstance(item, str) else json.dumps(item)).encode() + b"\n" for item in items
    ]


def check(*items: Any, endpoint: str = CHAT, max_lines: int = 100) -> Validated:
    return validate_lines(encode(*items), endpoint=endpoint, max_lines=max_lines)


def only_error(result: Validated) -> tuple[str, int | None, str | None]:
    """The single error as (code, line, param); a failed file hands back no lines to run."""
    assert result.lines == []
    assert len(result.errors) == 1, result.errors
    error = result.errors[0]
    return error.code, error.line, error.param


def test_good_file_yields_every_line_with_its_number() -> None:
    result = check(request("a"), request("b", temperature=0), request("c"))
    assert result.errors == []
    assert result.model == "m"
    assert [(line.line, line.custom_id, line.url) for line in result.lines] == [
        (1, "a", CHAT),
        (2, "b", CHAT),
        (3, "c", CHAT),
    ]
    assert result.lines[0] == BatchLine(1, "a", CHAT, request("a")["body"])


def test_completions_endpoint_is_matched_too() -> None:
    item = request(url="/v1/completions", body={"model": "m", "prompt": "x"})
    result = check(item, endpoint="/v1/completions")
    assert result.errors == [] and len(result.lines) == 1


def test_blank_lines_are_skipped_but_still_counted_in_line_numbers() -> None:
    """An editor's line numbers: the blank lines in between still count."""
    result = check("", request("a"), "   ", "\t", request("b", body={"model": "m"}))
    assert result.errors == []
    assert [line.line for line in result.lines] == [2, 5]


def test_not_json() -> None:
    code, line, param = only_error(check(request("a"), "{not json"))
    assert (code, line, param) == ("invalid_json_line", 2, None)


def test_not_json_is_placed_within_its_line() -> None:
    """json's own "line 2 column 1" counted the line's newline as a second line."""
    lines = [b'{"custom_id": "a"\n', b'{"custom_id": "b", x}\n']
    result = validate_lines(lines, endpoint=CHAT, max_lines=10)
    assert [e.message for e in result.errors] == [
        "line 1 is not valid JSON: Expecting ',' delimiter at the end of the line",
        "line 2 is not valid JSON: Expecting property name enclosed in double quotes at "
        "character 20",
    ]


def test_nan_infinity_and_out_of_range_numbers_are_not_json() -> None:
    """json.loads took them; the line could then not be sent on, and the batch was
    re-run for ever, its good lines never answered."""
    bodies = ['{"temperature": NaN}', '{"top_p": -Infinity}', '{"temperature": 1e400}']
    lines = [
        f'{{"custom_id": "c{i}", "method": "POST", "url": "{CHAT}", "body": {body}}}'.encode()
        for i, body in enumerate(bodies)
    ]
    result = validate_lines(lines, endpoint=CHAT, max_lines=10)
    assert [(e.code, e.line) for e in result.errors] == [
        ("invalid_json_line", n) for n in (1, 2, 3)
    ]
    assert [e.message for e in result.errors] == [
        "line 1 is not valid JSON: NaN is not a JSON value",
        "line 2 is not valid JSON: -Infinity is not a JSON value",
        "line 3 is not valid JSON: 1e400 is out of a float's range",
    ]


def test_invalid_utf8_is_not_json() -> None:
    result = validate_lines([b'{"custom_id": "\xff\xfe"}\n'], endpoint=CHAT, max_lines=10)
    assert only_error(result) == ("invalid_json_line", 1, None)
    assert result.errors[0].message == "line 1 is not UTF-8 text"


def test_json_that_is_not_an_object() -> None:
    result = check("[1, 2]", '"text"', "3")
    assert result.lines == []
    assert [(e.code, e.line) for e in result.errors] == [
        ("invalid_json_line", n) for n in (1, 2, 3)
    ]


def test_custom_id_must_be_a_non_empty_string() -> None:
    missing = request()
    del missing["custom_id"]
    for item in (missing, request(""), request(custom_id=7)):  # type: ignore[arg-type]
        assert only_error(check(item)) == ("missing_required_parameter", 1, "custom_id")


def test_custom_id_and_model_must_fit_their_columns() -> None:
    """PostgreSQL refuses a longer value or a NUL; the worker would fail that INSERT forever."""
    assert check(request("x" * CUSTOM_ID_MAX_CHARS, model="m" * MODEL_MAX_CHARS)).errors == []
    for item, param in (
        (request("x" * (CUSTOM_ID_MAX_CHARS + 1)), "custom_id"),
        (request("a\x00b"), "custom_id"),
        (request(model="m" * (MODEL_MAX_CHARS + 1)), "body.model"),
        (request(model="m\x00"), "body.model"),
    ):
        assert only_error(check(item)) == ("invalid_value", 1, param)


def test_the_limits_are_the_column_widths() -> None:
    assert BatchResult.__table__.c.custom_id.type.length == CUSTOM_ID_MAX_CHARS
    assert Batch.__table__.c.model.type.length == MODEL_MAX_CHARS


def test_duplicate_custom_id_names_the_second_occurrence() -> None:
    result = check(request("a"), request("b"), request("a"))
    assert only_error(result) == ("duplicate_custom_id", 3, "custom_id")
    assert "'a'" in result.errors[0].message


def test_method_must_be_post() -> None:
    assert only_error(check(request(method="GET"))) == ("invalid_method", 1, "method")
    no_method = request()
    del no_method["method"]
    assert only_error(check(no_method)) == ("invalid_method", 1, "method")


def test_url_must_be_the_batch_endpoint() -> None:
    result = check(request(url="/v1/completions"))
    assert only_error(result) == ("invalid_url", 1, "url")
    assert CHAT in result.errors[0].message


def test_body_must_be_an_object() -> None:
    no_body = request()
    del no_body["body"]
    for item in (no_body, request(body="text"), request(body=None)):
        assert only_error(check(item)) == ("missing_required_parameter", 1, "body")


def test_body_model_is_required() -> None:
    for body in ({"messages": []}, {"model": ""}, {"model": 3}):
        result = check(request(body=body))
        assert only_error(result) == ("missing_required_parameter", 1, "body.model")


def test_one_model_per_file() -> None:
    result = check(request("a", model="m1"), request("b", model="m1"), request("c", model="m2"))
    assert only_error(result) == ("mismatched_model", 3, "body.model")
    assert "'m2'" in result.errors[0].message and "'m1'" in result.errors[0].message
    assert result.model == "m1"


def test_background_responses_are_refused() -> None:
    """A background line would answer with a queued stub and generate where the batch
    never reads it."""
    body = {"model": "m", "input": "hi", "background": True}
    item = request(url="/v1/responses", body=body)
    assert only_error(check(item, endpoint="/v1/responses")) == (
        "invalid_value",
        1,
        "body.background",
    )
    foreground = request(url="/v1/responses", body={**body, "background": False})
    assert check(foreground, endpoint="/v1/responses").errors == []


def test_streaming_is_refused() -> None:
    item = request(body={"model": "m", "messages": [], "stream": True})
    assert only_error(check(item)) == ("invalid_value", 1, "body.stream")
    # stream: false is what a batch does anyway.
    assert check(request(body={"model": "m", "stream": False})).errors == []


def test_more_than_max_lines_is_too_many_requests() -> None:
    assert check(*(request(str(i)) for i in range(3)), max_lines=3).errors == []
    result = check(*(request(str(i)) for i in range(5)), max_lines=3)
    assert only_error(result) == ("too_many_requests", 4, None)
    assert "3" in result.errors[0].message


def test_blank_lines_do_not_count_towards_max_lines() -> None:
    assert check(request("a"), "", "", request("b"), max_lines=2).errors == []


def test_empty_file() -> None:
    for raw in ([], [b"\n", b"  \n"]):
        result = validate_lines(raw, endpoint=CHAT, max_lines=10)
        assert only_error(result) == ("empty_file", None, None)


def test_errors_are_reported_for_every_bad_line_with_line_and_param() -> None:
    """Every problem at once, in file order, each naming its line and field."""
    result = check(request("a"), "oops", request("a"), request("c", method="PUT"), request("d"))
    assert result.lines == []
    assert [e.as_dict()["line"] for e in result.errors] == [2, 3, 4]
    assert [e.code for e in result.errors] == [
        "invalid_json_line",
        "duplicate_custom_id",
        "invalid_method",
    ]
    assert result.errors[2].as_dict() == {
        "code": "invalid_method",
        "message": "method must be POST",
        "param": "method",
        "line": 4,
    }


def test_at_most_max_errors_are_kept() -> None:
    result = check(*(["bad"] * (MAX_ERRORS + 25)), max_lines=10_000)
    assert len(result.errors) == MAX_ERRORS
    assert result.errors[-1].line == MAX_ERRORS
