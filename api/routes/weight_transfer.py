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

`/update_weights` writes the model's `weights` key (conveyor/weight_update_request.py)
and answers once every live worker read the folder into its model (a worker started
later reads it too, so all serve the same weights); a worker that could not (a folder
missing or of another model) makes it a 500 with the reason, and its old weights serve
on. `/init_weight_transfer_engine`, `/start_weight_update` and `/finish_weight_update`
have nothing to set up for a folder; the last records the version. `?model=` names a
model; without it every served one. With tenancy on (--admin-key), only the admin key
may call these.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import JSONResponse

from api.auth import authorize_operator
from api.deps import CatalogDep, NamesDep, RedisDep, SettingsDep
from api.errors import ApiError
from api.worker_rollout import base_models, put_back, roll_out
from conveyor.rollout_gen import next_gen
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


@router.post("/init_weight_transfer_engine", response_model=None)
async def init_weight_transfer_engine(
    settings: SettingsDep, body: Annotated[dict[str, Any], Body()]
) -> JSONResponse:
    _require_disk_backend(settings)
    if body.get("init_info") is None:
        raise ApiError(400, "Missing 'init_info' in request body", param="init_info")
    return JSONResponse({"message": "Weight transfer initialized"})


@router.post("/start_weight_update", response_model=None)
async def start_weight_update(settings: SettingsDep) -> JSONResponse:
    _require_disk_backend(settings)
    return JSONResponse({"message": "Weight update started"})


@router.post("/update_weights", response_model=None)
async def update_weights(
    settings: SettingsDep,
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    body: Annotated[dict[str, Any], Body()],
    model: ModelQuery = None,
) -> JSONResponse:
    _require_disk_backend(settings)
    info = body.get("update_info")
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
    targets = await base_models(catalog, model)
    # Each key's value before this call, by the gen the call gave it.
    before: dict[str, str | None] = {}

    def update(raw: str | None) -> tuple[str, str]:
        current = WeightUpdateRequest.decode(raw)
        gen = next_gen(current.gen if current is not None else None)
        before[gen] = raw
        return WeightUpdateRequest(os.path.normpath(path), gen).encode(), gen

    try:
        await roll_out(
            catalog,
            redis,
            names,
            targets,
            key=names.weights,
            update=update,
            reached=lambda w: (w.get("weights") or {}).get("gen"),
            error=lambda w: (w.get("weights") or {}).get("error"),
            what=f"read the weights of {path}",
            timeout=UPDATE_TIMEOUT,
        )
    except ApiError as exc:
        if exc.status == 500:
            # A worker could not read the folder (most often none could): a worker started
            # later must load the weights the others serve, not try this folder again.
            # Workers that did read it keep it until the next update.
            for name in targets:
                key = names.weights(name)
                current = WeightUpdateRequest.decode(await redis.get(key))
                if current is not None and current.gen in before:
                    await put_back(redis, key, current.gen, _gen_of, before[current.gen])
        raise
    return JSONResponse({"message": "Weights updated"})


def _gen_of(raw: str | None) -> str | None:
    request = WeightUpdateRequest.decode(raw)
    return request.gen if request is not None else None


@router.post("/finish_weight_update", response_model=None)
async def finish_weight_update(
    settings: SettingsDep,
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    body: Annotated[dict[str, Any] | None, Body()] = None,
    model: ModelQuery = None,
) -> JSONResponse:
    _require_disk_backend(settings)
    version = (body or {}).get("weight_version")
    if version is not None:
        await _set_version(catalog, redis, names, model, version, "weight_version")
    return JSONResponse({"message": "Weight update finished"})


@router.post("/update_weight_version", response_model=None)
async def update_weight_version(
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    body: Annotated[dict[str, Any], Body()],
    model: ModelQuery = None,
) -> JSONResponse:
    version = body.get("new_version")
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
