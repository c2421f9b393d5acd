"""POST /v1/chat/completions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from api.chat_generation import ChatServices, start_chat
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
from api.response_ids import response_ids
from api.schemas.chat import ChatCompletionRequest
from api.streaming import sse_response

router = APIRouter(dependencies=[Authenticated])

ChatBody = Annotated[ChatCompletionRequest, Depends(json_body(ChatCompletionRequest))]


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    request: Request,
    body: ChatBody,
    catalog: CatalogDep,
    submitter: SubmitterDep,
    replies: RouterDep,
    record: RecordDep,
    settings: SettingsDep,
) -> Response:
    services = ChatServices(request, catalog, submitter, replies, record, settings)
    ids = response_ids(request, "chatcmpl", body.request_id)
    generation = await start_chat(services, body, ids.internal, public_id=ids.public)
    if body.stream:
        return sse_response(generation.chunks(), on_close=generation.close)
    try:
        response = await generation.response()
    except ClientGone:
        return Response(status_code=499)
    return JSONResponse(response.model_dump(mode="json"))
