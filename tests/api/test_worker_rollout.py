"""Operator calls' wait for workers: done once every live worker reached the change, a
worker's failure is a 500 naming it, and past the timeout a 504."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from api.catalog import LiveModel
from api.errors import ApiError
from api.worker_rollout import base_models, until_every_worker


class Catalog:
    """What the wait reads of a catalog: the live models, each scan a new list of beats."""

    def __init__(self, *scans: dict[str, LiveModel], aliases: dict[str, str] | None = None):
        self.scans = list(scans)
        self._aliases = aliases or {}

    async def live_models(self, max_age: float | None = None) -> dict[str, LiveModel]:
        return self.scans.pop(0) if len(self.scans) > 1 else self.scans[0]

    async def aliases(self, max_age: float | None = None) -> dict[str, str]:
        return self._aliases


def live(*beats: dict[str, Any], name: str = "m") -> dict[str, LiveModel]:
    return {name: LiveModel(name, beats)}


def wait(catalog: Catalog, timeout: float = 5.0) -> None:
    asyncio.run(
        until_every_worker(
            catalog,  # type: ignore[arg-type]
            "m",
            reached=lambda w: w.get("gen") == "g",
            failure=lambda w: w.get("error"),
            what="do it",
            timeout=timeout,
        )
    )


def test_done_once_every_worker_reached_it() -> None:
    scans = [live({"gen": "old"}, {"gen": "g"}), live({"gen": "g"}, {"gen": "g"})]
    catalog = Catalog(*scans)
    wait(catalog)
    assert len(catalog.scans) == 1  # waited for the second scan


def test_no_live_worker_is_done_at_once() -> None:
    wait(Catalog({}))


def test_a_worker_failure_is_the_answer() -> None:
    with pytest.raises(ApiError) as caught:
        wait(Catalog(live({"gen": "g"}, {"gen": "g", "error": "no memory", "instance": "w2"})))
    assert caught.value.status == 500
    assert "could not do it: no memory (worker w2)" in caught.value.message


def test_past_the_timeout_a_504_says_the_change_stays_asked_for() -> None:
    with pytest.raises(ApiError) as caught:
        wait(Catalog(live({"gen": "old"})), timeout=0.2)
    assert (caught.value.status, caught.value.code) == (504, "timeout")
    assert "stays requested" in caught.value.message


def test_the_models_a_call_names() -> None:
    catalog = Catalog(
        {**live(name="a"), **live(name="b"), "a-lora": LiveModel("a-lora", (), parent="a")},
        aliases={"alias-of-b": "b"},
    )
    assert asyncio.run(base_models(catalog, None)) == ["a", "b"]  # type: ignore[arg-type]
    assert asyncio.run(base_models(catalog, "alias-of-b")) == ["b"]  # type: ignore[arg-type]
    for model in ("nope", "a-lora"):
        with pytest.raises(ApiError) as caught:
            asyncio.run(base_models(catalog, model))  # type: ignore[arg-type]
        assert caught.value.status == 404
    with pytest.raises(ApiError) as none:
        asyncio.run(base_models(Catalog({}), None))  # type: ignore[arg-type]
    assert (none.value.status, none.value.code) == (503, "no_worker")


def test_advance_loses_no_change_when_calls_overlap(redis_url: str) -> None:
    """Ten calls at once, each adding one to what it read: none is lost to another."""
    from redis.asyncio import Redis

    from api.worker_rollout import advance

    async def run() -> tuple[str | None, list[str]]:
        client = Redis.from_url(redis_url, decode_responses=True)
        key = f"rollout-test:{id(client)}"

        def add_one(raw: str | None) -> tuple[str, str]:
            value = str(int(raw or 0) + 1)
            return value, f"gen-{value}"

        try:
            gens = await asyncio.gather(*(advance(client, key, add_one) for _ in range(10)))
            return await client.get(key), list(gens)
        finally:
            await client.delete(key)
            await client.aclose()

    final, gens = asyncio.run(run())
    assert final == "10"
    assert sorted(gens) == sorted(f"gen-{i}" for i in range(1, 11))


def test_roll_out_writes_nudges_and_answers_with_the_workers_report(redis_url: str) -> None:
    """The gen written is the one workers are waited for; their error for exactly that gen
    is the call's 500."""
    from redis.asyncio import Redis

    from api.worker_rollout import roll_out
    from conveyor.bus import BusNames
    from conveyor.rollout_gen import next_gen

    names = BusNames(prefix=f"rollout-{uuid.uuid4().hex[:8]}")

    async def run(report: dict[str, Any]) -> tuple[str | None, list[str]]:
        client = Redis.from_url(redis_url, decode_responses=True)
        nudges = client.pubsub()
        await nudges.subscribe(names.controls("m"))
        key = names.prefix_cache_reset("m")
        try:
            await client.set(key, "epoch:4")
            await roll_out(
                Catalog(live(report)),  # type: ignore[arg-type]
                client,
                names,
                ["m"],
                key=names.prefix_cache_reset,
                update=lambda raw: (gen := next_gen(raw), gen),
                reached=lambda w: w.get("gen"),
                error=lambda w: w.get("error"),
                what="do it",
                timeout=1.0,
            )
            seen = []
            while (message := await nudges.get_message(timeout=0.2)) is not None:
                if message["type"] == "message":
                    seen.append(message["data"])
            return await client.get(key), seen
        finally:
            await nudges.aclose()
            await client.aclose()

    # Written and nudged; a worker at a later gen has done it too.
    assert asyncio.run(run({"gen": "epoch:6"})) == ("epoch:5", ["epoch:5"])
    with pytest.raises(ApiError) as caught:
        asyncio.run(run({"gen": "epoch:5", "error": "no memory", "instance": "w1"}))
    assert caught.value.status == 500 and "no memory (worker w1)" in caught.value.message


def test_put_back_undoes_a_failed_change_unless_a_later_one_came(redis_url: str) -> None:
    from redis.asyncio import Redis

    from api.worker_rollout import put_back

    def gen_of(raw: str | None) -> str | None:
        return raw.split("@")[1] if raw else None

    async def run() -> list[object]:
        client = Redis.from_url(redis_url, decode_responses=True)
        key = f"put-back-test:{uuid.uuid4().hex}"
        seen: list[object] = []
        try:
            await client.set(key, "bad@e:2")
            seen.append(await put_back(client, key, "e:2", gen_of, "good@e:1"))
            seen.append(await client.get(key))
            await client.set(key, "later@e:3")  # another call overtook the failed one
            seen.append(await put_back(client, key, "e:2", gen_of, "good@e:1"))
            seen.append(await client.get(key))
            seen.append(await put_back(client, key, "e:3", gen_of, None))  # no value before
            seen.append(await client.exists(key))
        finally:
            await client.delete(key)
            await client.aclose()
        return seen

    assert asyncio.run(run()) == [True, "good@e:1", False, "later@e:3", True, 0]
