"""vLLM's POST /reset_prefix_cache: every worker forgets its cached prompt prefixes.

Mounted in development mode (CONVEYOR_SERVER_DEV_MODE or vLLM's
VLLM_SERVER_DEV_MODE), as in vLLM: for benchmarks that must measure cold
prompts, and after a model's weights change under it. `?model=` names one
model; without it every served one is reset. The call writes the model's
`prefix_cache_reset` gen and answers once every live worker announces that
it reset (between two engine steps; running requests keep their blocks).
With tenancy on (--admin-key), only the admin key may call it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from api.auth import authorize_operator
from api.deps import CatalogDep, NamesDep, RedisDep
from api.worker_rollout import base_models, roll_out
from conveyor.rollout_gen import next_gen

RESET_TIMEOUT = 60.0

router = APIRouter(dependencies=[Depends(authorize_operator)])


@router.post("/reset_prefix_cache", response_model=None)
async def reset_prefix_cache(
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    model: Annotated[str | None, Query()] = None,
) -> Response:
    await roll_out(
        catalog,
        redis,
        names,
        await base_models(catalog, model),
        key=names.prefix_cache_reset,
        update=lambda raw: (gen := next_gen(raw), gen),
        reached=lambda w: w.get("prefix_cache_reset"),
        what="reset the prefix cache",
        timeout=RESET_TIMEOUT,
    )
    return Response(status_code=200)
