"""vLLM's POST /abort_requests: end in-flight requests now, without pausing.

Mounted in development mode, as in vLLM. `{"request_ids": [...]}` names requests by the
id their clients see (a response's `id`; "chatcmpl-<X-Request-Id>" when the client sent
that header); without ids, or with an empty list, every request in flight is ended. Each
ends as a /pause with mode abort ends it: every choice answered with the text it has and
finish_reason "abort"; one still queued is answered with no text. Only requests that
queued before the call are ended (an id sent again afterwards runs; both times are
Redis's clock, so API hosts' clocks need not agree), and batch lines are
left to their batch (POST /v1/batches/{id}/cancel). The call is published to every
worker and kept for the request timeout (conveyor/interrupt_request.py), so whichever
worker reads a queued request later ends it; a model paused meanwhile ends its queued
ones when it resumes. The answer counts the ids named, or, for every request, those in
the models' interactive streams (queued or running). With tenancy on (--admin-key), only
the admin key may call it.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from api.auth import authorize_operator
from api.deps import CatalogDep, NamesDep, RedisDep, SettingsDep
from api.errors import ApiError
from api.json_body import json_object_body
from api.queue_stats import lane_stats
from conveyor.bus import INTERACTIVE_LANE
from conveyor.interrupt_request import InterruptRequest, interrupt_memory

router = APIRouter(dependencies=[Depends(authorize_operator)])


@router.post("/abort_requests", response_model=None)
async def abort_requests(
    request: Request,
    catalog: CatalogDep,
    redis: RedisDep,
    names: NamesDep,
    settings: SettingsDep,
) -> JSONResponse:
    ids = (await json_object_body(request)).get("request_ids")
    if ids is None:
        ids = []  # left out (or null): every request, as an empty list asks
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise ApiError(
            400,
            "request_ids must be a list of request ids (the ids of the responses); leave it "
            "out to abort every request in flight",
            param="request_ids",
        )
    seconds, microseconds = await redis.time()  # the clock stream entry ids are stamped on
    call = InterruptRequest(tuple(dict.fromkeys(ids)), seconds + microseconds / 1e6)
    aborted = len(call.ids)
    if call.every_request:
        for model in await catalog.known_models():
            stats = await lane_stats(redis, names, model, [INTERACTIVE_LANE])
            aborted += stats[INTERACTIVE_LANE].length
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zadd(names.interrupted, call.members(), gt=True)
        pipe.zremrangebyscore(
            names.interrupted, "-inf", call.at - interrupt_memory(settings.request_timeout)
        )
        pipe.publish(names.interrupt, call.encode())
        await pipe.execute()
    return JSONResponse({"status": "aborted", "aborted": aborted})
