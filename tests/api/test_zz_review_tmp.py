from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import redis

from .conftest import Stack


def test_malformed_request_ids_abort_everything(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(with_worker=False, server_dev_mode=True)
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    with stack.client() as http:
        for bad in ({"request_ids": ""}, {"request_ids": False}, {"request_ids": 0}, {"request_ids": {}}):
            client.delete(stack.names.interrupted)
            answer = http.post("/abort_requests", json=bad)
            kept = client.zrange(stack.names.interrupted, 0, -1)
            print(bad, answer.status_code, answer.json(), kept)


def test_body_request_id_newline_reaches_log(
    make_stack: Callable[..., Stack], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="api.request_submitter")
    stack = make_stack(enable_log_requests=True)
    with stack.client() as http:
        body = {"model": "fake-model", "prompt": "Hi", "max_tokens": 2,
                "request_id": "x\nINFO forged: admin login ok\x1b[31m"}
        r = http.post("/v1/completions", json=body)
        print(r.status_code, repr(r.json().get("id")))
    for rec in caplog.records:
        if rec.name == "api.request_submitter":
            print(repr(rec.getMessage()[:120]))
