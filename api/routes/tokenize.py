"""POST /tokenize and /detokenize, in vLLM's shapes, with the model's own tokenizer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from pydantic_core import from_json

from api.chat_tokens import chat_token_ids
from api.deps import Authenticated, CatalogDep, SettingsDep, json_body
from api.errors import bad_request, not_supported, validation_error
from api.request_submitter import check_prompt_ids
from api.schemas.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
)
from engine.chat_template_kwargs import with_defaults
from engine.tokenizer import Tokenizer

router = APIRouter(dependencies=[Authenticated])

TokenizeRequest = TokenizeChatRequest | TokenizeCompletionRequest


async def _tokenize_body(request: Request) -> TokenizeRequest:
    """vLLM tells the two forms apart by `messages`; so do we, for a precise 400."""
    raw = await request.body()
    try:
        # pydantic's parser, as every other route's: json.loads let a lone surrogate
        # ("\ud800") through to the tokenizer, a 500.
        data = from_json(raw or b"null")
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    model = TokenizeChatRequest if "messages" in data else TokenizeCompletionRequest
    try:
        body = model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None
    if isinstance(body, TokenizeChatRequest) and body.chat_template is not None:
        raise not_supported("chat_template", "a per-request chat template")
    return body


def _tokenize(tokenizer: Tokenizer, body: TokenizeRequest) -> list[int]:
    if isinstance(body, TokenizeCompletionRequest):
        return tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    return chat_token_ids(
        tokenizer,
        body.messages,
        add_generation_prompt=body.add_generation_prompt,
        continue_final_message=body.continue_final_message,
        add_special_tokens=body.add_special_tokens,
        chat_template_kwargs=body.chat_template_kwargs,
        tools=body.tools,
    )


@router.post("/tokenize")
async def tokenize(
    body: Annotated[TokenizeRequest, Depends(_tokenize_body)],
    catalog: CatalogDep,
    settings: SettingsDep,
) -> TokenizeResponse:
    if isinstance(body, TokenizeChatRequest):  # counted as the chat request would render
        body.chat_template_kwargs = with_defaults(
            settings.default_chat_template_kwargs, body.chat_template_kwargs
        )
    model = body.model or await catalog.default_model()
    live = await catalog.resolve(model)
    model_tokenizer = await catalog.tokenizer(live.queue_model)
    tokenizer = model_tokenizer.tokenizer
    ids = await catalog.in_thread(_tokenize, tokenizer, body)
    max_model_len = live.max_model_len or model_tokenizer.max_model_len or 0
    return TokenizeResponse(
        count=len(ids),
        max_model_len=max_model_len,
        tokens=ids,
        token_strs=tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None,
    )


@router.post("/detokenize")
async def detokenize(
    body: Annotated[DetokenizeRequest, Depends(json_body(DetokenizeRequest))], catalog: CatalogDep
) -> DetokenizeResponse:
    model = body.model or await catalog.default_model()
    live = await catalog.resolve(model)
    tokenizer = (await catalog.tokenizer(live.queue_model)).tokenizer
    check_prompt_ids(body.tokens, tokenizer.vocab_size, param="tokens")
    text = await catalog.in_thread(tokenizer.decode, body.tokens, skip_special_tokens=False)
    return DetokenizeResponse(prompt=text)
