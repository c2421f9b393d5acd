"""vLLM's `/score` and `/rerank` (Jina's and Cohere's shape) for embedding models.

Each distinct text is embedded once (api/embedding_jobs.py), normalised, and a
pair's score is the cosine similarity of its two vectors: what vLLM computes
with a model that embeds rather than scores pairs. Cross-encoder rerankers
(BERT-family classifiers) are not served here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
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
    SubmitterDep,
    json_body,
)
from api.embedding_jobs import embed, embedding_model, tokens_to_keep, truncated_text_ids, vector
from api.reply_router import ReplyRouter
from api.request_record import RequestRecord
from api.request_submitter import RequestSubmitter
from api.schemas.score import (
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
    ScoreUsage,
)
from engine.pooling_params import PoolingParams
from engine.tokenizer import Tokenizer

router = APIRouter(dependencies=[Authenticated])

ScoreBody = Annotated[ScoreRequest, Depends(json_body(ScoreRequest))]
RerankBody = Annotated[RerankRequest, Depends(json_body(RerankRequest))]


@router.post("/score", response_model=None)
@router.post("/v1/score", response_model=None)
async def score(
    request: Request,
    body: ScoreBody,
    catalog: CatalogDep,
    submitter: SubmitterDep,
    replies: RouterDep,
    record: RecordDep,
) -> Response:
    pairs = body.pairs()
    body.model = body.model or await catalog.default_model()
    try:
        vectors = await _unit_vectors(
            request,
            catalog,
            submitter,
            replies,
            record,
            body.model,
            [text for pair in pairs for text in pair],
            body.truncate_prompt_tokens,
            body.priority,
            "score",
        )
    except ClientGone:
        return Response(status_code=499)
    response = ScoreResponse(
        id=record.request_id or "",
        created=int(time.time()),
        model=body.model,
        data=[
            ScoreData(index=i, score=_dot(vectors[a], vectors[b])) for i, (a, b) in enumerate(pairs)
        ],
        usage=ScoreUsage(prompt_tokens=record.prompt_tokens, total_tokens=record.prompt_tokens),
    )
    return JSONResponse(response.model_dump(mode="json"))


@router.post("/rerank", response_model=None)
@router.post("/v1/rerank", response_model=None)
@router.post("/v2/rerank", response_model=None)
async def rerank(
    request: Request,
    body: RerankBody,
    catalog: CatalogDep,
    submitter: SubmitterDep,
    replies: RouterDep,
    record: RecordDep,
) -> Response:
    documents = body.texts()
    body.model = body.model or await catalog.default_model()
    try:
        vectors = await _unit_vectors(
            request,
            catalog,
            submitter,
            replies,
            record,
            body.model,
            [body.query, *documents],
            body.truncate_prompt_tokens,
            body.priority,
            "rerank",
        )
    except ClientGone:
        return Response(status_code=499)
    query = vectors[body.query]
    results = [
        RerankResult(
            index=i,
            document=RerankDocument(text=text) if body.return_documents else None,
            relevance_score=_dot(query, vectors[text]),
        )
        for i, text in enumerate(documents)
    ]
    results.sort(key=lambda result: -result.relevance_score)
    if body.top_n:
        results = results[: body.top_n]
    response = RerankResponse(
        id=record.request_id or "",
        model=body.model,
        usage=RerankUsage(total_tokens=record.prompt_tokens),
        results=results,
    )
    return JSONResponse(response.model_dump(mode="json", exclude_none=True))


async def _unit_vectors(
    request: Request,
    catalog: ModelCatalog,
    submitter: RequestSubmitter,
    replies: ReplyRouter,
    record: RequestRecord,
    model_name: str,
    texts: Sequence[str],
    truncate_prompt_tokens: int | None,
    priority: int,
    kind: str,
) -> dict[str, list[float]]:
    """Each distinct text's L2-normalised vector (embedded once however often it occurs)."""
    model = await embedding_model(request, catalog, submitter, record, model_name, f"/{kind}")
    unique = list(dict.fromkeys(texts))
    keep = tokens_to_keep(truncate_prompt_tokens, model.max_model_len)
    prompts = await catalog.in_thread(_tokenize, model.tokenizer.tokenizer, unique, keep)
    outputs = await embed(
        request,
        submitter,
        replies,
        record,
        model,
        prompts,
        PoolingParams(normalize=True),  # unit vectors: a dot product is the cosine
        priority=priority,
        id_prefix=kind,
        param="text_2" if kind == "score" else "documents",
    )
    return {text: vector(output) for text, output in zip(unique, outputs, strict=True)}


def _tokenize(tokenizer: Tokenizer, texts: list[str], keep: int | None) -> list[list[int]]:
    return [truncated_text_ids(tokenizer, text, True, keep) for text in texts]


def _dot(a: list[float], b: list[float]) -> float:
    return float(sum(x * y for x, y in zip(a, b, strict=True)))
