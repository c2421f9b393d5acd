"""vLLM's POST /abort_requests over HTTP: mounted only in development mode, only for the
admin key under tenancy, bad arguments refused, and each call published and kept for the
workers (conveyor/interrupt_request.py). Its effect on real workers is in
tests/workers/test_abort_requests.py and tests/e2e/test_abort_requests.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import redis

from conveyor.interrupt_request import InterruptRequest
from workers.intake import REQUEST_FIELD

from .conftest import MODEL, Stack

ADMIN_KEY = "admin-test-key"


def test_it_is_a_development_endpoint_as_in_vllm(stack: Stack) -> None:
    with stack.client() as http:
        assert http.post("/abort_requests", json={}).status_code == 404


def test_under_tenancy_only_the_admin_key_may_call_it(
    make_stack: Callable[..., Stack], migrated_database_url: str
) -> None:
    stack = make_stack(
        database_url=migrated_database_url, admin_key=ADMIN_KEY, server_dev_mode=True
    )
    with (
        stack.client() as anonymous,
        stack.client(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin,
    ):
        assert anonymous.post("/abort_requests", json={}).status_code == 401
        bad_ids: list[object] = ["chatcmpl-1", [1], [""], "", False, 0, {}]
        # A falsy non-list is refused too: only a missing list or [] means every request.
        for bad in ({"request_ids": ids} for ids in bad_ids):
            answer = admin.post("/abort_requests", json=bad)
            assert answer.status_code == 400
            assert answer.json()["error"]["param"] == "request_ids"
        assert admin.post("/abort_requests", content=b"[]").status_code == 400
        assert admin.post("/abort_requests", json={"request_ids": ["a"]}).status_code == 200


def test_a_call_is_published_and_kept_for_workers_that_read_later(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(with_worker=False, server_dev_mode=True, request_timeout=30.0)
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    names = stack.names
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(names.interrupt)
    stale = time.time() - 200  # older than the request timeout (and its grace)
    client.zadd(names.interrupted, {"id:long-gone": stale})
    client.set(names.known_model(MODEL), "1")
    for _ in range(3):  # queued, as the API queues them (any payload: no worker reads it)
        client.xadd(names.requests(MODEL), {REQUEST_FIELD: "{}"})
    try:
        with stack.client() as http:
            # Raw bytes with no Content-Type, as a trainer's requests.post(data=...) sends.
            named = http.post(
                "/abort_requests", content=json.dumps({"request_ids": ["a", "b", "a"]})
            )
            assert named.json() == {"status": "aborted", "aborted": 2}
            every = http.post("/abort_requests")
            assert every.json() == {"status": "aborted", "aborted": 3}  # the queued ones
        heard = []
        deadline = time.monotonic() + 2
        while len(heard) < 2 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.2)  # None for the subscription's reply
            if message is not None:
                heard.append(InterruptRequest.decode(message["data"]))
        assert [h.ids for h in heard if h is not None] == [("a", "b"), ()]
        kept = client.zrange(names.interrupted, 0, -1, withscores=True)
        assert {m for m, _ in kept} == {"id:a", "id:b", "*"}  # the stale one trimmed
        assert InterruptRequest.from_members(kept)[-1].every_request
    finally:
        pubsub.close()
        client.close()
