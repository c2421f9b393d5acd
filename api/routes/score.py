"""vLLM's `/score` and `/rerank` (Jina's and Cohere's shape).

With an embedding model each distinct text is embedded once (api/embedding_jobs.py),
normalised, and a pair's score is the cosine similarity of its two vectors. With a
cross-encoder (a sequence classifier with one label: a BERT or XLM-R reranker such
as ms-marco MiniLM or bge-reranker, or one saved as `Qwen3ForSequenceClassification`)
each pair is one prompt, the two texts joined as the tokenizer joins a text pair
(BERT's second text marked by its token type, which the worker is told), and its
score is the classifier's probability (the sigmoid of its logit), as vLLM scores
with such models.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
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
from api.embedding_jobs import (
    EmbeddingModel,
    embed,
    embedding_model,
    vector,
)
from api.errors import ApiError
from api.prompt_truncation import tokens_to_keep, truncated_text_ids
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
    model = await embedding_model(request, catalog, submitter, record, body.model, "/score")
    try:
        scores = await _pair_scores(
            request,
            catalog,
            submitter,
            replies,
            record,
            model,
            pairs,
            body.truncate_prompt_tokens,
            body.priority,
            "score",
            body.wants_activation,
        )
    except ClientGone:
        return Response(status_code=499)
    response = ScoreResponse(
        id=record.request_id or "",
        created=int(time.time()),
        model=body.model,
        data=[ScoreData(index=i, score=score) for i, score in enumerate(scores)],
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
    model = await embedding_model(request, catalog, submitter, record, body.model, "/rerank")
    try:
        scores = await _pair_scores(
            request,
            catalog,
            submitter,
            replies,
            record,
            model,
            [(body.query, text) for text in documents],
            body.truncate_prompt_tokens,
            body.priority,
            "rerank",
            body.wants_activation,
        )
    except ClientGone:
        return Response(status_code=499)
    results = [
        RerankResult(
            index=i,
            document=RerankDocument(text=text) if body.return_documents else None,
            relevance_score=score,
        )
        for i, (text, score) in enumerate(zip(documents, scores, strict=True))
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


async def _pair_scores(
    request: Request,
    catalog: ModelCatalog,
    submitter: RequestSubmitter,
    replies: ReplyRouter,
    record: RequestRecord,
    model: EmbeddingModel,
    pairs: Sequence[tuple[str, str]],
    truncate_prompt_tokens: int | None,
    priority: int,
    kind: str,
    activation: bool | None = None,
) -> list[float]:
    """Each pair's score: a cross-encoder's probability (its logit with `activation`
    false), or its texts' cosine."""
    shape = model.tokenizer.shape
    labels = shape.labels if shape is not None else ()
    keep = tokens_to_keep(truncate_prompt_tokens, model.max_model_len)
    if labels:
        if len(labels) != 1:
            raise ApiError(
                400,
                f"The model `{model.live.name}` classifies into {len(labels)} labels; /{kind} "
                "needs a cross-encoder (one label): use /classify",
                param="model",
                code="model_not_supported",
            )
        assert shape is not None
        pooling = PoolingParams(activation=activation, task="classify")
        if shape.concat_pairs:
            prompts = await catalog.in_thread(_joined_pairs, model.tokenizer.tokenizer, pairs, keep)
            poolings: PoolingParams | list[PoolingParams] = pooling
        else:
            encoded = await catalog.in_thread(
                _tokenize_pairs, model.tokenizer.tokenizer, pairs, keep
            )
            prompts = [ids for ids, _ in encoded]
            # BERT marks the second text (token type 1): its worker is told where it starts.
            typed = shape.type_vocab_size >= 2
            poolings = [
                replace(pooling, segment_start=start if typed else None) for _, start in encoded
            ]
    else:
        unique = list(dict.fromkeys(text for pair in pairs for text in pair))
        prompts = await catalog.in_thread(_tokenize, model.tokenizer.tokenizer, unique, keep)
        # Unit vectors: a dot product is the cosine.
        poolings = PoolingParams(normalize=True)
    outputs = await embed(
        request,
        submitter,
        replies,
        record,
        model,
        prompts,
        poolings,
        priority=priority,
        id_prefix=kind,
        param="text_2" if kind == "score" else "documents",
    )
    if labels:
        return [vector(output)[0] for output in outputs]
    vectors = {text: vector(output) for text, output in zip(unique, outputs, strict=True)}
    return [_dot(vectors[a], vectors[b]) for a, b in pairs]


def _tokenize_pairs(
    tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], keep: int | None
) -> list[tuple[list[int], int | None]]:
    """Each pair as the tokenizer encodes a text pair (its own special tokens between and
    around), as vLLM encodes them for a cross-encoder, with where its token types say the
    second text starts (None: they do not); `keep` cuts the longer text first
    (transformers' longest_first, vLLM's truncation)."""
    hf = tokenizer.hf_tokenizer
    out = []
    for first, second in pairs:
        if keep is None:
            encoded = hf(first, second, return_token_type_ids=True)
        else:
            try:
                encoded = hf(
                    first, second, truncation=True, max_length=keep, return_token_type_ids=True
                )
            except Exception:  # fewer tokens than the special ones alone
                encoded = None
            if encoded is None or len(encoded["input_ids"]) > keep:
                raise ApiError(
                    400,
                    f"truncate_prompt_tokens ({keep}) leaves no room for the two texts",
                    param="truncate_prompt_tokens",
                )
        types = list(encoded.get("token_type_ids") or ())
        out.append((list(encoded["input_ids"]), types.index(1) if 1 in types else None))
    return out


def _joined_pairs(
    tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], keep: int | None
) -> list[list[int]]:
    """Each pair as one text, the second right after the first, as vLLM reads pairs for
    a classifier_from_token model (Qwen3-Reranker: its template's start goes in the
    first text, its end in the second); `keep` keeps the last tokens, as for inputs."""
    return [truncated_text_ids(tokenizer, first + second, True, keep) for first, second in pairs]


def _tokenize(tokenizer: Tokenizer, texts: list[str], keep: int | None) -> list[list[int]]:
    return [truncated_text_ids(tokenizer, text, True, keep) for text in texts]


def _dot(a: list[float], b: list[float]) -> float:
    return float(sum(x * y for x, y in zip(a, b, strict=True)))
