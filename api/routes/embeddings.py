"""POST /v1/embeddings: each input embedded by a worker of a pooling model.

Every input is queued as its own request (so the engine batches them with
other clients' inputs) and the answers are gathered in input order. Workers
send each vector as base64 float32, which is OpenAI's `encoding_format:
"base64"` as it is (the official SDK asks for it by default); "float" decodes
it to a list.
"""

from __future__ import annotations

import array
import base64
import dataclasses
import json
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from api.admission import admit, refuse_early
from api.chat_tokens import chat_token_ids
from api.collect import ClientGone, Output, collect_all, finish
from api.deps import (
    Authenticated,
    CatalogDep,
    RecordDep,
    RouterDep,
    SettingsDep,
    SubmitterDep,
    json_body,
)
from api.errors import ApiError
from api.reply_router import ReplyReader
from api.request_submitter import Submission, check_prompt_ids
from api.schemas.embeddings import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)
from engine.pooling_params import PoolingParams
from engine.sampling_params import SamplingParamError
from engine.tokenizer import Tokenizer

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
    record.model = body.model
    refuse_early(request, record)
    items = body.inputs() if body.messages is None else []
    live = await catalog.resolve(body.model)
    live.require_runner("pooling", "/v1/embeddings")
    await submitter.check_capacity(live.queue_model, record.lane)
    model_tokenizer = await catalog.tokenizer(live.queue_model)
    max_model_len = live.max_model_len or model_tokenizer.max_model_len
    pooling = PoolingParams(dimensions=body.dimensions, normalize=body.normalize)
    if model_tokenizer.shape is not None:
        # Before any work is queued; workers check again (and older ones only there).
        try:
            pooling.validate_against(model_tokenizer.shape)
        except SamplingParamError as exc:
            raise ApiError(400, str(exc), param=exc.param) from None
    prompts = await catalog.in_thread(
        _tokenize, model_tokenizer.tokenizer, items, body, max_model_len
    )
    if max_model_len is not None:
        for ids in prompts:
            check_input_length(len(ids), max_model_len)
    base_id = f"embd-{uuid.uuid4().hex}"
    record.request_id = base_id
    record.prompt_tokens = sum(len(ids) for ids in prompts)
    record.completion_tokens = 0
    if settings.log_prompts:
        logged = items or [m.model_dump(exclude_none=True) for m in body.messages or ()]
        record.prompt_text = json.dumps(logged, ensure_ascii=False)
    await admit(request, record, tokens=record.prompt_tokens)
    readers: list[ReplyReader] = []
    try:
        for index, ids in enumerate(prompts):
            readers.append(
                await submitter.submit(
                    Submission(
                        request_id=f"{base_id}-{index}",
                        model=live.queue_model,
                        prompt_token_ids=ids,
                        sampling=None,
                        pooling=dataclasses.asdict(pooling),
                        priority=body.priority,
                        stream=False,
                        lane=record.lane,
                        lora=live.lora,
                    )
                )
            )
    except BaseException:
        finish(replies, readers)
        raise
    finally:
        record.readers.extend(readers)
    try:
        outputs = await collect_all(request, replies, readers)
    except ClientGone:
        return Response(status_code=499)
    record.finish_reason = "stop"
    response = EmbeddingResponse(
        id=base_id,
        created=int(time.time()),
        model=body.model,
        data=[
            EmbeddingData(index=i, embedding=_encoded(output, body.encoding_format))
            for i, output in enumerate(outputs)
        ],
        usage=EmbeddingUsage(prompt_tokens=record.prompt_tokens, total_tokens=record.prompt_tokens),
    )
    return JSONResponse(response.model_dump(mode="json"))


def check_input_length(tokens: int, max_model_len: int) -> None:
    """OpenAI's 400 for an input longer than the model reads (nothing is generated, so an
    input may fill the whole context)."""
    if tokens > max_model_len:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens, however you "
            f"requested {tokens} tokens in the input. Please reduce your input, or set "
            "truncate_prompt_tokens to keep only its end.",
            param="input",
            code="context_length_exceeded",
        )


def _tokenize(
    tokenizer: Tokenizer,
    items: Sequence[str | list[int]],
    body: EmbeddingRequest,
    max_model_len: int | None,
) -> list[list[int]]:
    keep = body.truncate_prompt_tokens
    if keep == -1:
        if max_model_len is None:
            raise ApiError(
                400,
                "truncate_prompt_tokens -1 needs the model's maximum length, not known yet",
                param="truncate_prompt_tokens",
            )
        keep = max_model_len
    if keep is not None and max_model_len is not None and keep > max_model_len:
        raise ApiError(
            400,
            f"truncate_prompt_tokens ({keep}) is greater than this model's maximum context "
            f"length ({max_model_len})",
            param="truncate_prompt_tokens",
        )
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


def truncated_text_ids(
    tokenizer: Tokenizer, text: str, special: bool, keep: int | None
) -> list[int]:
    """The text's token ids cut to its last `keep`, keeping the special tokens the tokenizer
    adds around it (BOS, EOS), as HF's left-side truncation and so vLLM cut them."""
    ids = tokenizer.encode(text, add_special_tokens=special)
    if keep is None or len(ids) <= keep:
        return ids
    plain = tokenizer.encode(text, add_special_tokens=False) if special else ids
    start = next(
        (i for i in range(len(ids) - len(plain) + 1) if ids[i : i + len(plain)] == plain), None
    )
    if start is None:  # the specials are interleaved: no text span to cut
        return ids[-keep:]
    prefix, suffix = ids[:start], ids[start + len(plain) :]
    room = keep - len(prefix) - len(suffix)
    if room < 1:
        raise ApiError(
            400,
            f"truncate_prompt_tokens ({keep}) leaves no room for text next to the "
            f"{len(prefix) + len(suffix)} special tokens this model's tokenizer adds",
            param="truncate_prompt_tokens",
        )
    return prefix + plain[-room:] + suffix


def _encoded(output: Output, encoding_format: str) -> list[float] | str:
    if output.embedding is None:
        raise ApiError(500, "a worker finished an embedding request without its vector")
    if encoding_format == "base64":
        return output.embedding
    values = array.array("f", base64.b64decode(output.embedding))
    if sys.byteorder != "little":
        values.byteswap()
    return values.tolist()
