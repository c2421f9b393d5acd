"""POST /v1/embeddings: each input embedded by a worker of a pooling model
(api/embedding_jobs.py). Workers send each vector as base64 float32, which is
OpenAI's `encoding_format: "base64"` as it is (the official SDK asks for it by
default); "float" decodes it to a list.
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
    check_pooling,
    embed,
    embedding_model,
    formatted,
    is_classifier,
    request_prompts,
    require_task,
)
from api.invocations import invoked
from api.routes import classify
from api.schemas.classify import ClassificationRequest
from api.schemas.embeddings import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)
from engine.pooling_params import PoolingParams

router = APIRouter(dependencies=[Authenticated])

EmbeddingBody = Annotated[EmbeddingRequest, Depends(json_body(EmbeddingRequest))]


@router.post("/v1/embeddings", response_model=None)
async def create_embedding(
    request: Request,
    body: EmbeddingBody,
    catalog: CatalogDep,
    submitter: SubmitterDep,
    replies: RouterDep,
    record: RecordDep,
    settings: SettingsDep,
) -> Response:
    body.check_supported()
    body.model = body.model or await catalog.default_model()
    model = await embedding_model(request, catalog, submitter, record, body.model, "/v1/embeddings")
    if invoked(request) and is_classifier(model):
        # SageMaker's one path: an `input` for a classifier is a classification (vLLM's).
        record.endpoint = "/classify"
        as_classification = ClassificationRequest.model_validate(await request.json())
        as_classification.model = body.model
        as_classification.check_supported()
        return await classify.classification(
            request, as_classification, model, catalog, submitter, replies, record, settings
        )
    pooling = PoolingParams(dimensions=body.dimensions, normalize=body.normalize)
    check_pooling(pooling, model)
    require_task(model, "embed", "/v1/embeddings")
    prompts = await request_prompts(catalog, model, body, settings, record)
    try:
        outputs = await embed(
            request, submitter, replies, record, model, prompts, pooling, priority=body.priority
        )
    except ClientGone:
        return Response(status_code=499)
    response = EmbeddingResponse(
        id=record.request_id or "",
        created=int(time.time()),
        model=body.model,
        data=[
            EmbeddingData(
                index=i,
                embedding=formatted(output, body.encoding_format),
            )
            for i, output in enumerate(outputs)
        ],
        usage=EmbeddingUsage(prompt_tokens=record.prompt_tokens, total_tokens=record.prompt_tokens),
    )
    return JSONResponse(response.model_dump(mode="json"))
