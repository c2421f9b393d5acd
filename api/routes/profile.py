"""vLLM's POST /start_profile and /stop_profile: a torch trace of every worker's engine.

Mounted when the server is started with `--profiler-config '{"profiler": "torch",
"torch_profiler_dir": "/traces"}'` (or vLLM's older VLLM_TORCH_PROFILER_DIR), as vLLM
mounts them: for local performance work, not for production traffic (recording slows
every step). Each call writes the model's `profile` key (conveyor/profile_request.py)
and answers once every live worker announces it started (or stopped, its trace written
into the folder: workers/profiler_control.py); `?model=` names one model, else every
served one. A worker started without --profiler-config, one that could not record or
write, or none left to report is a 500, and a failed start is taken back everywhere.
With tenancy on (--admin-key), only the admin key may call them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from api.auth import authorize_operator
from api.deps import CatalogDep, NamesDep, RedisDep
from api.errors import ApiError
from api.worker_rollout import Beat, advance, base_models, watch_workers
from conveyor.profile_request import ProfileRequest
from conveyor.rollout_gen import covers, next_gen

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
    """Write each model's new state under its next gen, nudge its workers, and wait for
    every live one to report it. A start that fails anywhere is taken back everywhere:
    no worker, one started later included, records a session nobody will stop."""
    targets = await base_models(catalog, model)
    gens = {name: await _advance(redis, names, name, on) for name in targets}
    try:
        for name, gen in gens.items():
            await watch_workers(
                catalog,
                name,
                partial(_settled, name, gen),
                "start the profiler" if on else "stop the profiler and write its trace",
                PROFILE_TIMEOUT,
            )
    except ApiError:
        if on:
            for name in targets:
                await _advance(redis, names, name, on=False)
        raise


async def _advance(redis: RedisDep, names: NamesDep, model: str, on: bool) -> str:
    def update(raw: str | None) -> tuple[str, str]:
        asked = ProfileRequest.decode(raw)
        gen = next_gen(asked.gen if asked is not None else None)
        return ProfileRequest(on, gen).encode(), gen

    gen = await advance(redis, names.profile(model), update)
    await redis.publish(names.controls(model), gen)
    return gen


def _settled(model: str, gen: str, workers: Sequence[Beat]) -> bool | None:
    """True once every live worker reported `gen` (or later); a 500 at once for a worker
    that cannot record, one that failed this call, or none left to report."""
    if not workers:
        raise ApiError(
            500,
            f"No worker of `{model}` is left to report the profiler call (they stopped "
            "before it was done; a trace being written may be lost)",
        )
    done = True
    for worker in workers:
        reached = worker.get("profile")
        if not isinstance(reached, dict):
            raise ApiError(
                500,
                f"Worker {worker.get('instance')} of `{model}` was started without "
                "--profiler-config: it cannot record (start every worker with it)",
            )
        if reached.get("gen") == gen and reached.get("error"):
            raise ApiError(
                500,
                f"Worker {worker.get('instance')} of `{model}` could not run the profiler: "
                f"{reached['error']}",
            )
        done = done and covers(reached.get("gen"), gen)
    return True if done else None
