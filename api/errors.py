"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` for every failure.

Clients (the OpenAI SDK, lm-eval, LangChain) parse this body to decide whether
to retry and what to show, so every path — validation, auth, routing, worker
failures, bugs — answers in this one shape with a meaningful status.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.request_id_header import HEADER, request_id_of
from api.route_path import route_path

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class ApiError(Exception):
    """An error the API reports to the client; raised anywhere, rendered in one place."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "error")
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# Anthropic's error types by HTTP status, for its Messages API (api/routes/messages.py).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}
ANTHROPIC_PATH_PREFIX = "/v1/messages"


# The statuses OpenAI error types stand for, to read an error event's body (a stream's
# error has no status of its own) as Anthropic types it.
_STATUS_OF_TYPE = {
    "invalid_request_error": 400,
    "permission_error": 403,
    "rate_limit_error": 429,
    "timeout_error": 504,
}
# 503s whose codes say the server is busy or going away, not that the request failed.
_OVERLOADED_CODES = frozenset({"overloaded", "no_worker", "queue_unavailable", "shutting_down"})


def anthropic_body_of(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI error body (a failed stream's) in Anthropic's shape: a server that
    stops or is busy (503s: draining, no worker, Redis) reads as overloaded, which
    Anthropic's clients retry."""
    error = body.get("error") or {}
    status = _STATUS_OF_TYPE.get(error.get("type"), 500)
    if error.get("code") in _OVERLOADED_CODES:
        status = 503
    return anthropic_body(status, error.get("message") or "the request failed")


def anthropic_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error shape: `{"type": "error", "error": {"type", "message"}}`."""
    kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _answer(request: Request, error: ApiError) -> JSONResponse:
    """`error` in the shape of the API the path belongs to."""
    path = route_path(request.scope)  # under --root-path too
    if path == ANTHROPIC_PATH_PREFIX or path.startswith(ANTHROPIC_PATH_PREFIX + "/"):
        body = anthropic_body(error.status, error.message)
        return JSONResponse(body, status_code=error.status, headers=error.headers)
    return error.response()


def redis_unavailable(exc: Exception) -> ApiError:
    """Redis down is an outage, not a bug: 503 so clients and balancers retry."""
    logger.warning("Redis unavailable: %s", exc)
    return ApiError(
        503, "the request queue (Redis) is unavailable; retry shortly",
        code="queue_unavailable", headers={"Retry-After": "2"},
    )  # fmt: skip


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_supported(param: str, what: str, hint: str = "") -> ApiError:
    """Features we do not implement are refused loudly, never silently ignored; `hint`
    (a sentence) says what to do instead."""
    message = f"not supported yet: {what}" + (f"; {hint}" if hint else "")
    return ApiError(400, message, param=param, code="not_supported")


# Pydantic puts the union member or validator it tried into `loc` ("str", "list[int]",
# "function-after[...]"); those are not request parameters.
_LOC_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "literal"})


def param_from_loc(loc: Sequence[int | str]) -> str | None:
    """("messages", 0, "role") -> "messages[0].role", the way OpenAI names nested params."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            if not parts:
                break
            parts[-1] += f"[{item}]"
            continue
        if item in _LOC_TAGS or any(ch in item for ch in "[(-"):
            break
        parts.append(item)
    return ".".join(parts) or None


def validation_error(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """Pydantic errors -> one 400 that names the first offending parameter."""
    if not errors:
        return bad_request("invalid request")
    first = errors[0]
    loc = [p for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    if first.get("type") == "json_invalid":
        return bad_request(f"the request body is not valid JSON: {first.get('msg', '')}")
    if first.get("type") == "model_type" and not loc:
        return bad_request("the request body must be a JSON object")
    param = param_from_loc(loc)
    message = str(first.get("msg", "invalid value"))
    if first.get("type") == "value_error":  # our validators' own words, without pydantic's tag
        message = message.removeprefix("Value error, ")
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return bad_request(message, param=param)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception kind to the OpenAI error shape (400 instead of FastAPI's 422)."""

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return _answer(request, exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError | ValidationError)
        return _answer(request, validation_error(exc.errors()))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _answer(request, ApiError(exc.status_code, message, code=code, headers=exc.headers))

    async def on_redis(request: Request, exc: Exception) -> JSONResponse:
        return _answer(request, redis_unavailable(exc))

    async def on_data_error(request: Request, exc: Exception) -> JSONResponse:
        # PostgreSQL refuses a NUL anywhere in text, even in a lookup: such an id, cursor or
        # filter names nothing (SQLite finds no row), so it is the client's mistake.
        if "NUL" in str(getattr(exc, "orig", exc)):
            return _answer(request, bad_request("the request contains a NUL (\\u0000) character"))
        return await on_bug(request, exc)

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        # Answered outside every middleware (Starlette's ServerErrorMiddleware), so the
        # request id goes on here.
        request_id = request_id_of(request.scope)
        logger.exception(
            "unhandled error on %s %s (x-request-id %s)",
            request.method,
            request.url.path,
            request_id,
        )
        headers = {HEADER: request_id} if request_id else None
        error = ApiError(500, "internal server error", code="internal_error", headers=headers)
        return _answer(request, error)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RedisError, on_redis)
    app.add_exception_handler(DataError, on_data_error)
    app.add_exception_handler(Exception, on_bug)
