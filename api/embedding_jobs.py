"""Embedding prompts through a pooling model's workers, for every endpoint that needs vectors:
/v1/embeddings, and /score and /rerank, which compare them.

Each prompt is queued as its own request, so the engine batches them with other
clients' prompts; the vectors come back in prompt order, as the workers sent
them (base64 little-endian float32).
"""

from __future__ import annotations

import array
import base64
import json
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

from fastapi import Request

from api.admission import admit
from api.cache_salt import cache_salt
from api.catalog import LiveModel, ModelCatalog, ModelTokenizer
from api.chat_tokens import chat_token_ids
from api.collect import Output, collect_all
from api.errors import ApiError
from api.prompt_truncation import tokens_to_keep, truncated_text_ids
from api.reply_router import ReplyReader, ReplyRouter
from api.request_record import RequestRecord
from api.request_submitter import RequestSubmitter, Submission, check_prompt_ids
from api.schemas.common import check_priority, check_tenant_priority
from api.schemas.embeddings import EmbeddingRequest
from api.served_model import served_model
from conveyor.settings import Settings
from engine.chat_template_kwargs import with_defaults
from engine.pooling_params import PoolingParams
from engine.sampling_params import SamplingParamError
from engine.tokenizer import Tokenizer


@dataclass(frozen=True)
class EmbeddingModel:
    """A pooling model resolved for one request, with what its prompts are checked against."""

    live: LiveModel
    tokenizer: ModelTokenizer
    max_model_len: int | None


async def embedding_model(
    request: Request,
    catalog: ModelCatalog,
    submitter: RequestSubmitter,
    record: RequestRecord,
    model: str,
    endpoint: str,
) -> EmbeddingModel:
    """The model, or the 4xx/5xx that says why it cannot embed for `endpoint` now."""
    live, model_tokenizer = await served_model(
        request, catalog, submitter, record, model, "pooling", endpoint
    )
    return EmbeddingModel(
        live, model_tokenizer, live.max_model_len or model_tokenizer.max_model_len
    )


def is_classifier(model: EmbeddingModel) -> bool:
    """Whether the model's workers publish labels (a sequence classifier's)."""
    shape = model.tokenizer.shape
    return shape is not None and bool(shape.labels)


def require_task(model: EmbeddingModel, task: str, endpoint: str) -> None:
    """A 400 naming the right endpoints when a pooling model does the other task: a
    classifier (published labels) classifies, an embedding model embeds. Workers of
    older releases publish no shape: they are taken to embed."""
    classifier = is_classifier(model)
    if (task == "classify") == classifier:
        return
    what = (
        "a classifier: it serves /classify and /pooling (and /score and /rerank when it "
        "has one label)"
        if classifier
        else "an embedding model: it serves /v1/embeddings, /pooling, /score and /rerank"
    )
    raise ApiError(
        400,
        f"The model `{model.live.name}` is {what}; {endpoint} is not supported for it",
        param="model",
        code="model_not_supported",
    )


def check_pooling(pooling: PoolingParams, model: EmbeddingModel) -> None:
    """Refuse what the model's workers would (a `dimensions` it was not trained for) before
    any work is queued; workers check again (and older ones only there)."""
    if model.tokenizer.shape is None:
        return
    try:
        pooling.validate_against(model.tokenizer.shape)
    except SamplingParamError as exc:
        raise ApiError(400, str(exc), param=exc.param) from None


def check_input_length(tokens: int, max_model_len: int, param: str = "input") -> None:
    """OpenAI's 400 for an input longer than the model reads (nothing is generated, so an
    input may fill the whole context)."""
    if tokens > max_model_len:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens, however you "
            f"requested {tokens} tokens in the input. Please reduce your input, or set "
            "truncate_prompt_tokens to keep only its end.",
            param=param,
            code="context_length_exceeded",
        )


async def embed(
    request: Request,
    submitter: RequestSubmitter,
    replies: ReplyRouter,
    record: RequestRecord,
    model: EmbeddingModel,
    prompts: Sequence[list[int]],
    pooling: PoolingParams | Sequence[PoolingParams],
    *,
    priority: int = 0,
    id_prefix: str = "embd",
    param: str = "input",
) -> list[Output]:
    """Every prompt's output (its vector in `embedding`), in order; raises ClientGone if the
    client leaves first. Records the request's id and tokens and admits it first.
    `pooling`: for every prompt, or one per prompt."""
    check_priority(priority, request.app.state.settings)
    check_tenant_priority(priority, record.principal)
    poolings = [pooling] * len(prompts) if isinstance(pooling, PoolingParams) else pooling
    poolings = _with_segments(model, prompts, poolings)
    if model.max_model_len is not None:
        for ids in prompts:
            check_input_length(len(ids), model.max_model_len, param)
    base_id = f"{id_prefix}-{uuid.uuid4().hex}"
    record.request_id = base_id
    record.prompt_tokens = sum(len(ids) for ids in prompts)
    record.completion_tokens = 0
    await admit(request, record, tokens=record.prompt_tokens)
    readers: list[ReplyReader] = []
    scope = request.app.state.settings.prefix_cache_scope
    salt = cache_salt(record.principal, None, scope)
    try:
        await submitter.submit_all(
            [
                Submission(
                    request_id=f"{base_id}-{index}",
                    model=model.live.queue_model,
                    prompt_token_ids=ids,
                    sampling=None,
                    pooling=params.wire(),
                    priority=priority,
                    stream=False,
                    lane=record.lane,
                    lora=model.live.lora,
                    cache_salt=salt,
                )
                for index, (ids, params) in enumerate(zip(prompts, poolings, strict=True))
            ],
            readers,
        )
    finally:
        record.readers.extend(readers)
    outputs = await collect_all(request, replies, readers)
    record.finish_reason = "stop"
    return outputs


def _with_segments(
    model: EmbeddingModel, prompts: Sequence[list[int]], poolings: Sequence[PoolingParams]
) -> list[PoolingParams]:
    """A classifier that reads token types (BERT's cross-encoders) is told where every
    prompt's second text starts; one text's starts at its end. Its workers refuse a request
    without it (an API of the release before would send a pair as one text)."""
    shape = model.tokenizer.shape
    if shape is None or shape.type_vocab_size < 2:
        return list(poolings)
    return [
        replace(params, segment_start=len(ids))
        if params.task == "classify" and params.segment_start is None
        else params
        for ids, params in zip(prompts, poolings, strict=True)
    ]


def encoded(output: Output) -> str:
    """The vector as the worker sent it (base64 little-endian float32)."""
    if output.embedding is None:
        raise ApiError(500, "a worker finished an embedding request without its vector")
    return output.embedding


def formatted(output: Output, encoding_format: str) -> list[float] | str:
    """The vector as the request's `encoding_format` asks: base64 as sent, or floats."""
    return encoded(output) if encoding_format == "base64" else vector(output)


def vector(output: Output) -> list[float]:
    values = array.array("f", base64.b64decode(encoded(output)))
    if sys.byteorder != "little":
        values.byteswap()
    return values.tolist()


def input_prompts(
    tokenizer: Tokenizer,
    items: Sequence[str | list[int]],
    body: EmbeddingRequest,
    max_model_len: int | None,
) -> list[list[int]]:
    """An embeddings-shaped request's prompts (its `messages` through the chat template,
    or each `input`), each cut to `truncate_prompt_tokens`."""
    keep = tokens_to_keep(body.truncate_prompt_tokens, max_model_len)
    prompts = []
    if body.messages is not None:
        chat = chat_token_ids(
            tokenizer,
            body.messages,
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message,
            add_special_tokens=bool(body.add_special_tokens),
            chat_template_kwargs=body.chat_template_kwargs,
        )
        prompts.append(chat[-keep:] if keep is not None else chat)
    special = True if body.add_special_tokens is None else body.add_special_tokens
    for item in items:
        if isinstance(item, str):
            prompts.append(truncated_text_ids(tokenizer, item, special, keep))
        else:
            check_prompt_ids(item, tokenizer.vocab_size, param="input")
            prompts.append(list(item)[-keep:] if keep is not None else list(item))
    return prompts


async def request_prompts(
    catalog: ModelCatalog,
    model: EmbeddingModel,
    body: EmbeddingRequest,
    settings: Settings,
    record: RequestRecord,
) -> list[list[int]]:
    """An embeddings-shaped request's prompts (`input_prompts`, with the server's
    --default-chat-template-kwargs under the request's own) off the event loop (on the
    catalog's tokenizing thread), the inputs logged when the server logs prompts."""
    items = body.inputs() if body.messages is None else []
    body.chat_template_kwargs = with_defaults(
        settings.default_chat_template_kwargs, body.chat_template_kwargs
    )
    prompts = await catalog.in_thread(
        input_prompts, model.tokenizer.tokenizer, items, body, model.max_model_len
    )
    if settings.log_prompts:
        logged = items or [m.model_dump(exclude_none=True) for m in body.messages or ()]
        record.prompt_text = json.dumps(logged, ensure_ascii=False)
    return prompts
