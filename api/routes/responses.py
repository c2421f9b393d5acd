"""`/v1/responses`: OpenAI's Responses API, create (streamed or not), retrieve, delete, and
list a response's input items.

A response runs as the chat generation its input describes (api/chat_generation),
so sampling, structured output, tool calls, admission and usage logging are
chat's. With `store` (the default) the finished object is saved in SQL before the
client sees it complete, so `previous_response_id` can continue it at once. The
whole answer is the streamed one's last event, so both are the same object.
With `background` the call answers `queued` at once and the generation goes on
without the client (api/background_responses.py); GET reads its progress and
POST .../cancel stops it. With `stream` too, its events are logged in Redis and
replayed by the create call and by `GET ?stream=true&starting_after=N`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api.background_responses import (
    POLL_WINDOW_SECONDS,
    STALE_GRACE_SECONDS,
    STOPPED_ERROR,
    BackgroundResponses,
    BackgroundRun,
    Cancelled,
    expire_if_stale,
)
from api.chat_generation import ChatServices, count_prompt_tokens, start_chat
from api.collect import ClientGone
from api.deps import (
    Authenticated,
    CatalogDep,
    DatabaseDep,
    PrincipalDep,
    RecordDep,
    RouterDep,
    SettingsDep,
    SubmitterDep,
    json_body,
)
from api.errors import ApiError, bad_request
from api.response_event_log import LogAbandoned
from api.responses_input import chat_request, normalize_input
from api.responses_output import new_response_id
from api.responses_stream import TERMINAL_EVENTS, ResponseEventStream, ResponsesFraming
from api.schemas.responses import ResponsesRequest
from api.sql import in_session
from api.streaming import sse_response
from conveyor.db.database import Database
from conveyor.db.response_store import (
    RUNNING,
    MissingResponse,
    UnfinishedResponse,
    conversation,
    delete_response,
    end_running,
    finish_response,
    get_response,
    input_history,
    save_response,
)
from conveyor.db.stored_response import StoredResponse
from conveyor.settings import Settings

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/responses", dependencies=[Authenticated])

ResponsesBody = Annotated[ResponsesRequest, Depends(json_body(ResponsesRequest))]
INPUT_ITEMS_LIMIT_DEFAULT = 20
INPUT_ITEMS_LIMIT_MAX = 100


@router.post("", response_model=None)
async def create_response(
    request: Request,
    body: ResponsesBody,
    catalog: CatalogDep,
    submitter: SubmitterDep,
    replies: RouterDep,
    record: RecordDep,
    settings: SettingsDep,
    database: DatabaseDep,
    principal: PrincipalDep,
) -> Response:
    body.check_supported()
    body.model = body.model or await catalog.default_model()
    items = normalize_input(body.input)
    history = await _history(body, database, principal.project_id, settings.request_timeout)
    response_id = new_response_id()
    services = ChatServices(request, catalog, submitter, replies, record, settings)
    generation = await start_chat(
        services,
        chat_request(body, history, items),
        response_id,
        truncate=body.truncation == "auto",
    )

    async def store(final: dict[str, Any]) -> None:
        if body.background:
            # Its row exists (queued). Raised, not logged: the run then ends failed (a
            # database error) or unbilled (a cancel ended it first).
            if not await in_session(database, lambda s: finish_response(s, final)):
                raise Cancelled()
            return
        if not body.store:
            return
        try:
            await in_session(
                database, lambda s: save_response(s, principal.project_id, final, items)
            )
        except SQLAlchemyError:
            # The answer is made and billed: deliver it; only continuing it will fail.
            logger.exception("could not store response %s", response_id)

    stream = ResponseEventStream(body, response_id, generation.created, store)
    if body.background:
        queued = {**stream.snapshot(), "status": "queued"}
        # Without `store` it is kept only to be polled (deleted soon after, never continued).
        expires_at = (
            None
            if body.store
            else int(generation.created + settings.request_timeout + POLL_WINDOW_SECONDS)
        )
        try:
            await in_session(
                database,
                lambda s: save_response(s, principal.project_id, queued, items, expires_at),
            )
        except BaseException:
            generation.close()  # nothing will poll for it: do not generate it
            raise
        runs: BackgroundResponses = request.app.state.background_responses
        runs.start(BackgroundRun(response_id, generation, stream, record, streamed=body.stream))
        if body.stream:  # replayed from the run's log: leaving does not stop the run
            deadline = generation.created + _longest_run(settings)
            return _replay(runs, response_id, None, deadline)
        return JSONResponse(queued)
    # The usage chunk ends the chat chunks: the final object carries it.
    if body.stream:
        return sse_response(
            stream.events(generation.chunks(final_usage=True)),
            on_close=generation.close,
            framing=ResponsesFraming(stream.next_sequence_number),
        )
    try:
        final = await stream.final(generation.whole_chunks(final_usage=True))
    except ClientGone:
        return Response(status_code=499)
    return JSONResponse(final)


async def _history(
    body: ResponsesRequest, database: Database, project_id: str | None, max_age: float
) -> list[dict[str, Any]]:
    """The conversation behind previous_response_id ([] without one); 404 for a missing turn."""
    previous = body.previous_response_id
    if previous is None:
        return []
    try:
        return await in_session(database, lambda s: conversation(s, previous, project_id))
    except MissingResponse as missing:
        (gone,) = missing.args
        behind = "" if gone == previous else f" (an earlier turn of '{previous}')"
        raise ApiError(
            404,
            f"Previous response with id '{gone}' not found{behind}.",
            param="previous_response_id",
            code="previous_response_not_found",
        ) from None
    except UnfinishedResponse as running:
        (busy,) = running.args

        def expired(session: Session) -> bool:
            stored = get_response(session, busy, project_id)
            if stored is None:
                return True  # deleted meanwhile: looking again names the missing link
            return expire_if_stale(session, stored, max_age).status not in RUNNING

        if await in_session(database, expired):  # its API process died: it failed
            return await _history(body, database, project_id, max_age)
        raise ApiError(
            400,
            f"Previous response with id '{busy}' is still in progress (background); wait "
            "until it finishes to continue it.",
            param="previous_response_id",
        ) from None


@router.post("/input_tokens")
async def count_input_tokens(
    body: ResponsesBody,
    catalog: CatalogDep,
    database: DatabaseDep,
    principal: PrincipalDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    """How many tokens the model would read for this request (after `truncation: "auto"`),
    counted with its chat template and tokenizer; nothing is generated or billed."""
    body.check_supported()
    body.model = body.model or await catalog.default_model()
    items = normalize_input(body.input)
    history = await _history(body, database, principal.project_id, settings.request_timeout)
    chat = chat_request(body, history, items)
    tokens = await count_prompt_tokens(catalog, settings, chat, body.truncation == "auto")
    return {"object": "response.input_tokens", "input_tokens": tokens}


def _no_such_response(response_id: str) -> ApiError:
    return ApiError(404, f"No response found with id '{response_id}'.", param="response_id")


def _stored_or_404(session: Session, response_id: str, project_id: str | None) -> StoredResponse:
    stored = get_response(session, response_id, project_id)
    if stored is None:
        raise _no_such_response(response_id)
    return stored


@router.get("/{response_id}", response_model=None)
async def retrieve_response(
    request: Request,
    response_id: str,
    database: DatabaseDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1)] = None,
) -> dict[str, Any] | Response:
    """The response as it stands; with `stream` (a background response created with
    `stream: true`) its events again, from after `starting_after`, then live."""

    def work(session: Session) -> StoredResponse:
        stored = _stored_or_404(session, response_id, principal.project_id)
        return expire_if_stale(session, stored, settings.request_timeout)

    stored = await in_session(database, work)
    if not stream:
        if starting_after is not None:
            raise bad_request("starting_after needs stream=true", param="starting_after")
        return stored.body
    runs = _background(request)
    if not stored.body.get("background") or not await runs.events.exists(response_id):
        raise bad_request(
            "Only a background response created with stream=true can be streamed, while its "
            "events are kept (the polling window after it ends); GET it without stream.",
            param="stream",
        )
    deadline = stored.created_at + _longest_run(settings)
    return _replay(runs, response_id, starting_after, deadline)


def _longest_run(settings: Settings) -> float:
    """How long after its creation a background run may still be writing events."""
    return settings.request_timeout + STALE_GRACE_SECONDS


def _replay(
    runs: BackgroundResponses, response_id: str, starting_after: int | None, deadline: float
) -> Response:
    """A background response's logged events as SSE; an error event (a lost log, a
    run whose process died) continues their numbering."""
    last = [-1 if starting_after is None else starting_after]

    async def events() -> AsyncIterator[dict[str, Any]]:
        try:
            async for event in runs.events.read(response_id, starting_after, deadline):
                last[0] = event["sequence_number"]
                yield event
                if event["type"] in TERMINAL_EVENTS:
                    return
        except LogAbandoned:
            raise ApiError(500, STOPPED_ERROR["message"], code="server_error") from None

    def next_number() -> int:
        last[0] += 1
        return last[0]

    return sse_response(events(), on_close=lambda: None, framing=ResponsesFraming(next_number))


@router.post("/{response_id}/cancel")
async def cancel_response(
    request: Request, response_id: str, database: DatabaseDep, principal: PrincipalDep
) -> dict[str, Any]:
    """Stop a background response (on whichever API process runs it); one that already
    ended is answered as it is."""

    def work(session: Session) -> dict[str, Any]:
        stored = _stored_or_404(session, response_id, principal.project_id)
        if not stored.body.get("background"):
            raise bad_request("Cannot cancel a synchronous response.", param="response_id")
        end_running(session, stored, "cancelled")
        return stored.body

    body = await in_session(database, work)
    # Even if it had ended: a cancel whose flag failed to reach Redis, retried, must
    # still stop the run (the flag is idempotent and short-lived).
    await _background(request).cancel(response_id)
    return body


@router.delete("/{response_id}")
async def remove_response(
    request: Request, response_id: str, database: DatabaseDep, principal: PrincipalDep
) -> dict[str, Any]:
    def work(session: Session) -> bool | None:
        stored = get_response(session, response_id, principal.project_id)
        if stored is None:
            return None
        background = bool(stored.body.get("background"))
        delete_response(session, response_id, principal.project_id)
        return background

    background = await in_session(database, work)
    if background is None:
        raise _no_such_response(response_id)
    if background:  # nobody can read it any more: stop generating it (if it still runs)
        await _background(request).cancel(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


def _background(request: Request) -> BackgroundResponses:
    return request.app.state.background_responses


@router.get("/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    database: DatabaseDep,
    principal: PrincipalDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=INPUT_ITEMS_LIMIT_MAX)] = INPUT_ITEMS_LIMIT_DEFAULT,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    """The items the response was generated from, newest first by default: its own input
    and, through `previous_response_id`, the earlier turns' input and output (OpenAI's
    "items used to generate this response")."""
    items = await in_session(
        database,
        lambda s: input_history(_stored_or_404(s, response_id, principal.project_id), s),
    )
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise bad_request(f"`after` names no item of this response: {after}", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }
