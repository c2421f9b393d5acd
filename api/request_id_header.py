"""Every response carries `x-request-id`, as OpenAI's do: the SDK shows it as a result's
`_request_id` and an error's `request_id`, which users quote when they report a problem.

It is the client's own `X-Request-Id` when it sent a usable one (vLLM's
--enable-request-id-headers), so a caller's trace id reaches our logs; otherwise a new
`req_...`. Log lines about the request (an unhandled error, --enable-log-requests) name
it, so a report can be matched to the server's logs. Anthropic's Messages API also gets
it as `request-id`, the header Anthropic sends and its SDK reads (a message's
`_request_id`, an error's `request_id`).
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.route_path import route_path

HEADER = "x-request-id"
_HEADER_BYTES = HEADER.encode()
ANTHROPIC_HEADER = b"request-id"
ANTHROPIC_PATH = "/v1/messages"  # and /v1/messages/count_tokens
# Printable ASCII without spaces, bounded: safe to echo in a header and to log. A body's
# request id (api/response_ids.py) is held to it too.
USABLE_ID_PATTERN = r"^[\x21-\x7e]{1,200}$"
_USABLE = re.compile(USABLE_ID_PATTERN)

_current: ContextVar[str | None] = ContextVar("http_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the HTTP request this code runs for (None outside one)."""
    return _current.get()


def request_id_of(scope: Scope) -> str | None:
    """The id the middleware gave this request (kept in its scope's state, which error
    handlers outside the middleware still see)."""
    return scope.get("state", {}).get("request_id")


def client_request_id(scope: Scope) -> str | None:
    """The client's own `X-Request-Id`, when it sent a usable one (None otherwise, where
    `request_id_of` is a new `req_...`)."""
    return scope.get("state", {}).get("client_request_id")


def _given(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == _HEADER_BYTES:
            text = value.decode("latin-1")
            return text if _USABLE.fullmatch(text) else None
    return None


class RequestIdMiddleware:
    """Names each HTTP request and stamps the name on its response's headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _given(scope)
        request_id = given or f"req_{uuid.uuid4().hex}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["client_request_id"] = given
        stamps = [(_HEADER_BYTES, request_id.encode())]
        if route_path(scope).startswith(ANTHROPIC_PATH):
            stamps.append((ANTHROPIC_HEADER, request_id.encode()))
        names = {name for name, _ in stamps}

        async def send_stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() not in names]
                message = {**message, "headers": [*headers, *stamps]}
            await send(message)

        token = _current.set(request_id)
        try:
            await self.app(scope, receive, send_stamped)
        finally:
            _current.reset(token)
