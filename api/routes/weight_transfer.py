"""vLLM's weight-transfer endpoints for its "disk" backend: an RL loop's trainer writes a
step's weights to a folder every worker can read, and the server reads them in place.

Mounted in development mode (CONVEYOR_SERVER_DEV_MODE or vLLM's
VLLM_SERVER_DEV_MODE), as vLLM mounts them; answering needs
`--weight-transfer-config '{"backend": "disk"}'`. The flow, as vLLM's:

    POST /init_weight_transfer_engine {"init_info": {}}
    POST /pause                                    (optional: what runs meanwhile)
    POST /start_weight_update
    POST /update_weights {"update_info": {"path": "/ckpt/step-42"}}
    POST /finish_weight_update {"weight_version": "step-42"}
    POST /resume
    GET  /weight_info  -> {"weight_version": "step-42"}
    GET  /get_world_size?include_dp=true  -> {"world_size": 2}

`/update_weights` writes the model's `weights` key (conveyor/weight_update_request.py)
and answers once every live worker reported (a worker started later reads the folder
too, so all serve the same weights). A worker that could not (a folder missing or of
another model, too little host memory) makes it a 500 with the reason, and serves its
old weights on; where none could, the key is put back so later workers load the old
weights as well. Bodies are read as vLLM reads them: JSON, whatever the Content-Type.
`/init_weight_transfer_engine`, `/start_weight_update` and `/finish_weight_update`
have nothing to set up for a folder; the last records the version (a 409 where the
latest update failed on a live worker: the version must name weights served). `?model=` names a
model; without it every served one. With tenancy on (--admin-key), only the admin key
may call these.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from api.auth import authorize_operator
from api.deps import CatalogDep, NamesDep, RedisDep, SettingsDep
from api.errors import ApiError
from api.json_body import json_object_body
from api.worker_rollout import Beat, advance, base_models, put_back, watch_workers
from conveyor.rollout_gen import covers, next_gen
from conveyor.weight_update_request import WeightUpdateRequest

# Reading a large checkpoint from a network disk takes minutes.
UPDATE_TIMEOUT = 600.0

router = APIRouter(dependencies=[Depends(authorize_operator)])

ModelQuery = Annotated[str | None, Query()]


def _require_disk_backend(settings: SettingsDep) -> None:
    if settings.weight_transfer_backend is None:
        raise ApiError(
            400,
            "weight transfer is not configured: start the server with "
            '--weight-transfer-config \'{"backend": "disk"}\'',
        )


@router.get("/get_world_size", response_model=None)
async def get_world_size(
    catalog: CatalogDep,
    include_dp: Annotated[bool, Query()] = True,
    model: ModelQuery = None,
) -> JSONResponse:
    """vLLM's: the ranks serving the model (the first served one without `model`), for a
    trainer sizing its weight-transfer group. Each worker runs the model whole on one
    device (tensor and pipeline parallel 1), so its workers are the data-parallel ranks."""
    targets = await base_models(catalog, model)
    live = (await catalog.live_models()).get(targets[0])
    replicas = len(live.workers) if live is not None else 0
    return JSONResponse({"world_size": max(replicas, 1) if include_dp else 1})


@router.post("/init_weight_transfer_engine", response_model=None)
async def init_weight_transfer_engine(request: Request, settings: SettingsDep) -> JSONResponse:
    _require_disk_backend(settings)
    if (await json_object_body(request)).get("init_info") is None:
        raise ApiError(400, "Missing 'init_info' in request body", param="init_info")
    return JSONResponse({"message": "Weight transfer initialized"})


@router.post("/start_weight_update", response_model=None)
async def start_weight_update(settings: SettingsDep) -> JSONResponse:
    _require_disk_backend(settings)
    return JSONResponse({"message": "Weight update started"})


@router.post("/update_weights", response_model=None)
async def update_weights(
    request: Request,
    settings: SettingsDep,
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    model: ModelQuery = None,
) -> JSONResponse:
    _require_disk_backend(settings)
    info = (await json_object_body(request)).get("update_info")
    if info is None:
        raise ApiError(400, "Missing 'update_info' in request body", param="update_info")
    path = info.get("path") if isinstance(info, dict) else None
    if not isinstance(path, str) or not os.path.isabs(path):
        raise ApiError(
            400,
            "update_info.path must be the absolute path of a checkpoint folder that every "
            "worker can read",
            param="update_info.path",
        )
    for name in await base_models(catalog, model):
        await _update_model(catalog, redis, names, name, os.path.normpath(path))
    return JSONResponse({"message": "Weights updated"})


@router.post("/finish_weight_update", response_model=None)
async def finish_weight_update(
    request: Request,
    settings: SettingsDep,
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    model: ModelQuery = None,
) -> JSONResponse:
    _require_disk_backend(settings)
    version = (await json_object_body(request)).get("weight_version")
    for name in await base_models(catalog, model):
        failure = await last_update_failure(catalog, redis, names, name)
        if failure is not None:
            # As vLLM's disk backend refuses to finish a session that loaded nothing: a
            # version must name weights that are served.
            raise ApiError(
                409,
                f"the last /update_weights of `{name}` failed ({failure}): it serves the "
                "weights it served before, so no weight version is recorded",
            )
    if version is not None:
        await _set_version(catalog, redis, names, model, version, "weight_version")
    return JSONResponse({"message": "Weight update finished"})


async def last_update_failure(
    catalog: CatalogDep, redis: RedisDep, names: NamesDep, model: str
) -> str | None:
    """Why a live worker of `model` could not read the folder of the model's latest
    update (None: every worker read it, or none was asked)."""
    asked = WeightUpdateRequest.decode(await redis.get(names.weights(model)))
    if asked is None:
        return None
    live = (await catalog.live_models(max_age=0)).get(model)
    for worker in live.workers if live is not None else ():
        reached = worker.get("weights") or {}
        if reached.get("gen") == asked.gen and reached.get("error"):
            return str(reached["error"])
    return None


@router.post("/update_weight_version", response_model=None)
async def update_weight_version(
    request: Request,
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    model: ModelQuery = None,
) -> JSONResponse:
    version = (await json_object_body(request)).get("new_version")
    if version is None:
        raise ApiError(400, "Missing 'new_version' in request body", param="new_version")
    await _set_version(catalog, redis, names, model, version, "new_version")
    return JSONResponse({"success": True, "new_version": version})


@router.get("/weight_info", response_model=None)
async def weight_info(
    catalog: CatalogDep, redis: RedisDep, names: NamesDep, model: ModelQuery = None
) -> JSONResponse:
    """The version the trainer last named (null before any); the first served model's
    without `model`."""
    targets = await base_models(catalog, model)
    return JSONResponse({"weight_version": await redis.get(names.weight_version(targets[0]))})


async def _update_model(
    catalog: CatalogDep, redis: RedisDep, names: NamesDep, model: str, path: str
) -> None:
    """Ask every worker of `model` to read `path`, and wait for each one's report. Where
    none could, the key is put back to the folder they serve (under this call's gen, so
    gens never go back and a later call's is newer), so a worker started later loads
    that; where some could, the key stays and the others are named."""
    key = names.weights(model)
    before: dict[str, str | None] = {}

    def update(raw: str | None) -> tuple[str, str]:
        current = WeightUpdateRequest.decode(raw)
        gen = next_gen(current.gen if current is not None else None)
        before["path"] = current.path if current is not None else None
        return WeightUpdateRequest(path, gen).encode(), gen

    gen = await advance(redis, key, update)
    await redis.publish(names.controls(model), gen)
    reports = await _reports(catalog, model, gen)
    failed = {instance: error for instance, error in reports.items() if error is not None}
    if reports and not failed:
        return
    if len(failed) == len(reports):
        kept = WeightUpdateRequest(before["path"], gen).encode()
        await put_back(redis, key, gen, _gen_of, kept)
        reason = next(iter(failed.values()), None) or (
            "every worker that was reading it is gone (out of memory?)"
        )
        raise ApiError(
            500,
            f"The workers of `{model}` could not read the weights of {path}: {reason}; "
            "they serve the weights they served before",
        )
    raise ApiError(
        500,
        f"{len(failed)} of {len(reports)} workers of `{model}` could not read the weights of "
        f"{path}: {next(iter(failed.values()))} ({', '.join(sorted(failed))}); the others "
        "serve them, as will workers started later; call again to retry",
    )


async def _reports(catalog: CatalogDep, model: str, gen: str) -> dict[str, str | None]:
    """Once every live worker of `model` reported on `gen` (or a later call's): each
    one's error (None: it serves the folder). A 504 past the timeout."""

    def reported(workers: Sequence[Beat]) -> dict[str, str | None] | None:
        reached = {str(w.get("instance")): w.get("weights") or {} for w in workers}
        if not all(covers(r.get("gen"), gen) for r in reached.values()):
            return None
        return {i: r.get("error") if r.get("gen") == gen else None for i, r in reached.items()}

    return await watch_workers(catalog, model, reported, "read the new weights", UPDATE_TIMEOUT)


def _gen_of(raw: str | None) -> str | None:
    request = WeightUpdateRequest.decode(raw)
    return request.gen if request is not None else None


async def _set_version(
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    model: str | None,
    version: object,
    param: str,
) -> None:
    if not isinstance(version, str) or not version:
        raise ApiError(400, f"{param} must be a non-empty string", param=param)
    for name in await base_models(catalog, model):
        await redis.set(names.weight_version(name), version)
