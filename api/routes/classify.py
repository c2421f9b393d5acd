"""vLLM's `/classify`: each input through a sequence classifier's head (the pooling
runner with a `*ForSequenceClassification` checkpoint), answered with its labels'
probabilities and the most likely label's name. The workers compute the
probabilities (engine/pooler.py); the labels are what they publish.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from api.catalog import ModelCatalog
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
    embed,
    embedding_model,
    request_prompts,
    require_task,
    vector,
)
from api.reply_router import ReplyRouter
from api.request_record import RequestRecord
from api.request_submitter import RequestSubmitter
from api.schemas.classify import (
    ClassificationData,
    ClassificationRequest,
    ClassificationResponse,
    ClassificationUsage,
)
from conveyor.settings import Settings
from engine.pooling_params import PoolingParams

router = APIRouter(dependencies=[Authenticated])

ClassificationBody = Annotated[ClassificationRequest, Depends(json_body(ClassificationRequest))]


@router.post("/classify", response_model=None)
@router.post("/v1/classify", response_model=None)
async def classify(
    request: Request,
    body: ClassificationBody,
    catalog: CatalogDep,
    submitter: SubmitterDep,
    replies: RouterDep,
    record: RecordDep,
    settings: SettingsDep,
) -> Response:
    body.check_supported()
    body.model = body.model or await catalog.default_model()
    model = await embedding_model(request, catalog, submitter, record, body.model, "/classify")
    require_task(model, "classify", "/classify")
    return await classification(request, body, model, catalog, submitter, replies, record, settings)


async def classification(
    request: Request,
    body: ClassificationRequest,
    model: EmbeddingModel,
    catalog: ModelCatalog,
    submitter: RequestSubmitter,
    replies: ReplyRouter,
    record: RequestRecord,
    settings: Settings,
) -> Response:
    """`body`'s inputs through `model`, a classifier, as /classify answers them (also an
    /invocations body with `input` for a classifier: api/routes/embeddings.py)."""
    prompts = await request_prompts(catalog, model, body, settings, record)
    try:
        outputs = await embed(
            request,
            submitter,
            replies,
            record,
            model,
            prompts,
            PoolingParams(activation=body.wants_activation, task="classify"),
            priority=body.priority,
            id_prefix="classify",
        )
    except ClientGone:
        return Response(status_code=499)
    shape = model.tokenizer.shape
    labels = shape.labels if shape is not None else ()
    data = []
    for index, output in enumerate(outputs):
        probs = vector(output)
        best = max(range(len(probs)), key=probs.__getitem__)
        label = labels[best] if best < len(labels) else f"LABEL_{best}"
        data.append(
            ClassificationData(index=index, label=label, probs=probs, num_classes=len(probs))
        )
    response = ClassificationResponse(
        id=record.request_id or "",
        created=int(time.time()),
        model=body.model,
        data=data,
        usage=ClassificationUsage(
            prompt_tokens=record.prompt_tokens, total_tokens=record.prompt_tokens
        ),
    )
    return JSONResponse(response.model_dump(mode="json"))
