"""vLLM's --enable-log-requests and --max-log-len: a line per queued request, off by default."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import httpx
import pytest

from .conftest import Stack

LOGGER = "api.request_submitter"


def test_each_queued_request_is_logged_when_asked(
    make_stack: Callable[..., Stack], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    stack = make_stack(enable_log_requests=True, max_log_len=2)
    prompt = [11, 12, 13, 14, 15]
    with stack.client() as client:
        body = {"model": "fake-model", "prompt": prompt, "max_tokens": 3, "seed": 7}
        response = client.post("/v1/completions", json=body, headers={"X-Request-Id": "trace-7"})
    assert response.status_code == 200, response.text
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1
    line = lines[0]
    # The caller's own id, so its trace finds this line, and the id it was queued under.
    assert response.json()["id"] == "cmpl-trace-7"
    expected = "Received request cmpl-trace-7 (x-request-id trace-7, queued as cmpl-"
    assert line.startswith(expected)
    assert "): model fake-model, " in line
    assert "max_tokens=3" in line and "seed=7" in line
    assert line.endswith("prompt_token_ids (5): [11, 12] ... (3 more)")


def test_requests_are_not_logged_by_default(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    body = {"model": "fake-model", "prompt": "Hi", "max_tokens": 3}
    assert client.post("/v1/completions", json=body).status_code == 200
    assert not [r for r in caplog.records if r.name == LOGGER]


@pytest.mark.parametrize("stream", [False, True])
def test_each_requests_output_is_logged_with_log_outputs(
    make_stack: Callable[..., Stack], caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    """vLLM's --enable-log-outputs (with --enable-log-requests): a line per choice once
    the request ends, streamed or not, its text and token ids cut to --max-log-len."""
    caplog.set_level(logging.INFO, logger="api.output_log")
    stack = make_stack(enable_log_requests=True, enable_log_outputs=True, max_log_len=2)
    body = {"model": "fake-model", "prompt": "Hi", "max_tokens": 3, "n": 2, "stream": stream}
    with stack.client() as client:
        response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    if stream:
        texts = ["", ""]
        for line in response.text.splitlines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    texts[choice["index"]] += choice["text"]
    else:
        texts = [c["text"] for c in sorted(response.json()["choices"], key=lambda c: c["index"])]
    lines = [r.getMessage() for r in caplog.records if r.name == "api.output_log"]
    assert len(lines) == 2, lines
    for index, (line, text) in enumerate(zip(lines, texts, strict=True)):
        assert line.startswith("Generated response cmpl-")
        assert f" (choice {index}): output: {text[:2]!r}, output_token_ids (3): [" in line
        assert line.endswith("] ... (1 more), finish_reason: length")


def test_outputs_are_not_logged_without_request_logging(
    make_stack: Callable[..., Stack], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="api.output_log")
    stack = make_stack(enable_log_outputs=True)  # as vLLM: only beside the request lines
    with stack.client() as client:
        body = {"model": "fake-model", "prompt": "Hi", "max_tokens": 3}
        assert client.post("/v1/completions", json=body).status_code == 200
    assert not [r for r in caplog.records if r.name == "api.output_log"]
