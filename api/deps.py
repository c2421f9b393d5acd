"""`Annotated` dependency aliases: settings, Redis, the bus, the database, auth and bodies.

Auth is a dependency of the protected routers rather than a path check in a
middleware: the router that matched the request is the one that demands the
key, so no spelling of a path (`//v1/models`, `/v1/../v1/models`, `%2F`) can
reach a protected handler without it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis

from api.auth import ANONYMOUS, Principal
from api.batch_line_answers import StoredLineAnswer, answer_key, claim_line
from api.catalog import ModelCatalog
from api.errors import validation_error
from api.key_cache import KeyCache
from api.reply_router import ReplyRouter
from api.request_record import RequestRecord
from api.request_submitter import RequestSubmitter
from api.route_path import route_path
from conveyor.bus import BusNames
from conveyor.db.database import Database
from conveyor.file_storage import FileStorage
from conveyor.settings import Settings

M = TypeVar("M", bound=BaseModel)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_redis(request: Request) -> Redis:
    return request.app.state.redis


def get_names(request: Request) -> BusNames:
    return request.app.state.names


def get_catalog(request: Request) -> ModelCatalog:
    return request.app.state.catalog


def get_router(request: Request) -> ReplyRouter:
    return request.app.state.router


def get_submitter(request: Request) -> RequestSubmitter:
    return request.app.state.submitter


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
NamesDep = Annotated[BusNames, Depends(get_names)]
CatalogDep = Annotated[ModelCatalog, Depends(get_catalog)]
RouterDep = Annotated[ReplyRouter, Depends(get_router)]
SubmitterDep = Annotated[RequestSubmitter, Depends(get_submitter)]


async def authenticate(request: Request) -> None:
    """Resolve the caller once; the record (on inference routes) learns who to bill."""
    principal = await request.app.state.authenticator.principal(request)
    request.state.principal = principal
    record = getattr(request.state, "record", None)
    if record is not None:
        record.principal = principal
        record.batch_id = principal.batch_id
        key = answer_key(request.app.state.names, principal)
        if key is not None:
            settings = request.app.state.settings
            try:
                if await claim_line(request.app.state.redis, key, settings.request_timeout):
                    record.line_claim = key
            except StoredLineAnswer:
                record.replayed = True
                raise
    elif principal.api_key_id is not None and principal.batch_id is None:
        # Not an inference request, so no log row will say the key was used: say it here
        # (files, batches, models, tokenize), so its last_used_at means any use.
        request.app.state.log_buffer.touch(principal.api_key_id, int(time.time()))


def require_admin(request: Request) -> None:
    request.app.state.authenticator.check_admin(request)


def get_principal(request: Request) -> Principal:
    return getattr(request.state, "principal", ANONYMOUS)


def get_record(request: Request) -> RequestRecord:
    """The usage middleware opens one per inference request; elsewhere a throwaway one."""
    record = getattr(request.state, "record", None)
    if record is None:
        record = RequestRecord(endpoint=route_path(request.scope), principal=get_principal(request))
        request.state.record = record
    return record


def get_database(request: Request) -> Database:
    return request.app.state.database


def get_key_cache(request: Request) -> KeyCache:
    return request.app.state.key_cache


def get_file_storage(request: Request) -> FileStorage:
    return request.app.state.file_storage


PrincipalDep = Annotated[Principal, Depends(get_principal)]
RecordDep = Annotated[RequestRecord, Depends(get_record)]
DatabaseDep = Annotated[Database, Depends(get_database)]
KeyCacheDep = Annotated[KeyCache, Depends(get_key_cache)]
FileStorageDep = Annotated[FileStorage, Depends(get_file_storage)]

Authenticated = Depends(authenticate)
AdminOnly = Depends(require_admin)


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """Parse the body ourselves (after auth) so bad input is a 400 naming the parameter."""

    async def parse(request: Request) -> M:
        raw = await request.body()
        try:
            return model.model_validate_json(raw or b"null")
        except ValidationError as exc:
            raise validation_error(exc.errors()) from None

    return parse
