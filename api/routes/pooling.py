"""vLLM's `POST /pooling`: one pooling endpoint for every pooling model, answering with
whatever the model's task makes of each input: an embedding model's vector (as
/v1/embeddings gives it) or a classifier's label probabilities (as /classify's
`probs`; its logits with `use_activation: false`, what a reward model's score is).
Clients written against vLLM's generic pooling API (reward models, say) call this
rather than the task's own endpoint.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from api.collect import ClientGone
from api.deps import (
    Authenticated,
    CatalogDep,
    RecordDep,
    RouterDep,
    SettingsDep,
    SubmitterDep,
    json_body,
)
from api.embedding_jobs import (
    EmbeddingModel,
    check_pooling,
    embed,
    embedding_model,
    formatted,
    is_classifier,
    request_prompts,
    require_task,
)
from api.schemas.classify import ClassificationUsage, refuse_embedding_fields
from api.schemas.pooling import PoolingData, PoolingRequest, PoolingResponse
from engine.pooling_params import PoolingParams

router = APIRouter(dependencies=[Authenticated])

PoolingBody = Annotated[PoolingRequest, Depends(json_body(PoolingRequest))]


@router.post("/pooling", response_model=None)
async def pooling(
    request: Request,
    body: PoolingBody,
    catalog: CatalogDep,
    submitter: SubmitterDep,
    replies: RouterDep,
    record: RecordDep,
    settings: SettingsDep,
) -> Response:
    body.check_supported()
    body.model = body.model or await catalog.default_model()
    model = await embedding_model(request, catalog, submitter, record, body.model, "/pooling")
    task = body.task or ("classify" if is_classifier(model) else "embed")
    require_task(model, task, f"/pooling with task {task!r}")
    params = pooling_params(body, model, task)
    prompts = await request_prompts(catalog, model, body, settings, record)
    try:
        outputs = await embed(
            request,
            submitter,
            replies,
            record,
            model,
            prompts,
            params,
            priority=body.priority,
            id_prefix="pool",
        )
    except ClientGone:
        return Response(status_code=499)
    response = PoolingResponse(
        id=record.request_id or "",
        created=int(time.time()),
        model=body.model,
        data=[
            PoolingData(
                index=i,
                data=formatted(output, body.encoding_format),
            )
            for i, output in enumerate(outputs)
        ],
        usage=ClassificationUsage(
            prompt_tokens=record.prompt_tokens, total_tokens=record.prompt_tokens
        ),
    )
    return JSONResponse(response.model_dump(mode="json"))


def pooling_params(body: PoolingRequest, model: EmbeddingModel, task: str) -> PoolingParams:
    """What the workers are asked for: a classifier's activation switch, or an embedding's
    dimensions and normalization (refused here, before queueing, when the model cannot)."""
    if task == "classify":
        refuse_embedding_fields(body)
        return PoolingParams(activation=body.wants_activation, task="classify")
    params = PoolingParams(dimensions=body.dimensions, normalize=body.embedding_normalize())
    check_pooling(params, model)
    return params
