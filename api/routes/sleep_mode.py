"""vLLM's sleep mode: POST /sleep, POST /wake_up and GET /is_sleeping.

Mounted with --enable-sleep-mode. For an RLHF loop or a shared GPU: `/sleep`
frees the device's memory without stopping the server (level 1 keeps the
weights in host memory for a fast wake; level 2 drops them, and waking reads
the checkpoint again), `/wake_up` brings it back, `?tags=weights` or
`?tags=kv_cache` one part at a time. Each call names a model with `?model=`
or applies to every served one, writes the model's `sleep` key, and answers
once every live worker announces the state (engines finish the requests they
hold before sleeping). While asleep, requests that need the model get 503
`model_sleeping`; /v1/models, /tokenize and the like go on. A worker started
meanwhile joins asleep. With tenancy on (--admin-key), only the admin key may
call these.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response

from api.auth import authorize_operator
from api.deps import CatalogDep, NamesDep, RedisDep
from api.errors import ApiError
from api.worker_rollout import Beat, base_models, until_every_worker
from conveyor.sleep_request import PARTS, SleepRequest

# Level 1 copies the weights to host memory and level 2's wake reads the checkpoint again:
# tens of seconds for a large model.
SLEEP_TIMEOUT = 300.0

router = APIRouter(dependencies=[Depends(authorize_operator)])


@router.post("/sleep", response_model=None)
async def sleep(
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    level: Annotated[int, Query()] = 1,
    model: Annotated[str | None, Query()] = None,
) -> Response:
    if level not in (1, 2):
        raise ApiError(400, f"level must be 1 or 2, not {level}", param="level")
    targets = await base_models(catalog, model)
    await _ask(catalog, redis, names, targets, lambda _: (frozenset(PARTS), level))
    return Response(status_code=200)


@router.post("/wake_up", response_model=None)
async def wake_up(
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    tags: Annotated[list[str] | None, Query()] = None,
    model: Annotated[str | None, Query()] = None,
) -> Response:
    waking = set(tags or PARTS)
    unknown = sorted(waking - set(PARTS))
    if unknown:
        raise ApiError(400, f"unknown tags {unknown}: wake_up takes {list(PARTS)}", param="tags")
    targets = await base_models(catalog, model)

    def woken(current: SleepRequest | None) -> tuple[frozenset[str], int]:
        if current is None:
            return frozenset(), 1
        return current.asleep - waking, current.level

    await _ask(catalog, redis, names, targets, woken)
    return Response(status_code=200)


@router.get("/is_sleeping", response_model=None)
async def is_sleeping(
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    model: Annotated[str | None, Query()] = None,
) -> JSONResponse:
    """True while a part of the model (any, without `model`) is asked to sleep or a worker
    still has one asleep."""
    targets = await base_models(catalog, model)
    live = await catalog.live_models(max_age=0)
    for name in targets:
        asked = SleepRequest.decode(await redis.get(names.sleep(name)))
        workers = live[name].workers if name in live else ()
        if (asked is not None and asked.asleep) or any(_asleep(w) for w in workers):
            return JSONResponse({"is_sleeping": True})
    return JSONResponse({"is_sleeping": False})


async def _ask(
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    targets: list[str],
    change: Callable[[SleepRequest | None], tuple[frozenset[str], int]],
) -> None:
    """Write each model's new state (`change` of its current one, under one new gen), then
    wait for every worker of each to reach it."""
    gen = uuid.uuid4().hex
    for name in targets:
        current = SleepRequest.decode(await redis.get(names.sleep(name)))
        asleep, level = change(current)
        await redis.set(names.sleep(name), SleepRequest(asleep, level, gen).encode())
    what = "reach the sleep state asked for"
    for name in targets:
        await until_every_worker(
            catalog,
            name,
            reached=lambda w: _state(w).get("gen") == gen,
            failure=lambda w: _state(w).get("error") if _state(w).get("gen") == gen else None,
            what=what,
            timeout=SLEEP_TIMEOUT,
        )


def _state(worker: Beat) -> dict[str, object]:
    state = worker.get("sleep")
    return state if isinstance(state, dict) else {}


def _asleep(worker: Beat) -> bool:
    return bool(_state(worker).get("asleep")) or worker.get("sleeping") is True
