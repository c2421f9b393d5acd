"""vLLM's POST /start_profile and /stop_profile: a torch trace of every worker's engine.

Mounted when the server is started with `--profiler-config '{"profiler": "torch",
"torch_profiler_dir": "/traces"}'` (or vLLM's older VLLM_TORCH_PROFILER_DIR), as vLLM
mounts them: for local performance work, not for production traffic (recording slows
every step). Each call writes the model's `profile` key (conveyor/profile_request.py)
and answers once every live worker announces it started (or stopped, its trace written
into the folder: workers/profiler_control.py); `?model=` names one model, else every
served one. With tenancy on (--admin-key), only the admin key may call them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from api.auth import authorize_operator
from api.deps import CatalogDep, NamesDep, RedisDep
from api.worker_rollout import Beat, base_models, roll_out
from conveyor.profile_request import ProfileRequest
from conveyor.rollout_gen import next_gen

# Writing a long recording's trace takes a while.
PROFILE_TIMEOUT = 300.0

router = APIRouter(dependencies=[Depends(authorize_operator)])


@router.post("/start_profile", response_model=None)
async def start_profile(
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    model: Annotated[str | None, Query()] = None,
) -> Response:
    await _ask(catalog, redis, names, model, on=True)
    return Response(status_code=200)


@router.post("/stop_profile", response_model=None)
async def stop_profile(
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    model: Annotated[str | None, Query()] = None,
) -> Response:
    await _ask(catalog, redis, names, model, on=False)
    return Response(status_code=200)


async def _ask(
    catalog: CatalogDep, redis: RedisDep, names: NamesDep, model: str | None, *, on: bool
) -> None:
    def update(raw: str | None) -> tuple[str, str]:
        asked = ProfileRequest.decode(raw)
        gen = next_gen(asked.gen if asked is not None else None)
        return ProfileRequest(on, gen).encode(), gen

    await roll_out(
        catalog,
        redis,
        names,
        await base_models(catalog, model),
        key=names.profile,
        update=update,
        reached=lambda w: _reached(w).get("gen"),
        what="start the profiler" if on else "stop the profiler and write its trace",
        timeout=PROFILE_TIMEOUT,
        error=lambda w: _reached(w).get("error"),
    )


def _reached(worker: Beat) -> dict[str, object]:
    reached = worker.get("profile")
    return reached if isinstance(reached, dict) else {}
