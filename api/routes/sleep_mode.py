"""vLLM's sleep mode: POST /sleep, POST /wake_up and GET /is_sleeping.

Mounted with --enable-sleep-mode and development mode (CONVEYOR_SERVER_DEV_MODE
or vLLM's VLLM_SERVER_DEV_MODE), as in vLLM. For an RLHF loop or a shared GPU:
`/sleep` frees the device's memory without stopping the server (level 1 keeps
the weights in host memory for a fast wake; level 2 drops them, and waking
reads the checkpoint again; requests running then end with a 503, or finish
first with `mode=wait`), `/wake_up` brings it back, `?tags=weights` or
`?tags=kv_cache` one part at a time. Each call names a model with `?model=` or
applies to every served one, writes the model's `sleep` key and answers once
every live worker announces the state (api/worker_rollout.py). While asleep,
requests that need the model get 503 `model_sleeping`; /v1/models, /tokenize
and the like go on. A worker started meanwhile joins asleep. With tenancy on
(--admin-key), only the admin key may call these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response

from api.auth import authorize_operator
from api.deps import CatalogDep, NamesDep, RedisDep
from api.errors import ApiError
from api.worker_rollout import Beat, base_models, roll_out
from conveyor.rollout_gen import next_gen
from conveyor.sleep_request import MODES, PARTS, SleepRequest

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
    mode: Annotated[str, Query()] = "abort",
    model: Annotated[str | None, Query()] = None,
) -> Response:
    if level not in (1, 2):
        raise ApiError(400, f"level must be 1 or 2, not {level}", param="level")
    if mode not in MODES:
        raise ApiError(
            400,
            f"mode {mode!r} is not supported: abort (end the requests running, the default) "
            "or wait (let them finish first)",
            param="mode",
        )
    targets = await base_models(catalog, model)
    await _ask(catalog, redis, names, targets, lambda _: (frozenset(PARTS), level, mode))
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

    def woken(current: SleepRequest | None) -> tuple[frozenset[str], int, str]:
        if current is None:
            return frozenset(), 1, "abort"
        return current.asleep - waking, current.level, current.mode

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
    still has one asleep; false with no model served at all."""
    try:
        targets = await base_models(catalog, model)
    except ApiError as exc:
        if exc.code != "no_worker":
            raise
        return JSONResponse({"is_sleeping": False})
    live = await catalog.live_models(max_age=0)
    for name in targets:
        asked = SleepRequest.decode(await redis.get(names.sleep(name)))
        workers = live[name].workers if name in live else ()
        if (asked is not None and asked.asleep) or any(_asleep(w) for w in workers):
            return JSONResponse({"is_sleeping": True})
    return JSONResponse({"is_sleeping": False})


Change = Callable[[SleepRequest | None], tuple[frozenset[str], int, str]]


async def _ask(
    catalog: CatalogDep, redis: RedisDep, names: NamesDep, targets: list[str], change: Change
) -> None:
    """Write each model's new state (`change` of its current one, under its next gen), then
    wait for every worker of each to reach it (or a later call's)."""

    def update(raw: str | None) -> tuple[str, str]:
        current = SleepRequest.decode(raw)
        gen = next_gen(current.gen if current is not None else None)
        asleep, level, mode = change(current)
        return SleepRequest(asleep, level, gen, mode).encode(), gen

    await roll_out(
        catalog,
        redis,
        names,
        targets,
        key=names.sleep,
        update=update,
        reached=lambda w: _state(w).get("gen"),
        error=lambda w: _state(w).get("error"),
        what="reach the sleep state asked for",
        timeout=SLEEP_TIMEOUT,
    )


def _state(worker: Beat) -> dict[str, Any]:
    state = worker.get("sleep")
    return state if isinstance(state, dict) else {}


def _asleep(worker: Beat) -> bool:
    return bool(_state(worker).get("asleep")) or worker.get("sleeping") is True
