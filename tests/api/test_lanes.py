"""The API side of the two lanes: capacity per lane, the lane's stream, XDEL on abort."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from api.errors import ApiError
from api.reply_router import ReplyRouter
from api.request_submitter import RequestSubmitter
from conveyor.bus import BATCH_LANE, INTERACTIVE_LANE, REQUEST_FIELD, BusNames
from conveyor.protocol import GenerateRequest
from conveyor.settings import Settings

from .conftest import MODEL, Stack
from .fakes import submission, wait_for


def test_capacity_is_per_lane_and_submissions_join_their_lane(redis_url: str) -> None:
    names = BusNames(f"lanes-{uuid.uuid4().hex[:8]}")
    batch, interactive = names.requests("m", BATCH_LANE), names.requests("m")

    async def run() -> None:
        store = aioredis.from_url(redis_url, decode_responses=True)
        router = ReplyRouter(store, names, "api-unit")
        settings = Settings(redis_url=redis_url, redis_prefix=names.prefix, max_queued_requests=2)
        submitter = RequestSubmitter(store, names, router, settings)
        try:
            for i in range(3):
                await store.xadd(batch, {REQUEST_FIELD: f"queued-{i}"})
            with pytest.raises(ApiError) as full:
                await submitter.check_capacity("m", BATCH_LANE)
            assert full.value.status == 503 and full.value.headers == {"Retry-After": "1"}
            assert "3 batch requests waiting" in str(full.value)
            await submitter.check_capacity("m")  # a full batch lane never refuses interactive
            await submitter.check_capacity("m", INTERACTIVE_LANE)
            with pytest.raises(ValueError, match="lane"):
                await submitter.check_capacity("m", "bulk")

            # Queueing itself refuses too (a burst cannot slip past the check), and
            # leaves nothing behind.
            with pytest.raises(ApiError) as refused:
                await submitter.submit(submission("batch-0", BATCH_LANE))
            assert refused.value.status == 503 and "3 batch requests waiting" in str(refused.value)
            assert await store.xlen(batch) == 3 and router.in_flight == 0
            await store.xtrim(batch, maxlen=1, approximate=False)  # two taken: room for one

            await submitter.submit(submission("inter-1", INTERACTIVE_LANE))
            await submitter.submit(submission("batch-1", BATCH_LANE))
            assert await store.xlen(interactive) == 1 and await store.xlen(batch) == 2
            ((_, fields),) = await store.xrange(interactive)
            assert GenerateRequest.decode(fields[REQUEST_FIELD]).lane == INTERACTIVE_LANE
            *_, (_, fields) = await store.xrange(batch)
            queued = GenerateRequest.decode(fields[REQUEST_FIELD])
            assert (queued.id, queued.lane) == ("batch-1", BATCH_LANE)

            # Abort while still queued: the entry leaves the batch stream it was XADDed to.
            await router.abort(["batch-1"])
            assert await store.xlen(batch) == 1
            assert [f[REQUEST_FIELD] for _, f in await store.xrange(batch)] == ["queued-2"]
            assert await store.xlen(interactive) == 1
            await router.abort(["inter-1"])
            assert await store.xlen(interactive) == 0
        finally:
            await store.aclose()

    asyncio.run(run())


def test_full_batch_lane_neither_refuses_nor_delays_interactive_requests(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(max_queued_requests=2, request_timeout=10.0)
    worker = stack.worker
    worker.behaviour = "paused"
    assert worker.paused.wait(5)
    store = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    batch = stack.names.requests(MODEL, BATCH_LANE)
    interactive = stack.names.requests(MODEL)
    for i in range(3):  # over --max-queued-requests; answered to an API that is not listening
        line = GenerateRequest(
            f"line-{i}", "elsewhere", MODEL, [1, 2], {"max_tokens": 2}, lane=BATCH_LANE
        )
        store.xadd(batch, {REQUEST_FIELD: line.encode()})
    responses: list[httpx.Response] = []

    def post() -> None:
        with stack.client() as http:
            body: dict[str, Any] = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
            responses.append(http.post("/v1/completions", json=body))

    thread = threading.Thread(target=post)
    thread.start()
    try:
        wait_for(lambda: store.xlen(interactive) == 1)  # queued, not refused
        with stack.client() as http:
            metrics = http.get("/metrics").text
        # Each lane is its own series: 3 batch lines waiting, 1 interactive request.
        assert f'conveyor:queue_undelivered{{lane="batch",model="{MODEL}"}} 3.0' in metrics
        assert f'conveyor:queue_undelivered{{lane="interactive",model="{MODEL}"}} 1.0' in metrics
    finally:
        worker.behaviour = "normal"
        thread.join(15)
        store.close()
    (response,) = responses
    assert response.status_code == 200, response.text
    wait_for(lambda: len(worker.received) == 4)
    assert {r.lane for r in worker.received} == {INTERACTIVE_LANE, BATCH_LANE}
