"""Server-sent events in OpenAI's framing: `data: {chunk}` lines, then `data: [DONE]`.

The Responses API frames differently (`event:` lines, an `error` event, no
`[DONE]`); a `Framing` says how.

Once the 200 and the first bytes are out, an error can only travel inside the
stream: `data: {"error": {...}}` followed by `data: [DONE]`, which the OpenAI
SDK raises as an APIError. sse-starlette does the framing, keep-alive pings
and client-disconnect detection (it cancels our generator, whose cleanup then
tells the workers to stop).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol, TypeVar

from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from api.errors import ApiError, redis_unavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

DONE = "[DONE]"
# On SIGTERM, sse-starlette would cut streams after its grace period; the API's own drain
# (api/shutdown_drain.py) ends them with an error event first, and uvicorn's limit bounds
# the whole shutdown, so this grace only has to outlast both.
SHUTDOWN_GRACE_SECONDS = 24 * 3600.0


class ChatFraming:
    """Chat and completions: `data: {chunk}`, errors as `data: {"error": ...}`, `[DONE]` last."""

    def frame(self, chunk: Any) -> ServerSentEvent:
        return ServerSentEvent(data=chunk.model_dump_json(), sep="\n")

    def error(self, body: dict[str, Any]) -> ServerSentEvent:
        return ServerSentEvent(data=json.dumps(body), sep="\n")

    def done(self) -> ServerSentEvent | None:
        return ServerSentEvent(data=DONE, sep="\n")


class Framing(Protocol):
    def frame(self, chunk: Any) -> ServerSentEvent: ...

    def error(self, body: dict[str, Any]) -> ServerSentEvent: ...

    def done(self) -> ServerSentEvent | None: ...


def sse_response(
    chunks: AsyncIterator[Any],
    on_close: Callable[[], None],
    framing: Framing | None = None,
) -> EventSourceResponse:
    """`on_close` runs however the stream ends, even if the client left before the first chunk."""

    async def cleanup() -> None:
        on_close()

    return EventSourceResponse(
        _frames(chunks, framing or ChatFraming()),
        background=BackgroundTask(cleanup),
        sep="\n",
        ping=15,
        shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
    )


async def _frames(chunks: AsyncIterator[Any], framing: Framing) -> AsyncIterator[ServerSentEvent]:
    try:
        async for chunk in chunks:
            yield framing.frame(chunk)
    except ApiError as exc:
        yield framing.error(exc.body())
    except RedisError as exc:
        yield framing.error(redis_unavailable(exc).body())
    except Exception:
        logger.exception("stream failed")
        yield framing.error(ApiError(500, "internal server error", code="internal_error").body())
    done = framing.done()
    if done is not None:
        yield done


async def merge(iterators: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Interleave several iterators as items arrive, tagged with the iterator's index.

    The first error from any iterator propagates; the rest are cancelled.
    """
    if len(iterators) == 1:
        async for item in iterators[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, T] | tuple[int, BaseException] | None] = asyncio.Queue()

    async def pump(index: int, iterator: AsyncIterator[T]) -> None:
        try:
            async for item in iterator:
                await queue.put((index, item))
        except Exception as exc:
            await queue.put((index, exc))
            return
        await queue.put(None)

    tasks = [asyncio.create_task(pump(i, it)) for i, it in enumerate(iterators)]
    try:
        remaining = len(tasks)
        while remaining:
            entry = await queue.get()
            if entry is None:
                remaining -= 1
                continue
            index, item = entry
            if isinstance(item, BaseException):
                raise item
            yield index, item  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=1.0)
