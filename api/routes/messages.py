"""Anthropic's Messages API, as vLLM serves it: `POST /v1/messages` (whole or streamed)
and `POST /v1/messages/count_tokens`. Each request runs as the chat completion it
asks for (api/messages_input.py), answered in Anthropic's shapes
(api/messages_output.py). Its errors are Anthropic's shape too (api/errors.py reads
the path), and Anthropic clients' `x-api-key` header is taken as the API key
(api/auth.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from api.chat_generation import ChatServices, count_prompt_tokens, start_chat
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
from api.messages_input import chat_request
from api.messages_output import (
    MessageEvents,
    MessagesFraming,
    message_id,
    message_object,
    new_chat_id,
)
from api.schemas.messages import CountTokensRequest, MessagesRequest
from api.streaming import sse_response

MESSAGES_PATH = "/v1/messages"

router = APIRouter(dependencies=[Authenticated])

MessagesBody = Annotated[MessagesRequest, Depends(json_body(MessagesRequest))]
CountTokensBody = Annotated[CountTokensRequest, Depends(json_body(CountTokensRequest))]


@router.post(MESSAGES_PATH, response_model=None)
async def create_message(
    request: Request,
    body: MessagesBody,
    catalog: CatalogDep,
    submitter: SubmitterDep,
    replies: RouterDep,
    record: RecordDep,
    settings: SettingsDep,
) -> Response:
    services = ChatServices(request, catalog, submitter, replies, record, settings)
    chat_id = new_chat_id()
    # Its client sees (and POST /abort_requests names) the msg_ id.
    generation = await start_chat(
        services, chat_request(body), chat_id, public_id=message_id(chat_id)
    )
    if body.stream:
        events = MessageEvents(
            chat_id,
            generation.body.model or "",
            generation.prompt_tokens,
            lambda: record.cached_tokens,
        )
        return sse_response(
            events.events(generation.chunks()), on_close=generation.close, framing=MessagesFraming()
        )
    try:
        response = await generation.response()
    except ClientGone:
        return Response(status_code=499)
    return JSONResponse(message_object(response))


@router.post(f"{MESSAGES_PATH}/count_tokens")
async def count_tokens(
    body: CountTokensBody, catalog: CatalogDep, settings: SettingsDep
) -> dict[str, Any]:
    """How many tokens the model would read for these messages, counted with its chat
    template and tokenizer as /v1/messages renders them; nothing is generated or billed."""
    return {"input_tokens": await count_prompt_tokens(catalog, settings, chat_request(body), False)}
