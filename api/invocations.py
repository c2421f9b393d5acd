"""POST /invocations: SageMaker's one inference path, routed by what the body holds.

vLLM serves it for SageMaker endpoints, which send every request to that one path: a
body with `messages` is a chat completion, `prompt` a completion, `input` embeddings,
`query` with `documents` a rerank, `text_1` with `text_2` a score (and `input` for a
classifier, as in vLLM, a classification: the embeddings route hands it on). A pure ASGI
middleware (inside the body limit, which has already read the body, and outside the
usage middleware) rewrites the path and hands the body on, so the chosen route runs
exactly as if called by its own path: keys, rate limits, usage rows, streaming. A body
it cannot route reaches the `/invocations` route itself (api/routes/invocations.py),
which checks the key first, as every route does, and then says what was expected.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api.body_limit import replaying
from api.errors import ApiError
from api.route_path import posted_to, with_route_path

INVOCATIONS_PATH = "/invocations"
INVOKED = "invocations"

# In vLLM's order of precedence: the first whose fields the body has is the route.
ROUTES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("messages",), "/v1/chat/completions"),
    (("prompt",), "/v1/completions"),
    (("input",), "/v1/embeddings"),
    (("query", "documents"), "/v1/rerank"),
    (("text_1", "text_2"), "/v1/score"),
)


def route_for(raw: bytes) -> str | None:
    """The path whose request this body is; None when it is none (or not JSON)."""
    try:
        body = json.loads(raw)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
        return None
    if not isinstance(body, dict):
        return None
    for fields, path in ROUTES:
        if all(name in body for name in fields):
            return path
    return None


def unroutable(raw: bytes) -> ApiError:
    """The 400 for a body `route_for` found no route for, saying why."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        return ApiError(400, f"the request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return ApiError(400, "the request body must be a JSON object")
    expected = "; ".join(f"{' and '.join(fields)} ({path})" for fields, path in ROUTES)
    return ApiError(
        400, f"cannot tell which request this is: a body for /invocations has {expected}"
    )


class InvocationsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not posted_to(scope, (INVOCATIONS_PATH,)):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        path = route_for(raw)
        if path is not None:
            scope = with_route_path(scope, path)
            # The embeddings route answers an `input` for a classifier as /classify does
            # (vLLM routes by the model's task there); it reads this to know.
            scope.setdefault("state", {})[INVOKED] = True
        await self.app(scope, replaying(raw, receive), send)


def invoked(request: Request) -> bool:
    """Whether the request came in as /invocations (and was routed by its body)."""
    return bool(getattr(request.state, INVOKED, False))
