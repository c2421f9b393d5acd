"""Reject request bodies larger than the limit with 413 before anything parses them.

A pure ASGI middleware so the limit holds for every route, whether the client
declares `Content-Length` (rejected without reading) or streams a chunked body
(counted as it arrives and cut off at the limit). Most bodies are small JSON:
they are read here (up to `max_bytes`) and replayed to the app as one message;
later `receive()` calls (disconnect detection) go to the server untouched.
File uploads (`POST /v1/files`, up to `max_upload_bytes`) are too big to hold
in memory: they pass through as they arrive, counted, and the route streams
them to storage; past the limit, the next `receive()` raises a 413.

A body refused before it is all read is still read to its end and dropped
(up to `DRAIN_BYTES`) before the answer: closing a connection the client is
still writing to resets it, and a client that reads only after writing
(async httpx, so AsyncOpenAI and the batch worker) then sees a connection
error instead of the 413. Bodies past `DRAIN_BYTES` are cut off unread.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError
from api.route_path import posted_to

# Upload routes: their bodies are streamed, never buffered here.
STREAMED_PATHS = frozenset({"/v1/files"})

# The multipart envelope around an uploaded file (boundaries, part headers, the `purpose`
# field); the route holds the file itself to `max_upload_bytes` exactly.
UPLOAD_ENVELOPE_BYTES = 64 << 10

# How much of a refused body is read and dropped so its client gets the answer; beyond
# this, the connection is closed without reading on.
DRAIN_BYTES = 64 << 20


class BodyTooLarge(ApiError):
    """Raised from a streamed upload's `receive()`; the error handlers answer the 413, in
    the words the upload route uses for a file over the limit, however it was found."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message, param="file", code="file_too_large")


class BodyLimitMiddleware:
    """413 for bodies over the limit, checked on the header and on the bytes themselves."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_upload_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_upload_bytes = max_upload_bytes if max_upload_bytes is not None else max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if posted_to(scope, STREAMED_PATHS):
            await self._pass_through(scope, receive, send)
            return
        too_large = f"the request body is larger than {self.max_bytes} bytes"
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            if declared <= DRAIN_BYTES:
                await drain(receive, 0)
            await _send_too_large(send, too_large)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body; nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await drain(receive, size)
                await _send_too_large(send, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replaying(b"".join(chunks), receive), send)

    async def _pass_through(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand the body on chunk by chunk, counting; over the limit, `receive()` raises."""
        limit = self.max_upload_bytes + UPLOAD_ENVELOPE_BYTES
        message = f"the upload is larger than the limit of {self.max_upload_bytes} bytes"
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            if declared <= DRAIN_BYTES:
                await drain(receive, 0)
            await _send_error(send, BodyTooLarge(message))
            return
        size = 0
        started = False
        body_done = False

        async def counted() -> Message:
            nonlocal size, body_done
            received = await receive()
            if received["type"] == "http.request":
                size += len(received.get("body", b""))
                body_done = not received.get("more_body", False)
                if size > limit:
                    raise BodyTooLarge(message)
            return received

        async def watch(reply: Message) -> None:
            nonlocal started
            if reply["type"] == "http.response.start":
                started = True
                if not body_done:
                    # Answered early (401, 400, 413): drop the rest of the body, then close.
                    await drain(receive, size)
                    headers = [h for h in reply.get("headers", []) if h[0].lower() != b"connection"]
                    reply = {**reply, "headers": [*headers, (b"connection", b"close")]}
            await send(reply)

        try:
            await self.app(scope, counted, watch)
        except BodyTooLarge:
            # Normally answered by the error handlers; this is for an app that let it escape.
            if started:
                raise
            await _send_error(send, BodyTooLarge(message))


async def drain(receive: Receive, already: int) -> None:
    """Read and drop the rest of a refused body, `already` bytes of it being read, until it
    ends, the client leaves, or `DRAIN_BYTES` in all have come."""
    size = already
    while size <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        size += len(message.get("body", b""))


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app `body`, already read, as one message; later calls
    (disconnect detection) go to the server's own `receive`."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_too_large(send: Send, message: str) -> None:
    await _send_error(send, ApiError(413, message, code="request_too_large"))


async def _send_error(send: Send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
