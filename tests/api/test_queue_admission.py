"""Queue admission: a request's entries are admitted or refused together, a burst cannot
pass a full lane, and an empty lane admits any request, however many entries it has."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from api.errors import ApiError
from api.queue_admission import is_full
from api.reply_router import ReplyRouter
from api.request_submitter import RequestSubmitter
from conveyor.bus import REQUEST_FIELD, BusNames
from conveyor.settings import Settings

from .fakes import submission


@pytest.mark.parametrize(
    ("waiting", "adding", "limit", "full"),
    [
        (0, 1, 2, False),
        (1, 1, 2, False),
        (2, 1, 2, True),
        (0, 50, 2, False),  # alone in an empty lane: admitted, never refused for ever
        (1, 2, 2, True),  # all of a request or none
        (0, 1, 0, False),  # --max-queued-requests 0: nothing may wait behind another
        (1, 1, 0, True),
    ],
)
def test_the_rule(waiting: int, adding: int, limit: int, full: bool) -> None:
    assert is_full(waiting, adding, limit) is full


def test_a_requests_entries_are_admitted_or_refused_together(redis_url: str) -> None:
    names = BusNames(f"admit-{uuid.uuid4().hex[:8]}")
    stream = names.requests("m")

    async def run() -> None:
        store = aioredis.from_url(redis_url, decode_responses=True)
        router = ReplyRouter(store, names, "api-unit")
        settings = Settings(redis_url=redis_url, redis_prefix=names.prefix, max_queued_requests=4)
        submitter = RequestSubmitter(store, names, router, settings)
        try:
            # 6 prompts (or inputs, or choices) with room for 4, in an empty lane: all go.
            readers: list = []
            await submitter.submit_all([submission(f"big-{i}") for i in range(6)], readers)
            assert len(readers) == 6 and await store.xlen(stream) == 6
            queued = [f[REQUEST_FIELD] for _, f in await store.xrange(stream)]
            assert all(f'"id":"big-{i}"' in queued[i] for i in range(6))
            await router.abort([f"big-{i}" for i in range(6)])
            for reader in readers:
                reader.close()
            assert await store.xlen(stream) == 0 and router.in_flight == 0

            # One waits: a request of 4 more would pass the limit, so none of it is queued
            # and its readers are closed; a request of 3 fits.
            await store.xadd(stream, {REQUEST_FIELD: "someone-else"})
            with pytest.raises(ApiError) as refused:
                await submitter.submit_all([submission(f"no-{i}") for i in range(4)], [])
            assert refused.value.status == 503 and refused.value.code == "overloaded"
            assert await store.xlen(stream) == 1 and router.in_flight == 0
            fits: list = []
            await submitter.submit_all([submission(f"fits-{i}") for i in range(3)], fits)
            assert await store.xlen(stream) == 4 and router.in_flight == 3
        finally:
            await store.aclose()

    asyncio.run(run())


def test_a_request_cancelled_while_being_admitted_leaves_nothing_queued(redis_url: str) -> None:
    """The client goes while the admission script is on its way: whatever it queued is
    pulled back out once it answers, so no worker generates for nobody."""
    names = BusNames(f"admit-{uuid.uuid4().hex[:8]}")
    stream = names.requests("m")

    async def run() -> tuple[int, int]:
        store = aioredis.from_url(redis_url, decode_responses=True)
        router = ReplyRouter(store, names, "api-unit")
        settings = Settings(redis_url=redis_url, redis_prefix=names.prefix)
        submitter = RequestSubmitter(store, names, router, settings)
        queue = submitter.admission.queue

        async def slow_queue(*args: object, **kwargs: object) -> list[str]:
            await asyncio.sleep(0.2)  # the script's reply still on its way
            return await queue(*args, **kwargs)  # type: ignore[arg-type]

        submitter.admission.queue = slow_queue  # type: ignore[method-assign]
        try:
            call = asyncio.ensure_future(
                submitter.submit_all([submission(f"gone-{i}") for i in range(3)], [])
            )
            await asyncio.sleep(0.05)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            while submitter._admissions:  # the script answers after the client left
                await asyncio.sleep(0.02)
            for _ in range(100):  # then the late abort pulls the entries out
                if await store.xlen(stream) == 0 and router.in_flight == 0:
                    break
                await asyncio.sleep(0.02)
            return await store.xlen(stream), router.in_flight
        finally:
            await store.aclose()

    assert asyncio.run(run()) == (0, 0)
