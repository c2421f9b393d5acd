"""A batch line answered once is never generated or billed again.

A batch worker records each line's answer in SQL after the API sent it. A
worker killed in between (SIGKILL, OOM, a lost node) leaves the line
unrecorded, and the worker that resumes the batch sends it again: the API
would generate it a second time and bill it twice (QA: 44 billed requests for
a 40-line batch). So the API keeps each 200 answer to a batch line in Redis,
before the body leaves, keyed by batch and line number; the same line sent
again gets that answer back (`x-conveyor-replayed: true`), with no generation
and no request-log row. The batch worker deletes the key once the line is
recorded, so only answers that a dead worker never recorded wait out the TTL.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api.auth import Principal
from conveyor.bus import BusNames

logger = logging.getLogger(__name__)

# A batch's completion window (OpenAI's one choice is 24h): a line left unrecorded longer
# belongs to a batch that has expired.
ANSWER_TTL_SECONDS = 24 * 3600
REPLAYED_HEADER = "x-conveyor-replayed"


class StoredLineAnswer(Exception):
    """Raised while authenticating a batch line the API already answered: its answer."""

    def __init__(self, body: bytes) -> None:
        super().__init__("this batch line was answered before")
        self.body = body


def answer_key(names: BusNames, principal: Principal) -> str | None:
    """Where a batch line's answer is kept; None for any other request."""
    if principal.batch_id is None or principal.batch_line is None:
        return None
    return names.batch_line_answer(principal.batch_id, principal.batch_line)


async def raise_if_answered(redis: Redis, names: BusNames, principal: Principal) -> None:
    """StoredLineAnswer when this batch line was answered before; a Redis that cannot be
    asked means running the line (at worst billed twice, as before)."""
    key = answer_key(names, principal)
    if key is None:
        return
    try:
        body = await redis.get(key)
    except RedisError as exc:
        logger.warning("could not look up the stored answer of %s: %s", key, exc)
        return
    if body is not None:
        raise StoredLineAnswer(body.encode() if isinstance(body, str) else body)


async def keep_answer(redis: Redis, key: str, body: bytes) -> None:
    """Keep a 200 answer before it is sent (a failure only loses the protection)."""
    try:
        await redis.set(key, body, ex=ANSWER_TTL_SECONDS)
    except RedisError as exc:
        logger.warning("could not keep the answer of %s: %s", key, exc)


async def on_stored_answer(_: Request, exc: Exception) -> Response:
    """The stored answer, as it was sent the first time."""
    assert isinstance(exc, StoredLineAnswer)
    return Response(exc.body, media_type="application/json", headers={REPLAYED_HEADER: "true"})
