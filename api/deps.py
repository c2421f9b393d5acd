"""`Annotated` dependency aliases: settings, Redis, the bus helpers, auth and JSON bodies.

Auth is a dependency of the protected routers rather than a path check in a
middleware: the router that matched the request is the one that demands the
key, so no spelling of a path (`//v1/models`, `/v1/../v1/models`, `%2F`) can
reach a protected handler without it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis

from api.catalog import ModelCatalog
from api.errors import ApiError, validation_error
from api.reply_router import ReplyRouter
from api.request_submitter import RequestSubmitter
from conveyor.bus import BusNames
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


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


async def require_api_key(request: Request) -> None:
    """`Authorization: Bearer <key>` when an API key is configured; compared in constant time."""
    expected: bytes | None = request.app.state.api_key_digest
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "Missing API key: send `Authorization: Bearer <key>`",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(key_digest(token), expected):
        raise ApiError(
            401, "Incorrect API key provided", code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip


Authenticated = Depends(require_api_key)


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """Parse the body ourselves (after auth) so bad input is a 400 naming the parameter."""

    async def parse(request: Request) -> M:
        raw = await request.body()
        try:
            return model.model_validate_json(raw or b"null")
        except ValidationError as exc:
            raise validation_error(exc.errors()) from None

    return parse
