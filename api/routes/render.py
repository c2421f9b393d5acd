"""vLLM's render endpoints: POST /v1/chat/completions/render and /v1/completions/render.

They do what a chat completion or a completion does up to the queue (check the request,
apply the chat template, tokenize, build the sampling with the model's served defaults)
and answer with the request for vLLM's tokens-in, tokens-out endpoint instead of running
it: `{request_id, token_ids, sampling_params, model, stream, stream_options, cache_salt,
priority, ...}` (a list, one per prompt, for completions). Posted to
/inference/v1/generate, here or on another server with the same model, it samples as the
chat or completion would have: a render tier can template and tokenize for GPU servers
that only take token ids. Nothing is queued, billed or rate-limited; the model needs a
live (or sleeping) worker for its tokenizer. Beam search, and a completion's `echo`, have
no tokens-endpoint form: a 400.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from api.chat_generation import ChatServices, prepare_chat
from api.deps import (
    Authenticated,
    CatalogDep,
    RecordDep,
    RouterDep,
    SettingsDep,
    SubmitterDep,
    json_body,
)
from api.errors import not_supported
from api.routes.completions import prepare_completion
from api.schemas.chat import ChatCompletionRequest
from api.schemas.common import SamplingRequest
from api.schemas.completions import CompletionRequest
from api.tokens_sampling import vllm_sampling_params
from engine.sampling_params import SamplingParams

router = APIRouter(dependencies=[Authenticated])

ChatBody = Annotated[ChatCompletionRequest, Depends(json_body(ChatCompletionRequest))]
CompletionBody = Annotated[CompletionRequest, Depends(json_body(CompletionRequest))]


@router.post("/v1/chat/completions/render", response_model=None)
async def render_chat_completion(
    request: Request,
    body: ChatBody,
    catalog: CatalogDep,
    submitter: SubmitterDep,
    replies: RouterDep,
    record: RecordDep,
    settings: SettingsDep,
) -> JSONResponse:
    _refuse_beam_search(body)
    services = ChatServices(request, catalog, submitter, replies, record, settings)
    chat = await prepare_chat(services, body, to_serve=False)
    return JSONResponse(_tokens_request("chatcmpl", chat.prompt_ids, chat.sampling, chat.body))


@router.post("/v1/completions/render", response_model=None)
async def render_completion(
    request: Request,
    body: CompletionBody,
    catalog: CatalogDep,
    submitter: SubmitterDep,
    record: RecordDep,
    settings: SettingsDep,
) -> JSONResponse:
    _refuse_beam_search(body)
    if body.echo:
        raise not_supported("echo", "echo in a render (the tokens endpoint answers ids only)")
    prepared = await prepare_completion(
        request, body, catalog, submitter, record, settings, to_serve=False
    )
    return JSONResponse(
        [
            _tokens_request("cmpl", prompt.token_ids, prepared.sampling, body)
            for prompt in prepared.prompts
        ]
    )


def _refuse_beam_search(body: SamplingRequest) -> None:
    if body.use_beam_search:
        raise not_supported("use_beam_search", "beam search in a render")


def _tokens_request(
    prefix: str, token_ids: list[int], sampling: SamplingParams, body: SamplingRequest
) -> dict[str, Any]:
    """vLLM's GenerateRequest, as /inference/v1/generate takes it."""
    return {
        "request_id": f"{prefix}-{uuid.uuid4().hex}",
        "token_ids": token_ids,
        "features": None,
        "sampling_params": vllm_sampling_params(sampling),
        "model": body.model,
        "stream": body.stream,
        "stream_options": (
            body.stream_options.model_dump() if body.stream and body.stream_options else None
        ),
        "cache_salt": body.cache_salt,
        "priority": body.priority,
        "kv_transfer_params": None,
    }
