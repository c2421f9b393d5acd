"""vLLM's pause endpoints: POST /pause, POST /resume and GET /is_paused.

Mounted in development mode (CONVEYOR_SERVER_DEV_MODE or vLLM's
VLLM_SERVER_DEV_MODE), as in vLLM. For an RL loop that updates weights between
rollouts: `/pause` stops generation without freeing memory (sleep mode frees it),
and requests sent meanwhile wait in the model's streams until `/resume`. What
runs when the pause comes is ended at once, each choice answered with the text it
has and finish_reason "abort" (`mode=abort`, the default), let finish first
(`mode=wait`; vLLM's older `wait_for_inflight_requests=true` means the same), or
frozen with its KV blocks and carried on after `/resume` (`mode=keep`).
`clear_cache` (default true; not with keep) empties the prefix cache once the
engines hold nothing. Each call names a model with `?model=` or applies to every
served one, writes the model's `pause` key and answers once every live worker
announces it (api/worker_rollout.py); a worker started meanwhile joins paused.
With tenancy on (--admin-key), only the admin key may call these.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from api.auth import authorize_operator
from api.deps import CatalogDep, NamesDep, RedisDep
from api.errors import ApiError
from api.worker_rollout import base_models, roll_out
from conveyor.pause_request import ABORT, MODES, WAIT, PauseRequest
from conveyor.rollout_gen import next_gen

# Mode wait answers once the requests running have finished: long generations take minutes.
PAUSE_TIMEOUT = 600.0

router = APIRouter(dependencies=[Depends(authorize_operator)])


@router.post("/pause", response_model=None)
async def pause(
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    mode: Annotated[str, Query()] = ABORT,
    wait_for_inflight_requests: Annotated[bool, Query()] = False,
    clear_cache: Annotated[bool, Query()] = True,
    model: Annotated[str | None, Query()] = None,
) -> JSONResponse:
    if mode not in MODES:
        raise ApiError(
            400,
            f"mode {mode!r} is not supported: abort (end the requests running with what they "
            "have, the default), wait (let them finish first) or keep (freeze them until "
            "/resume)",
            param="mode",
        )
    if wait_for_inflight_requests:
        mode = WAIT  # vLLM's older spelling of mode wait, which wins as there
    targets = await base_models(catalog, model)
    await _ask(catalog, redis, names, targets, paused=True, mode=mode, clear_cache=clear_cache)
    return JSONResponse({"status": "paused"})


@router.post("/resume", response_model=None)
async def resume(
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    model: Annotated[str | None, Query()] = None,
) -> JSONResponse:
    targets = await _models_asked(catalog, model)
    await _ask(catalog, redis, names, targets, paused=False, mode=ABORT, clear_cache=False)
    return JSONResponse({"status": "resumed"})


@router.get("/is_paused", response_model=None)
async def is_paused(
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    model: Annotated[str | None, Query()] = None,
) -> JSONResponse:
    """True while the model (any, without `model`) is asked to pause, served now or not."""
    for name in await _models_asked(catalog, model):
        asked = PauseRequest.decode(await redis.get(names.pause(name)))
        if asked is not None and asked.paused:
            return JSONResponse({"is_paused": True})
    return JSONResponse({"is_paused": False})


async def _models_asked(catalog: CatalogDep, model: str | None) -> list[str]:
    """The served models named (every one without `model`); with no live worker, the
    models ever announced: a pause outlives the workers (the next one joins paused), so
    /is_paused must still see it and /resume still lift it."""
    try:
        return await base_models(catalog, model)
    except ApiError as exc:
        if exc.code not in ("no_worker", "model_not_found"):
            raise
        known = await catalog.known_models()
        if model is None:
            return sorted(known)
        if model in known:
            return [model]
        raise


async def _ask(
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    targets: list[str],
    *,
    paused: bool,
    mode: str,
    clear_cache: bool,
) -> None:
    """Write each model's new state under its next gen, then wait for every worker of each
    to reach it (or a later call's)."""

    def update(raw: str | None) -> tuple[str, str]:
        current = PauseRequest.decode(raw)
        gen = next_gen(current.gen if current is not None else None)
        return PauseRequest(paused, gen, mode, clear_cache).encode(), gen

    await roll_out(
        catalog,
        redis,
        names,
        targets,
        key=names.pause,
        update=update,
        reached=lambda w: (w.get("pause") or {}).get("gen"),
        what="pause" if paused else "resume",
        timeout=PAUSE_TIMEOUT,
    )
