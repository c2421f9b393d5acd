"""Every inference request ends in one request-log row and a settled token count.

A pure ASGI middleware around the inference routes: it opens a
`RequestRecord` in the request's state before the route runs, adds the
key's rate-limit headers to whatever response goes out (200, 400, 429,
a stream), and, when the response is over (finished, failed, or the client
went away), stamps status and latency, queues the log row and settles the
tokens the request reserved against its key's tpm. Nothing here waits on SQL.
While the route runs, the record is watched for its key being revoked
(api/revoked_key_watch.py).
A batch line's 200 answer is kept in Redis before its body goes out
(api/batch_line_answers.py); a replayed one is neither logged nor settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.batch_line_answers import keep_answer, release_claim
from api.request_id_header import request_id_of
from api.request_record import RequestRecord
from api.route_path import posted_to, route_path
from conveyor.db.usage import COMPLETIONS, EMBEDDINGS

logger = logging.getLogger(__name__)

# Every path whose requests are billed: the usage reports' own lists.
INFERENCE_PATHS = frozenset(COMPLETIONS.endpoints) | frozenset(EMBEDDINGS.endpoints)


def _keeps_answer(record: RequestRecord, start: Message) -> bool:
    """A batch line's whole JSON 200 answer (never a stream) is kept to be replayed."""
    if record.status_code != 200 or record.line_claim is None:
        return False
    headers = dict(start.get("headers", []))
    return headers.get(b"content-type", b"").startswith(b"application/json")


class UsageMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not posted_to(scope, INFERENCE_PATHS):
            await self.app(scope, receive, send)
            return
        record = RequestRecord(endpoint=route_path(scope), http_request_id=request_id_of(scope))
        scope.setdefault("state", {})["record"] = record
        answer: list[bytes] | None = None  # a batch line's 200 body, while it is sent

        async def send_with_headers(message: Message) -> None:
            nonlocal answer
            if message["type"] == "http.response.body" and answer is not None:
                answer.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._keep(scope, record, b"".join(answer))
            if message["type"] == "http.response.start":
                record.status_code = message["status"]
                if _keeps_answer(record, message):
                    answer = []
                decision = record.rate_decision
                if decision is not None:
                    present = {name.lower() for name, _ in message.get("headers", [])}
                    extra = [
                        (name.encode("latin-1"), value.encode("latin-1"))
                        for name, value in decision.headers().items()
                        if name.encode("latin-1").lower() not in present
                    ]
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        watch = getattr(scope["app"].state, "key_watch", None)
        try:
            with watch.tracking(record) if watch is not None else contextlib.nullcontext():
                await self.app(scope, receive, send_with_headers)
        except Exception:
            # Unhandled: the 500 is sent by the error handler outside this middleware.
            if record.status_code is None:
                record.status_code = 500
            raise
        finally:
            if record.status_code is None:
                record.status_code = 499  # the client left before any response started
            self._finish(scope, record)

    async def _keep(self, scope: Scope, record: RequestRecord, body: bytes) -> None:
        if record.line_claim is not None and await keep_answer(
            scope["app"].state.redis, record.line_claim, body
        ):
            record.line_claim = None  # kept, and the claim dropped with it

    def _finish(self, scope: Scope, record: RequestRecord) -> None:
        state = scope["app"].state
        if record.line_claim is not None:
            # No answer kept (an error, a client gone, too big): a resend runs the line.
            self._in_background(state, release_claim(state.redis, record.line_claim))
            record.line_claim = None
        if record.replayed:
            return  # logged and billed when it was answered
        if record.background is not None and not record.background.done():
            # A background response: its tokens are known when its run ends.
            record.background.add_done_callback(lambda _: self._finish(scope, record))
            return
        state = scope["app"].state
        buffer = getattr(state, "log_buffer", None)
        if buffer is not None:
            buffer.add(record.log_row(log_prompts=state.settings.log_prompts))
        limiter = getattr(state, "rate_limiter", None)
        principal = record.principal
        if limiter is None or record.rate_decision is None or principal.api_key_id is None:
            return
        if record.rate_decision.allowed and record.total_tokens != record.reserved_tokens:
            self._in_background(
                state,
                limiter.settle(principal.api_key_id, record.request_id or "", record.total_tokens),
            )

    def _in_background(self, state: Any, work: Coroutine[Any, Any, None]) -> None:
        """A task, so a cancelled request (client gone) still settles its count or drops
        its claim; held in app state, where shutdown waits for it before closing Redis."""
        task = asyncio.get_running_loop().create_task(work)
        settling: set[asyncio.Task[None]] = state.settling
        settling.add(task)
        task.add_done_callback(lambda done: self._settled(settling, done))

    def _settled(self, settling: set[asyncio.Task[None]], task: asyncio.Task[None]) -> None:
        settling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("a request's closing Redis call failed: %s", task.exception())
