"""The model catalog's heartbeat scan: requests that need one at once share it, its
answer and its failure."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.catalog import ModelCatalog
from conveyor.bus import KNOWN_NAME_TTL_SECONDS, BusNames
from conveyor.embedded_redis import EmbeddedRedis


def test_concurrent_requests_share_one_scan(redis_url: str) -> None:
    async def run() -> list[list[str]]:
        store = aioredis.from_url(redis_url, decode_responses=True)
        names = BusNames("unit-catalog-shared")
        await store.set(names.worker("m", "w1"), json.dumps({"model": "m"}), px=10_000)
        catalog = ModelCatalog(store, names)
        try:
            found = await asyncio.gather(*(catalog.live_models(max_age=0) for _ in range(5)))
            return [sorted(live) for live in found]
        finally:
            catalog.close()
            await store.aclose()

    assert asyncio.run(run()) == [["m"]] * 5


def test_a_hung_redis_fails_every_waiting_request_in_one_read_timeout() -> None:
    """Five requests that need a scan while Redis hangs fail together, after one read
    timeout; each used to wait for the one before it to fail first, one timeout more."""
    read_timeout = 1.0

    async def run(server: EmbeddedRedis) -> tuple[list[object], float]:
        assert server.process is not None
        store = aioredis.from_url(server.url, decode_responses=True, socket_timeout=read_timeout)
        catalog = ModelCatalog(store, BusNames("unit-catalog-hung"))
        await store.ping()
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            outcomes = await asyncio.gather(
                *(catalog.live_models(max_age=0) for _ in range(5)), return_exceptions=True
            )
            return outcomes, time.monotonic() - started
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
            catalog.close()
            await store.aclose()

    with EmbeddedRedis() as server:
        outcomes, took = asyncio.run(run(server))
    assert all(isinstance(o, RedisTimeoutError) for o in outcomes)
    assert took < read_timeout * 2.5


@pytest.mark.parametrize("max_age", [0.0, 60.0])
def test_a_fresh_scan_is_reused_within_max_age(redis_url: str, max_age: float) -> None:
    async def run() -> list[str]:
        store = aioredis.from_url(redis_url, decode_responses=True)
        names = BusNames(f"unit-catalog-age-{max_age}")
        catalog = ModelCatalog(store, names)
        try:
            await catalog.live_models(max_age=0)  # empty
            await store.set(names.worker("m", "w1"), json.dumps({"model": "m"}), px=10_000)
            return sorted(await catalog.live_models(max_age=max_age))
        finally:
            catalog.close()
            await store.aclose()

    assert asyncio.run(run()) == ([] if max_age else ["m"])


def test_serves_counts_live_workers_of_a_base_model_not_draining_ones(redis_url: str) -> None:
    """What the reply router asks before ending a request for want of workers."""

    async def run() -> list[bool]:
        store = aioredis.from_url(redis_url, decode_responses=True)
        names = BusNames("unit-catalog-serves")
        catalog = ModelCatalog(store, names, refresh_interval=0, min_refresh_interval=0)
        beat = {"model": "m", "instance": "w1", "loras": {"adapter": "/a"}}
        try:
            await store.set(names.worker("m", "w1"), json.dumps(beat), px=10_000)
            served = [await catalog.serves("m"), await catalog.serves("other")]
            await store.set(
                names.worker("m", "w1"), json.dumps({**beat, "draining": True}), px=10_000
            )
            return [*served, await catalog.serves("m")]
        finally:
            catalog.close()
            await store.aclose()

    assert asyncio.run(run()) == [True, False, False]


def test_a_model_seen_live_is_503_not_404_after_redis_forgot_it(redis_url: str) -> None:
    """A Redis restarted empty has lost the `known_*` keys until the workers announce
    again: a request in that gap is told to retry, not that the model does not exist."""
    from api.errors import ApiError

    async def run() -> list[tuple[int, str | None]]:
        store = aioredis.from_url(redis_url, decode_responses=True)
        names = BusNames("unit-catalog-forgot")
        catalog = ModelCatalog(store, names, refresh_interval=0, min_refresh_interval=0)
        beat = names.worker("m", "w1")
        try:
            await store.set(beat, json.dumps({"model": "m"}), px=10_000)
            assert (await catalog.resolve("m")).name == "m"
            await store.delete(beat)  # as a restarted Redis: no heartbeat, no known key
            codes = []
            for name in ("m", "never-served"):
                try:
                    await catalog.resolve(name)
                except ApiError as error:
                    codes.append((error.status, error.code))
            try:
                await catalog.default_model()
            except ApiError as error:
                codes.append((error.status, error.code))
            # Remembered as long as Redis keeps a known name: an hour on, it is a 404.
            catalog._seen = {n: t - KNOWN_NAME_TTL_SECONDS for n, t in catalog._seen.items()}
            try:
                await catalog.resolve("m")
            except ApiError as error:
                codes.append((error.status, error.code))
            return codes
        finally:
            catalog.close()
            await store.aclose()

    assert asyncio.run(run()) == [
        (503, "no_worker"),
        (404, "model_not_found"),
        (503, "no_worker"),
        (404, "model_not_found"),
    ]


def test_a_model_whose_every_worker_sleeps_is_refused_before_queueing() -> None:
    from api.catalog import LiveModel
    from api.errors import ApiError

    LiveModel("m", ({"sleeping": True}, {"sleeping": False})).require_awake()  # one serves
    with pytest.raises(ApiError) as caught:
        LiveModel("m", ({"sleeping": True}, {"sleeping": True})).require_awake()
    assert (caught.value.status, caught.value.code) == (503, "model_sleeping")
