"""vLLM's runtime LoRA endpoints: POST /v1/load_lora_adapter and /v1/unload_lora_adapter.

Mounted only with --allow-runtime-lora-updating. A call edits the model's
`runtime_loras` hash in Redis (name -> path and a generation unique to the
call), which every worker of the model converges on (workers/lora_sync.py),
then waits until every live worker announces that generation, so a 200 means
the adapter is served (or gone) everywhere and the next request for it is
routed; a reload from the same folder (`load_inplace`) is a new generation
too. A worker that cannot load it answers the call with its reason and the
call's request is withdrawn (a failed reload puts the previous one back, so
the old adapter keeps serving); a call whose request another call replaced
meanwhile answers 409. Repeating a load that timed out waits for the standing
request. Adapters loaded at start-up (--lora-modules) are not touched. With
tenancy on (--admin-key), only the admin key may call these: an adapter is
served to every project.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from api.auth import authorize_operator
from api.catalog import LiveModel
from api.deps import CatalogDep, NamesDep, RedisDep, json_body
from api.errors import ApiError
from api.schemas.lora_adapters import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from api.worker_rollout import named_base_model
from conveyor.bus import KNOWN_NAME_TTL_SECONDS
from conveyor.runtime_lora import RuntimeLoRA

# Workers take up to a heartbeat to see a change and another to announce it; reading a
# large adapter takes longer. Past this the call answers 504 and the change stays asked for.
UPDATE_TIMEOUT = 120.0
_POLL = 0.2


router = APIRouter(dependencies=[Depends(authorize_operator)])


# Put the previous request back (or drop ours) only if the entry is still ours: a newer
# call's request is never touched.
_WITHDRAW = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1])
  else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
  return 1
end
return 0
"""


@router.post("/v1/load_lora_adapter", response_model=None)
async def load_lora_adapter(
    body: Annotated[LoadLoRAAdapterRequest, Depends(json_body(LoadLoRAAdapterRequest))],
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
) -> PlainTextResponse:
    name, path = body.lora_name, body.lora_path
    live = await catalog.live_models(max_age=0)
    aliases = await catalog.aliases()
    base = _base_model(live, aliases, body.model)
    other = live.get(name)
    if name == base or (other is not None and other.parent is None) or name in aliases:
        raise ApiError(400, f"`{name}` is the name of a served model", param="lora_name")
    key = names.runtime_loras(base)
    ours = RuntimeLoRA(path, uuid.uuid4().hex)
    previous_raw = await redis.hget(key, name)
    if other is not None and other.parent not in (None, base):
        raise ApiError(
            400,
            f"`{name}` is already a LoRA adapter of the model `{other.parent}`",
            param="lora_name",
        )
    if previous_raw is None and other is not None:
        raise _loaded_at_start_up(name, "replaced")
    if previous_raw is None and not await redis.hsetnx(key, name, ours.encode()):
        previous_raw = await redis.hget(key, name)  # another call got there first
    previous = RuntimeLoRA.decode(previous_raw)
    if previous_raw is not None:
        if body.load_inplace:
            await redis.hset(key, name, ours.encode())
        elif previous is not None and previous.path == path:
            ours = previous  # the same request again (after a 504, say): wait for it
        else:
            raise ApiError(
                400,
                f"The lora adapter '{name}' has already been loaded. "
                "Pass load_inplace: true to replace it.",
                param="lora_name",
                code="lora_adapter_exists",
            )
    # 503 (not 404) for it from now on while workers restart.
    await redis.set(names.known_adapter(name), base, ex=KNOWN_NAME_TTL_SECONDS)
    deadline = time.monotonic() + UPDATE_TIMEOUT
    while True:
        current = RuntimeLoRA.decode(await redis.hget(key, name))
        if current is None or current.gen != ours.gen:
            raise ApiError(
                409,
                f"The lora adapter '{name}' was changed or unloaded by another call while "
                "this one waited.",
                param="lora_name",
                code="lora_adapter_superseded",
            )
        failure = await _failure(redis, names.lora_errors(base), name, ours.gen)
        if failure is not None:
            await redis.hdel(names.lora_errors(base), name)  # read: answered here
            restore = previous_raw if ours is not previous and previous_raw else ""
            await redis.eval(_WITHDRAW, 1, key, name, ours.encode(), restore)
            if not restore:
                await redis.delete(names.known_adapter(name))
            kept = " (the adapter loaded before keeps serving)" if restore else ""
            raise ApiError(
                400, f"Failed to load LoRA adapter '{name}': {failure}{kept}", param="lora_path"
            )
        workers = (await catalog.live_models(max_age=_POLL)).get(base)
        if workers is not None and all(
            _field(w, "lora_gens").get(name) == ours.gen for w in workers.workers
        ):
            await redis.hdel(names.lora_errors(base), name)  # an older load's, if any
            if ours is previous:  # said so: files rewritten since are not read again
                return PlainTextResponse(
                    f"Success: LoRA adapter '{name}' is already loaded from {path}; "
                    "pass load_inplace: true to read its files again."
                )
            return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")
        _check_time(deadline, base, f"load the LoRA adapter '{name}'")
        await asyncio.sleep(_POLL)


@router.post("/v1/unload_lora_adapter", response_model=None)
async def unload_lora_adapter(
    body: Annotated[UnloadLoRAAdapterRequest, Depends(json_body(UnloadLoRAAdapterRequest))],
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
) -> PlainTextResponse:
    name = body.lora_name
    live = await catalog.live_models(max_age=0)
    bases = [m for m in live.values() if m.parent is None]
    if body.model is not None:
        aliases = await catalog.aliases()
        bases = [live[_base_model(live, aliases, body.model)]]
    owner = None
    for base in bases:
        if await redis.hexists(names.runtime_loras(base.name), name):
            owner = base
            break
    if owner is None:
        adapter = live.get(name)
        if adapter is not None and adapter.parent is not None:
            raise _loaded_at_start_up(name, "unloaded")
        raise ApiError(
            404,
            f"The lora adapter '{name}' cannot be found.",
            param="lora_name",
            code="lora_adapter_not_found",
        )
    await redis.hdel(names.runtime_loras(owner.name), name)
    await redis.delete(names.known_adapter(name))
    deadline = time.monotonic() + UPDATE_TIMEOUT
    while True:
        workers = (await catalog.live_models(max_age=_POLL)).get(owner.name)
        if workers is None or not any(name in _field(w, "loras") for w in workers.workers):
            return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")
        _check_time(deadline, owner.name, f"unload the LoRA adapter '{name}'")
        await asyncio.sleep(_POLL)


def _loaded_at_start_up(name: str, action: str) -> ApiError:
    return ApiError(
        400,
        f"The lora adapter '{name}' was loaded at start-up (--lora-modules) and cannot be "
        f"{action} at run time.",
        param="lora_name",
    )


def _base_model(live: dict[str, LiveModel], aliases: dict[str, str], model: str | None) -> str:
    """The served model an adapter belongs to: the one named (by any of its names), or
    the only one."""
    if model is not None:
        return named_base_model(live, aliases, model)
    bases = [m.name for m in live.values() if m.parent is None]
    if len(bases) != 1:
        raise ApiError(
            400 if bases else 503,
            "name the model the adapter is for: `model` is required when not exactly one "
            "model is served"
            if bases
            else "no model has a live worker right now; try again shortly",
            param="model" if bases else None,
            code=None if bases else "no_worker",
        )
    return bases[0]


def _field(worker: dict[str, object], field: str) -> dict[str, object]:
    """A heartbeat's adapter map: `loras` (name -> path) or `lora_gens` (name -> gen)."""
    value = worker.get(field)
    return value if isinstance(value, dict) else {}


async def _failure(redis: RedisDep, key: str, name: str, gen: str) -> str | None:
    """A worker's reason for failing the load `gen` of `name`, if one reported it."""
    raw = await redis.hget(key, name)
    if raw is None:
        return None
    try:
        detail = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(detail, dict) or detail.get("gen") != gen:
        return None
    return f"{detail.get('error')} (worker {detail.get('instance')})"


def _check_time(deadline: float, model: str, what: str) -> None:
    if time.monotonic() > deadline:
        raise ApiError(
            504,
            f"The workers of `{model}` did not {what} within {UPDATE_TIMEOUT:.0f} s; the "
            "change stays requested and takes effect when they do.",
            code="timeout",
        )
