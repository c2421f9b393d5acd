"""Operator calls that change every worker of a model: which models they name, the write of
the new desired state, and the wait until each live worker announces it.

Such a call writes a desired state (a Redis key holding the call's gen,
conveyor/rollout_gen.py) that every worker of the model converges on, a worker
started later included, and announces in its heartbeat; so a 200 means it
holds everywhere now (or a later call's change does). The write is a
read-modify-write under WATCH, so two calls at once cannot lose one's change,
and a nudge on the model's controls channel makes workers read it at once.
A worker's reported failure is the call's 500; past the timeout the call
answers 504 and the change stays asked for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import WatchError

from api.catalog import LiveModel, ModelCatalog
from api.errors import ApiError
from conveyor.bus import BusNames
from conveyor.rollout_gen import covers

_POLL = 0.1

T = TypeVar("T")

Beat = dict[str, Any]


async def base_models(catalog: ModelCatalog, model: str | None) -> list[str]:
    """The served model named (by any of its names), or every one when none is."""
    live = await catalog.live_models(max_age=0)
    if model is None:
        bases = [name for name, m in live.items() if m.parent is None]
        if not bases:
            raise ApiError(
                503,
                "no model has a live worker right now; try again shortly",
                code="no_worker",
                headers={"Retry-After": "5"},
            )
        return bases
    return [named_base_model(live, await catalog.aliases(max_age=0), model)]


def named_base_model(live: dict[str, LiveModel], aliases: dict[str, str], model: str) -> str:
    """The served model `model` names (by any of its names), or a 404: an adapter or a
    model without a live worker is no model an operator call can change."""
    model = aliases.get(model, model)
    found = live.get(model)
    if found is None or found.parent is not None:
        raise ApiError(
            404, f"The model `{model}` does not exist", param="model", code="model_not_found"
        )
    return model


async def roll_out(
    catalog: ModelCatalog,
    redis: Redis,
    names: BusNames,
    targets: list[str],
    key: Callable[[str], str],
    update: Callable[[str | None], tuple[str, str]],
    reached: Callable[[Beat], object],
    what: str,
    timeout: float,
    error: Callable[[Beat], str | None] = lambda _: None,
) -> None:
    """Advance each target model's `key` (`update` of its value: the new value and its
    gen), nudge its workers on the model's controls channel, then wait until every live
    worker of each reports (`reached`) that gen or a later one. A worker whose report is
    this very gen with an `error` fails the call."""
    gens = {}
    for name in targets:
        gens[name] = await advance(redis, key(name), update)
        await redis.publish(names.controls(name), gens[name])
    for name, gen in gens.items():
        await until_every_worker(
            catalog,
            name,
            reached=lambda w, gen=gen: covers(reached(w), gen),
            failure=lambda w, gen=gen: error(w) if reached(w) == gen else None,
            what=what,
            timeout=timeout,
        )


async def advance(redis: Redis, key: str, update: Callable[[str | None], tuple[str, str]]) -> str:
    """Set `key` to the value `update` makes of the current one, atomically (a write in
    between makes it read again); `update` returns (value, its gen), and the gen is
    returned."""
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key)
                value, gen = update(await pipe.get(key))
                pipe.multi()
                pipe.set(key, value)
                await pipe.execute()
                return gen
            except WatchError:
                continue


async def put_back(
    redis: Redis,
    key: str,
    gen: str,
    gen_of: Callable[[str | None], str | None],
    previous: str | None,
) -> bool:
    """Undo a change every worker failed to make: set `key` back to `previous` (deleted
    for None) while it still holds the change of `gen` (`gen_of` reads a value's gen); a
    later call's change is left alone. Whether it was put back."""
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key)
                if gen_of(await pipe.get(key)) != gen:
                    return False
                pipe.multi()
                if previous is None:
                    pipe.delete(key)
                else:
                    pipe.set(key, previous)
                await pipe.execute()
                return True
            except WatchError:
                continue


async def until_every_worker(
    catalog: ModelCatalog,
    model: str,
    reached: Callable[[Beat], bool],
    failure: Callable[[Beat], str | None],
    what: str,
    timeout: float,
) -> None:
    """Return once every live worker of `model` has `reached` the change (none live: the
    change waits for the next one to start); a worker's `failure` is a 500 at once."""

    def done(workers: Sequence[Beat]) -> bool | None:
        for worker in workers:
            reason = failure(worker)
            if reason is not None:
                raise ApiError(
                    500,
                    f"A worker of `{model}` could not {what}: {reason} "
                    f"(worker {worker.get('instance')})",
                )
        return True if all(reached(worker) for worker in workers) else None

    await watch_workers(catalog, model, done, what, timeout)


async def watch_workers(
    catalog: ModelCatalog,
    model: str,
    done: Callable[[Sequence[Beat]], T | None],
    what: str,
    timeout: float,
) -> T:
    """Poll the live workers of `model` until `done` of their heartbeats gives an answer
    (not None), and return it; a 504 past `timeout` (the change stays asked for)."""
    deadline = time.monotonic() + timeout
    while True:
        live = (await catalog.live_models(max_age=_POLL)).get(model)
        answer = done(live.workers if live is not None else ())
        if answer is not None:
            return answer
        if time.monotonic() > deadline:
            raise ApiError(
                504,
                f"The workers of `{model}` did not {what} within {timeout:.0f} s; the change "
                "stays requested and takes effect when they do.",
                code="timeout",
            )
        await asyncio.sleep(_POLL)
